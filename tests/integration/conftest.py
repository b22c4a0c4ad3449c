"""A real Airflow for the integration tests: scheduler, DAG processor, triggerer and API server.

One Airflow serves the whole session. Its DAG folder is a temporary copy of
``dags/gennaker_pipelines.py`` with ``tests/integration/pipelines/`` as its
``pipelines/`` folder, so every test pipeline is parsed at once. The tests talk
to Airflow only through its REST API, as a user (or a CI job) would.

Logs of the Airflow processes, and the task logs, are written to
``tests/artifacts/integration/`` so a failure can be read after the run.

Database: SQLite with the LocalExecutor. Airflow 3.3 accepts that pair (the
SequentialExecutor is gone; ``airflow standalone`` runs LocalExecutor on SQLite),
and SQLite's single writer is enough for a handful of runs at a time.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from localcloud import Cloud, bake_hello, bounded_to, provider_env

from gennaker.cloud.local.provider import LocalProvider

REPO = Path(__file__).resolve().parents[2]
SPECS = Path(__file__).resolve().parent / "pipelines"
ARTIFACTS = REPO / "tests" / "artifacts" / "integration"
VENV_BIN = Path(sys.executable).parent
AIRFLOW = str(VENV_BIN / "airflow")

USERS = {"admin": "admin", "viewer": "viewer"}
FINISHED_RUN = {"success", "failed"}

# Airflow's [workers] min_heartbeat_interval, left at its default: a task's supervisor may take this long to
# notice that the task process exited, and only then reports to the scheduler. A deferred or awaiting-input
# task resumed before that report is read gets failed by the scheduler ("state mismatch", a race in Airflow
# 3.3; see Airflow.state_mismatches). Users run with the default, so the tests do too.
EXIT_REPORT_LAG = 5.0
STARTUP_TIMEOUT = 120.0  # API server up, first parse of the DAG file
RUN_TIMEOUT = 120.0  # one pipeline run
POLL = 1.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def timestamp(moment: datetime | None) -> float:
    """A task's start or end date (which must be set) as ``time.time()`` seconds, to compare with samples."""
    assert moment is not None
    return moment.timestamp()


