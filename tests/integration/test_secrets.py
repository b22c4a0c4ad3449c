"""Secrets of a run never show: task logs, XCom, rendered fields, the cloud's records and the canary report.

The run bakes a presigned-URL-shaped artifact given as a trigger parameter
(``http://user:password@127.0.0.1:PORT/hello_service-....whl?X-Amz-Credential=...&X-Amz-Signature=...``,
allowed by the pipeline's ``artifacts.allow``), served by a small HTTP server of this test that
checks the credentials; two deploys of no instances make the baseline and canary server groups;
a canary judges them with a Prometheus metric source reached through an Airflow connection with
a login and password, served by a fake Prometheus of this test that checks them too. Then the
test looks everywhere a user or an operator could read and finds none of the secrets.

The pipeline is written into the session's DAG folder at run time: its allow rule names the
artifact server's port, which only this test knows.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from localcloud import build_hello

from .conftest import ARTIFACTS, Airflow

pytestmark = pytest.mark.integration

DAG_ID = "it.secrets"
CONN_ID = "it_secret_prometheus"
VERSION = "7.7.7"

SPEC = """\
# Written by tests/integration/test_secrets.py while it runs (the allow rule names its server's port).
application: it
name: secrets
parameters: [{{name: artifact, required: true}}]
artifacts: {{allow: ["http://127.0.0.1:{port}/"]}}
stages:
  - {{id: bake, type: bake, package: hello-service, artifact: "{{{{ params.artifact }}}}"}}
  - {{id: sa, type: deploy, cluster: {{stack: sa}}, capacity: {{min: 0, max: 0, desired: 0}}, timeout: 2m}}
  - id: sb
    type: deploy
    dependsOn: [bake]
    cluster: {{stack: sb}}
    capacity: {{min: 0, max: 0, desired: 0}}
    timeout: 2m
  - id: canary
    type: canary
    dependsOn: [sa, sb]
    baseline: "{{{{ stages.sa.serverGroup }}}}"
    canary: "{{{{ stages.sb.serverGroup }}}}"
    lifetime: 3s
    interval: 3s
    metricSource: {{type: prometheus, connection: {conn}, step: 1s}}
    metrics: [{{name: up, query: 'up{{server_group="${{scope}}"}}'}}]
    timeout: 2m
