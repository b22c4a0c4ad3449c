import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

import pytest

from gennaker.factory.notify import GennakerNotifier, dag_callbacks, task_callbacks
from gennaker.spec.models import Notification


@pytest.fixture
def receiver():
    received: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()


def test_webhook_notification_posts_what_happened(receiver):
    url, received = receiver
    notifier = GennakerNotifier(kind="webhook", to=[], url=url, event="failed", message="deploy went wrong")
    ti = SimpleNamespace(dag_id="hello.deploy", run_id="manual__1", task_id="deploy")
    notifier.notify({"ti": ti, "dag_run": SimpleNamespace(dag_id="hello.deploy", run_id="manual__1")})
    assert received == [
        {
            "pipeline": "hello.deploy",
            "runId": "manual__1",
            "stage": "deploy",
            "event": "failed",
            "message": "deploy went wrong",
        }
    ]


def test_unreachable_webhook_is_logged_not_raised(caplog):
    notifier = GennakerNotifier(kind="webhook", to=[], url="http://127.0.0.1:9/nothing", event="complete", message=None)
    notifier.notify({"ti": SimpleNamespace(dag_id="a.b", run_id="r", task_id="t")})
    assert "could not send webhook notification" in caplog.text


def test_callbacks_by_event():
    notes = [
        Notification(type="webhook", url="http://127.0.0.1/x", when=["starting", "failed"]),
        Notification(type="email", to=["team@example.com"], when=["complete"]),
    ]
    stage = task_callbacks(notes)
    assert sorted(stage) == ["on_execute_callback", "on_failure_callback", "on_success_callback"]
    pipeline = dag_callbacks(notes)
    # Airflow has no DAG-level start callback: a pipeline's "starting" is not a DAG callback.
    assert sorted(pipeline) == ["on_failure_callback", "on_success_callback"]
    assert pipeline["on_success_callback"][0].kind == "email"


def test_pipeline_start_is_announced_by_first_stages_only():
    from gennaker.factory.notify import stage_callbacks

    pipeline = [Notification(type="webhook", url="http://127.0.0.1/x", when=["starting"])]
    first = stage_callbacks([], pipeline, first=True)
    later = stage_callbacks([], pipeline, first=False)
    assert [n.event for n in first["on_execute_callback"]] == ["starting"]
    assert later == {}


def test_email_escapes_what_it_interpolates(monkeypatch):
    sent = []

    class Recorder:
        def __init__(self, *, to, subject, html_content):
            sent.append({"to": to, "subject": subject, "html": html_content})

        def notify(self, context):
            pass

    monkeypatch.setattr("airflow.providers.smtp.notifications.smtp.SmtpNotifier", Recorder)
    message = "version <script>alert(1)</script> & <b>more</b>\nsecond line"
    notifier = GennakerNotifier(kind="email", to=["team@example.com"], url=None, event="failed", message=message)
    run_id = "manual__1\r\nBcc: attacker@example.com\u2028X-Evil: 1"
    ti = SimpleNamespace(dag_id="hello.deploy", run_id=run_id, task_id="deploy<img src=x>")
    notifier.notify({"ti": ti})
    (mail,) = sent
    # One header line: a newline in it would have started a Bcc of the trigger's choosing.
    assert mail["subject"] == "[gennaker] hello.deploy: deploy<img src=x> failed"
    assert not any(ch in mail["subject"] for ch in "\r\n\u2028")
    assert "<script>" not in mail["html"] and "<img" not in mail["html"] and "<b>" not in mail["html"]
    assert "version &lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;b&gt;more&lt;/b&gt;<br>second line" in mail["html"]
    assert "run manual__1" in mail["html"]