def wait_until(what: str, check: Callable[[], Any], timeout: float, interval: float = POLL) -> Any:
    """Call ``check`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
        except requests.RequestException as exc:  # the API server restarting a worker, say
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


@dataclass
class _Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class TaskInstance:
    task_id: str
    state: str | None
    start: datetime | None
    end: datetime | None
    try_number: int


@dataclass
class Airflow:
    """A running Airflow and the REST calls the tests make."""

    url: str
    root: Path  # the folder above dags/, like a repository checkout
    dags_folder: Path
    env: dict[str, str]
    gennaker_home: Path  # GENNAKER_HOME of the Airflow processes (the local provider's state)
    processes: list[_Process] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)
    http: requests.Session = field(default_factory=requests.Session)

    @property
    def pipelines(self) -> Path:
        return self.dags_folder / "pipelines"

    # ------------------------------------------------------------------ plumbing

    def token(self, user: str = "admin") -> str:
        """A JWT from the simple auth manager (POST /auth/token)."""
        if user not in self.tokens:
            r = self.http.post(f"{self.url}/auth/token", json={"username": user, "password": USERS[user]}, timeout=30)
            assert r.status_code == 201, f"login as {user}: {r.status_code} {r.text}"
            self.tokens[user] = r.json()["access_token"]
        return self.tokens[user]

    def request(self, method: str, path: str, *, user: str = "admin", **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token(user)}", **kwargs.pop("headers", {})}
        return self.http.request(method, f"{self.url}/api/v2{path}", headers=headers, timeout=30, **kwargs)

    def get(self, path: str, **kwargs: Any) -> Any:
        r = self.request("GET", path, **kwargs)
        assert r.status_code == 200, f"GET {path}: {r.status_code} {r.text}"
        return r.json()

    # ------------------------------------------------------------------ DAGs

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        r = self.request("GET", f"/dags/{dag_id}")
        if r.status_code == 404:
            return None
        assert r.status_code == 200, f"GET dag {dag_id}: {r.status_code} {r.text}"
        return dict(r.json())

    def wait_for_dag(self, dag_id: str, timeout: float = STARTUP_TIMEOUT) -> dict[str, Any]:
        """The DAG once the DAG processor has parsed it and the API serves it."""
        return dict(wait_until(f"DAG {dag_id} to be parsed", lambda: self.dag(dag_id), timeout))

    def unpause(self, dag_id: str) -> None:
        self.wait_for_dag(dag_id)
        r = self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        assert r.status_code == 200, f"unpause {dag_id}: {r.status_code} {r.text}"
        assert r.json()["is_paused"] is False

    def import_errors(self) -> list[dict[str, Any]]:
        return list(self.get("/importErrors", params={"limit": 100})["import_errors"])

    # ------------------------------------------------------------------ runs

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        """Start a run now (no logical date, like the UI's trigger button); its run_id."""
        r = self.request("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf or {}})
        assert r.status_code == 200, f"trigger {dag_id}: {r.status_code} {r.text}"
        return str(r.json()["dag_run_id"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.get(f"/dags/{dag_id}/dagRuns/{run_id}"))

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.get(f"/dags/{dag_id}/dagRuns", params={"order_by": "run_after"})["dag_runs"])

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = RUN_TIMEOUT) -> str:
        """The final state of a run (success or failed), decided by the pipeline and not by an executor race."""

        def finished() -> str | None:
            state = self.run(dag_id, run_id)["state"]
            return str(state) if state in FINISHED_RUN else None

        state = str(wait_until(f"run {run_id} of {dag_id} to finish", finished, timeout))
        mismatches = self.state_mismatches(dag_id, run_id)
        assert not mismatches, f"Airflow's scheduler, not the pipeline, failed task(s) of {run_id}: {mismatches}"
        return state

    def state_mismatches(self, dag_id: str, run_id: str) -> list[str]:
        """Tasks the scheduler failed because the executor's report disagreed with the task's state.

        Airflow 3.3 does this when a deferred (or awaiting-input) task resumes before the scheduler has
        read the executor's report of the run that deferred it: a race, not a pipeline outcome.
        """
        logs = self.get("/eventLogs", params={"dag_id": dag_id, "run_id": run_id, "event": "state mismatch"})
        return [f"{e['task_id']}: {e['extra']}" for e in logs["event_logs"]]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        """A task's XCom value (its output, by default), or None if it has none."""
        r = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}")
        if r.status_code == 404:
            return None
        assert r.status_code == 200, f"xcom {key} of {task_id}: {r.status_code} {r.text}"
        return r.json()["value"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> list[str]:
        """A task's log as the UI shows it: one entry per line (structured entries as JSON, error details too)."""
        data = self.get(
            f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"full_content": "true"},
            headers={"Accept": "application/json"},
        )
        return [json.dumps(m) if isinstance(m, dict) else str(m) for m in data["content"]]

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, TaskInstance]:
        data = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
        return {
            t["task_id"]: TaskInstance(
                t["task_id"], t["state"], parse_time(t["start_date"]), parse_time(t["end_date"]), t["try_number"]
            )
            for t in data["task_instances"]
        }

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        return {t: ti.state for t, ti in self.task_instances(dag_id, run_id).items()}

    def wait_for_task_state(
        self, dag_id: str, run_id: str, task_id: str, states: set[str], timeout: float = RUN_TIMEOUT
    ) -> str:
        def reached() -> str | None:
            state = self.task_states(dag_id, run_id).get(task_id)
            return state if state in states else None

        return str(wait_until(f"{dag_id} {run_id} {task_id} in {sorted(states)}", reached, timeout))

    # ------------------------------------------------------------------ human in the loop

    def hitl_path(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
        return f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/hitlDetails"

    def hitl_detail(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any] | None:
        r = self.request("GET", self.hitl_path(dag_id, run_id, task_id))
        return dict(r.json()) if r.status_code == 200 else None

    def answer(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        chosen: list[str],
        *,
        user: str = "admin",
        params_input: dict[str, Any] | None = None,
    ) -> requests.Response:
        """Respond to a human-in-the-loop task (PATCH .../hitlDetails), as ``user``."""
        body = {"chosen_options": chosen, "params_input": params_input or {}}
        return self.request("PATCH", self.hitl_path(dag_id, run_id, task_id), user=user, json=body)


# ---------------------------------------------------------------------- the Airflow processes


# The traffic-guarded account of the server-group tests: an Airflow connection of type gennaker_local.
GUARDED_ACCOUNT = "guarded"
GUARDED_CLUSTER = "hello-guarded"


def _airflow_env(home: Path, dags: Path, port: int, logs: Path, gennaker_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "AIRFLOW__", "GENNAKER_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",
            # As scripts/airflow-env.sh, with this session's folders and port.
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__AUTH_MANAGER": (
                "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
            ),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,viewer:viewer",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            # Every process must sign and check the same tokens (the tasks' execution API ones too).
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(64),
            "AIRFLOW__CORE__FERNET_KEY": "",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(logs / "tasks"),
            "AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY": str(logs / "dag-processor-files"),
            # Re-parse the DAG file (and so the whole pipelines folder) every few seconds.
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "5",
            # Re-listing the bundle only finds new *.py files (the specs are read by the DAG file), and every
            # re-listing deletes the import errors of files that are not DAG files: our specs' errors would
            # vanish until the next parse. So list once at start-up, not again during the session.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "3600",
            "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__EXPOSE_CONFIG": "False",
            "GENNAKER_TEMPLATE_PATH": str(REPO / "templates"),
            # The local provider's state and processes: the tests set up server groups in the same home.
            "GENNAKER_HOME": str(gennaker_home),
            f"AIRFLOW_CONN_{GUARDED_ACCOUNT.upper()}": json.dumps(
                {"conn_type": "gennaker_local", "extra": {"traffic_guards": [GUARDED_CLUSTER]}}
            ),
        }
    )
    return env