"""


class Quiet:
    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def artifact_server(tmp_path: Path) -> Iterator[tuple[int, str, list[bool], list[str]]]:
    """Serves the wheel only with the right Basic credentials and a signature: port, URL path, auth seen, secrets."""
    wheel = build_hello(VERSION, tmp_path)
    user, password = "ci-bot", "pw-" + secrets.token_hex(8)
    credential, signature = "AKIA" + secrets.token_hex(8).upper(), secrets.token_hex(32)
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    seen: list[bool] = []

    class Handler(Quiet, SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            ok = self.headers.get("Authorization") == expected and query.get("X-Amz-Signature") == [signature]
            seen.append(ok)
            if not ok:
                self.send_error(403)
                return
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(wheel.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    path = f"/{wheel.name}?X-Amz-Credential={credential}&X-Amz-Signature={signature}&X-Amz-Expires=300"
    try:
        yield int(port), f"http://{user}:{password}@127.0.0.1:{port}{path}", seen, [password, credential, signature]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def prometheus(alive: Airflow) -> Iterator[tuple[list[bool], str]]:
    """A Prometheus that answers only its connection's login and password (an Airflow connection): auth seen."""
    login, password = "canary-reader", "prom-" + secrets.token_hex(8)
    expected = "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()
    seen: list[bool] = []

    class Handler(Quiet, BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.headers.get("Authorization") == expected
            seen.append(ok)
            params = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
            if not ok:
                body, status = {"status": "error", "errorType": "unauthorized", "error": "who are you"}, 401
            else:
                start, end, step = float(params["start"]), float(params["end"]), float(params["step"])
                values = [[start + i * step, "1"] for i in range(int((end - start) / step) + 1)]
                result = [{"metric": {}, "values": values}]
                body, status = {"status": "success", "data": {"resultType": "matrix", "result": result}}, 200
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    conn = {
        "connection_id": CONN_ID,
        "conn_type": "http",
        "host": "127.0.0.1",
        "port": server.server_address[1],
        "login": login,
        "password": password,
    }
    r = alive.request("POST", "/connections", json=conn)
    assert r.status_code == 201, r.text
    try:
        yield seen, password
    finally:
        alive.request("DELETE", f"/connections/{CONN_ID}")
        server.shutdown()
        server.server_close()


def everything_readable(alive: Airflow, run_id: str) -> dict[str, str]:
    """What a user (REST API, report page) or an operator (log files, the cloud's state) can read of the run."""
    out: dict[str, str] = {}
    for task_id, ti in alive.task_instances(DAG_ID, run_id).items():
        for attempt in range(1, max(ti.try_number, 1) + 1):
            out[f"log {task_id} #{attempt}"] = "\n".join(alive.task_log(DAG_ID, run_id, task_id, attempt))
        detail = alive.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}")
        out[f"rendered fields {task_id}"] = json.dumps(detail.get("rendered_fields"))
    entries = alive.get(f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/~/xcomEntries", params={"limit": 100})
    for entry in entries["xcom_entries"]:
        value = alive.xcom(DAG_ID, run_id, entry["task_id"], entry["key"])
        out[f"xcom {entry['task_id']} {entry['key']}"] = json.dumps(value)
    for path in (ARTIFACTS / "tasks").rglob("*"):
        if path.is_file() and f"dag_id={DAG_ID}" in str(path):
            out[f"file {path}"] = path.read_text(errors="replace")
    for path in alive.gennaker_home.rglob("*"):  # state.db (operations, audit, events), manifests, process logs
        if path.is_file() and "venv" not in path.parts and path.stat().st_size < 50_000_000:
            out[f"file {path}"] = path.read_bytes().decode("utf-8", "replace")
    report = alive.xcom(DAG_ID, run_id, "canary")["report"]
    page = alive.http.get(report, headers={"Authorization": f"Bearer {alive.token('viewer')}"}, timeout=30)
    assert page.status_code == 200, page.text
    out["report page"] = page.text
    return out


def test_no_secret_of_a_run_shows_anywhere(
    alive: Airflow, artifact_server: tuple[int, str, list[bool], list[str]], prometheus: tuple[list[bool], str]
) -> None:
    port, artifact, artifact_auth, artifact_secrets = artifact_server
    prometheus_auth, prometheus_password = prometheus
    spec = alive.pipelines / "secrets.yaml"
    spec.write_text(SPEC.format(port=port, conn=CONN_ID))
    try:
        alive.unpause(DAG_ID)
        run_id = alive.trigger(DAG_ID, {"artifact": artifact})
        state = alive.wait_for_run(DAG_ID, run_id, timeout=240)
        readable = everything_readable(alive, run_id)
    finally:
        spec.unlink()
    assert state == "success", "\n".join(f"--- {k}\n{v[-2000:]}" for k, v in readable.items() if k.startswith("log"))
    # The secrets were really used: the servers got them, the bake and the canary worked with them.
    assert artifact_auth and all(artifact_auth) and prometheus_auth and all(prometheus_auth)
    bake = alive.xcom(DAG_ID, run_id, "bake")
    assert bake["version"] == VERSION
    assert bake["artifact"].startswith(f"http://***@127.0.0.1:{port}/hello_service-{VERSION}-py3-none-any.whl?")
    assert "X-Amz-Signature=***" in bake["artifact"] and "X-Amz-Credential=***" in bake["artifact"]
    assert "metrics from Prometheus at http://127.0.0.1:" in readable["report page"]
    # What was read is what a person reads: the log says where the artifact came from, redacted.
    assert f"from http://***@127.0.0.1:{port}/hello_service-{VERSION}" in readable["log bake #1"]
    assert artifact_secrets[0] not in readable["rendered fields bake"]  # Airflow's masker knows the URL's secrets
    assert "hello_service" in readable["rendered fields bake"]
    leaks = [
        f"{secret[:6]}... in {where}"
        for secret in [*artifact_secrets, prometheus_password]
        for where, text in readable.items()
        if secret in text
    ]
    assert not leaks, leaks
    assert any(k.startswith("file ") and k.endswith("state.db") for k in readable)  # the cloud's records were read