def _start(name: str, args: list[str], env: dict[str, str], cwd: Path, logs: Path | None = None) -> _Process:
    log = (logs or ARTIFACTS) / f"{name}.log"  # logs: for tests/benchmarks/pipeline.py, which keeps its own
    with log.open("wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [AIRFLOW, *args],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: we kill the whole group at the end
        )
    return _Process(name, proc, log)


def _descendants_of_home(home: Path) -> list[int]:
    """Processes still running with this session's AIRFLOW_HOME (task runners that left the group)."""
    marker = f"AIRFLOW_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _stop(processes: list[_Process], home: Path) -> None:
    for p in processes:
        if p.proc.poll() is None:
            try:
                os.killpg(p.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 20
    for p in processes:
        try:
            p.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        try:  # whatever is left of the group (a uvicorn worker, a task runner)
            os.killpg(p.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.proc.wait(timeout=10)
    for pid in _descendants_of_home(home):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _check_alive(processes: list[_Process]) -> None:
    for p in processes:
        if p.proc.poll() is not None:
            tail = p.log.read_text(errors="replace")[-3000:]
            pytest.fail(f"airflow {p.name} exited with {p.proc.returncode}; end of {p.log}:\n{tail}")


@pytest.fixture(scope="session")
def airflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Airflow]:
    """One real Airflow for the session, with every pipeline of tests/integration/pipelines/ loaded."""
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)

    root = tmp_path_factory.mktemp("airflow")
    home = root / "home"
    dags = root / "dags"
    home.mkdir()
    dags.mkdir()
    shutil.copy(REPO / "dags" / "gennaker_pipelines.py", dags / "gennaker_pipelines.py")
    shutil.copytree(SPECS, dags / "pipelines")
    (home / "passwords.json").write_text(json.dumps(USERS))

    port = _free_port()
    env = _airflow_env(home, dags, port, ARTIFACTS, root / "gennaker")
    started = time.monotonic()
    with (ARTIFACTS / "db-migrate.log").open("wb") as out:
        subprocess.run([AIRFLOW, "db", "migrate"], env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT, check=True)
        # gennaker's tables (cluster locks, audit trail) in that same database: env has no GENNAKER_STATE_DB,
        # so the default (Airflow's metadata database) is the one the tests exercise.
        subprocess.run(
            [str(VENV_BIN / "gennaker"), "db", "migrate"],
            env=env,
            cwd=root,
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
        )

    processes: list[_Process] = []
    try:
        for name, args in (
            ("api-server", ["api-server", "--port", str(port), "--host", "127.0.0.1"]),
            ("scheduler", ["scheduler"]),
            ("dag-processor", ["dag-processor"]),
            ("triggerer", ["triggerer"]),
        ):
            processes.append(_start(name, args, env, root))

        client = Airflow(
            url=f"http://127.0.0.1:{port}",
            root=root,
            dags_folder=dags,
            env=env,
            gennaker_home=root / "gennaker",
            processes=processes,
        )

        def api_up() -> bool:
            _check_alive(processes)
            r = client.http.get(f"{client.url}/api/v2/monitor/health", timeout=5)
            return r.status_code == 200

        wait_until("the API server to answer", api_up, STARTUP_TIMEOUT)
        client.token("admin")
        (ARTIFACTS / "session.txt").write_text(
            f"AIRFLOW_HOME={home}\ndags folder={dags}\nAPI={client.url}\n"
            f"startup took {time.monotonic() - started:.1f}s\n"
        )
        yield client
    finally:
        _stop(processes, home)


@pytest.fixture
def alive(airflow: Airflow) -> Airflow:
    """The session's Airflow, checked to still run all of its processes."""
    _check_alive(airflow.processes)
    return airflow


# ---------------------------------------------------------------------- the cloud the test process drives

HELLO_RELEASES: dict[str, str | tuple[str, tuple[str, ...]]] = {"v1": "1.0.0", "v2": "2.0.0"}
"""The demo service releases of the ``images`` fixture, unless a test module names its own ``RELEASES``
(``name -> version``, or ``name -> (version, build options)``)."""


@pytest.fixture(autouse=True)
def bounded(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test that runs longer than its module's ``TEST_SECONDS`` (teardown still cleans up); none: no bound."""
    seconds = getattr(request.module, "TEST_SECONDS", None)
    if seconds is None:
        yield
        return
    with bounded_to(seconds):
        yield


@pytest.fixture(scope="module")
def cloud_env(airflow: Airflow, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The test process's environment for the provider (the session's home; inherited by what it starts); the mark."""
    with provider_env(airflow.gennaker_home, tmp_path_factory.mktemp("bake-tools")) as mark:
        yield mark


@pytest.fixture(scope="module")
def images(
    request: pytest.FixtureRequest, airflow: Airflow, cloud_env: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The module's ``RELEASES`` of the demo service (else 1.0.0 and 2.0.0), baked in the session's home: ids."""
    releases = {
        name: (release, ()) if isinstance(release, str) else release
        for name, release in getattr(request.module, "RELEASES", HELLO_RELEASES).items()
    }
    provider = LocalProvider(home=airflow.gennaker_home)
    try:
        return bake_hello(provider, releases, lambda name: tmp_path_factory.mktemp(f"hello-{name}"))
    finally:
        provider.close()


@pytest.fixture
def cloud(airflow: Airflow, cloud_env: str) -> Iterator[Cloud]:
    """Local providers in the session's home; every process they start is stopped after the test (else it fails)."""
    lab = Cloud(airflow.gennaker_home, cloud_env)
    try:
        yield lab
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)  # the cleanup runs to its end
        problems = lab.close()
    assert not problems, "\n".join(problems)
