"""Baking local images, checked by running them: the demo service's wheel, a tarball, a jar.

The demo wheels are built once per session with ``scripts/build-hello.sh`` (a good
1.0.0 and a bad 1.1.0 with 200 ms latency and a 50% error rate). Each test bakes into
its own gennaker home; an image is started like the supervisor starts it (its start
command, cwd = the image directory, ``PORT``/``HOST``/``GENNAKER_*`` set) and checked
over real HTTP. Every process a test starts runs in its own session and is killed
(its whole process group) in ``finally``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from localcloud import build_hello, free_port

from gennaker.cloud.local.images import MANIFEST, TOOLS_ENV, bake, images_root, launch_spec, read_manifest
from gennaker.cloud.local.state import StateStore
from gennaker.cloud.model import BakeRequest, Image
from gennaker.errors import InvalidRequest, NotFound

REPO = Path(__file__).resolve().parents[3]
BUILD_HELLO = REPO / "scripts" / "build-hello.sh"
ACCOUNT, REGION = "local", "local"
PYTHON_BASE = f"python-{sys.version_info[0]}.{sys.version_info[1]}"
START_TIMEOUT = 30.0

# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo service, built by scripts/build-hello.sh: a good release and a bad one."""
    out = tmp_path_factory.mktemp("hello-dist")
    return {
        "good": build_hello("1.0.0", out),
        "bad": build_hello("1.1.0", out, "--latency-ms", "200", "--error-rate", "0.5"),
    }


@pytest.fixture(scope="session", autouse=True)
def shared_pip(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One unpacked pip for every home of the session (each bake's first pip run compiles it: seconds)."""
    previous = os.environ.get(TOOLS_ENV)
    os.environ[TOOLS_ENV] = str(tmp_path_factory.mktemp("bake-tools"))
    yield
    if previous is None:
        os.environ.pop(TOOLS_ENV, None)
    else:
        os.environ[TOOLS_ENV] = previous


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "gennaker"


@pytest.fixture
def store(home: Path) -> Iterator[StateStore]:
    state = StateStore(home / "local" / "state.db")
    yield state
    state.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, wheels: dict[str, Path]) -> Iterator[dict[str, Any]]:
    """One home with the good and the bad release baked, for the tests that only run them."""
    home = tmp_path_factory.mktemp("shared-home")
    state = StateStore(home / "local" / "state.db")
    images = {
        "good": bake(state, hello_request(wheels["good"], "1.0.0"), home=home),
        "bad": bake(state, hello_request(wheels["bad"], "1.1.0"), home=home),
    }
    yield {"home": home, "store": state, **images}
    state.close()


def hello_request(artifact: Path | str, version: str, **fields: Any) -> BakeRequest:
    return BakeRequest(
        package="hello-service",
        version=version,
        artifact=str(artifact),
        base=fields.pop("base", PYTHON_BASE),
        account=ACCOUNT,
        region=REGION,
        **fields,
    )


def image_dirs(home: Path) -> list[str]:
    """Everything in the images directory but the lock files and the unpacked pip (.tools)."""
    root = images_root(home)
    if not root.exists():
        return []
    return sorted(path.name for path in root.iterdir() if not path.name.startswith((".lock-", ".tools")))


@dataclass
class Reply:
    status: int
    body: str
    headers: Mapping[str, str]
    seconds: float

    def json(self) -> Any:
        return json.loads(self.body)


def get(url: str, timeout: float = 10.0) -> Reply:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read().decode()
            return Reply(response.status, body, dict(response.headers), time.perf_counter() - started)
    except urllib.error.HTTPError as error:
        body = error.read().decode()
        return Reply(error.code, body, dict(error.headers), time.perf_counter() - started)


@dataclass
class Running:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Signal the process's whole group, then SIGKILL it if it has not exited within 10 s."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # stragglers of the group, if any
    if process.poll() is None:
        process.wait(timeout=10)


@contextlib.contextmanager
def running(
    image: Image,
    logs: Path,
    *,
    environment: Mapping[str, str] | None = None,
    instance: str = "i-test",
    group: str = "hello-test-v000",
    wait_healthy: bool = True,
) -> Iterator[Running]:
    """Start one instance of ``image`` as the supervisor would, and kill its process group afterwards."""
    port = free_port()
    spec = launch_spec(image, port=port, instance_id=instance, server_group=group, environment=environment)
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{image.id}-{instance}-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            spec.argv,
            cwd=spec.cwd,
            env={**os.environ, **spec.env},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        instance_url = f"http://127.0.0.1:{port}"
        handle = Running(instance_url, process, log)
        if wait_healthy:
            wait_for(handle, spec.health_check_path, 200)
        yield handle
    finally:
        stop(process)


def wait_for(handle: Running, path: str, status: int, timeout: float = START_TIMEOUT) -> Reply:
    deadline = time.monotonic() + timeout
    last: Reply | str = "no answer"
    while time.monotonic() < deadline:
        if handle.process.poll() is not None:
            pytest.fail(f"the instance exited with {handle.process.returncode}:\n{handle.output()}")
        try:
            reply = get(handle.url + path, timeout=2)
        except OSError as error:
            last = str(error)
        else:
            if reply.status == status:
                return reply
            last = reply
        time.sleep(0.05)
    pytest.fail(f"{path} did not answer {status} within {timeout}s (last: {last}):\n{handle.output()}")


def metric_samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse Prometheus text with the reference parser: (sample name, labels) -> value."""
    parser = pytest.importorskip("prometheus_client.parser")
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def sample(samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def make_tarball(path: Path, files: Mapping[str, str | bytes], *, prefix: str = "./") -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else content
            info = tarfile.TarInfo(prefix + name)
            info.size, info.mode = len(data), 0o755
            archive.addfile(info, io.BytesIO(data))
    return path


def assert_nothing_baked(store: StateStore, home: Path) -> None:
    assert store.find_images() == []
    assert image_dirs(home) == [], "a failed bake left files behind"


TARBALL_APP = textwrap.dedent(
    """
    import os, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    GREETING = sys.argv[sys.argv.index("--greeting") + 1]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"ok" if self.path == "/health" else f"{GREETING} from {os.getcwd()}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer((os.environ["HOST"], int(os.environ["PORT"])), Handler).serve_forever()
    """
)


# --------------------------------------------------------------------------- the demo service, baked and run


def test_build_hello_is_reproducible_and_carries_its_behaviour(wheels: dict[str, Path], tmp_path: Path) -> None:
    again = build_hello("1.0.0", tmp_path)
    assert again.read_bytes() == wheels["good"].read_bytes()  # same version and behaviour: same bytes
    with zipfile.ZipFile(wheels["bad"]) as wheel:
        behaviour = json.loads(wheel.read("hello_service/behaviour.json"))
        assert behaviour == {"latency_ms": 200, "error_rate": 0.5, "startup_seconds": 0}
        assert "__version__ = '1.1.0'" in wheel.read("hello_service/_version.py").decode()
        metadata = wheel.read("hello_service-1.1.0.dist-info/METADATA").decode()
        assert "Requires-Dist" not in metadata  # stdlib only
    bad = subprocess.run(
        [str(BUILD_HELLO), "1.0.0", "--error-rate", "1.5", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode != 0
    assert "--error-rate must be between 0 and 1" in bad.stderr


def test_wheel_bakes_into_an_image_that_serves(wheels: dict[str, Path], store: StateStore, home: Path) -> None:
    image = bake(store, hello_request(wheels["good"], "1.0.0", application="hello"), home=home)

    directory = images_root(home) / image.id
    assert image.id.startswith("img-") and len(image.id) == 20
    assert image_dirs(home) == [image.id]
    assert store.get_image(image.id) == image
    assert (image.package, image.version, image.base, image.application) == (
        "hello-service",
        "1.0.0",
        PYTHON_BASE,
        "hello",
    )
    manifest = read_manifest(directory)
    assert image.manifest == {**manifest, "path": str(directory)}
    assert manifest["start_command"] == ["venv/bin/python", "-m", "hello_service"]
    assert manifest["health_check"] == {"path": "/health"}
    assert manifest["inputs_hash"] == image.inputs_hash
    assert manifest["artifact"]["sha256"] == hashlib.sha256(wheels["good"].read_bytes()).hexdigest()
    assert manifest["artifact"]["file"] == wheels["good"].name
    assert manifest["runtime"]["kind"] == "python"
    assert (directory / "venv" / "bin" / "python").exists()
    assert not any((directory / "venv").rglob("pip/__init__.py")), "pip must not be installed into the image"
    script = (directory / "venv" / "bin" / "hello-service").read_text()
    assert f"{directory}/venv/bin/python" in script.splitlines()[0 if len(str(directory)) < 100 else 1]
    assert ".tmp-" not in script, "scripts must point at the final directory, not the build one"
    [event] = [event for event in store.events(subject=image.id) if event.kind == "image.baked"]
    assert event.data["inputs_hash"] == image.inputs_hash

    with running(image, home / "logs", instance="i-0001", group="hello-prod-v003") as app:
        health = get(app.url + "/health")
        assert (health.status, health.body) == (200, "ok\n")
        version = get(app.url + "/version")
        assert version.status == 200
        assert version.json() == {"version": "1.0.0", "instance": "i-0001", "serverGroup": "hello-prod-v003"}
        page = get(app.url + "/")
        assert page.status == 200 and "text/html" in page.headers["Content-Type"]
        assert "hello 1.0.0" in page.body and "i-0001" in page.body and "hello-prod-v003" in page.body
        assert get(app.url + "/nope").status == 404

        before = metric_samples(get(app.url + "/metrics").body)
        for _ in range(5):
            assert get(app.url + "/version").status == 200
        after = metric_samples(get(app.url + "/metrics").body)

    assert (
        sample(after, "requests_total", path="/version", code="200")
        == sample(before, "requests_total", path="/version", code="200") + 5
    )
    assert sample(after, "requests_total", path="/", code="200") == 1
    assert sample(after, "requests_total", path="other", code="404") == 1
    assert sample(after, "requests_total", path="/health", code="200") >= 2
    assert sample(after, "errors_total", path="/version") == 0
    assert sample(after, "request_duration_seconds_count", path="/version") == 6
    assert sample(after, "request_duration_seconds_bucket", path="/version", le="+Inf") == 6
    assert sample(after, "build_info", version="1.0.0") == 1
    assert abs(sample(after, "process_start_time_seconds") - time.time()) < 120
    assert sample(after, "behaviour_error_rate") == 0


def test_bad_release_is_slower_and_fails_some_requests(shared: dict[str, Any]) -> None:
    logs = shared["home"] / "logs"
    with running(shared["good"], logs) as good:
        good_times = sorted(get(good.url + "/version").seconds for _ in range(10))
    with running(shared["bad"], logs) as bad:
        replies = [get(bad.url + "/version") for _ in range(30)]
        metrics = metric_samples(get(bad.url + "/metrics").body)

    statuses = [reply.status for reply in replies]
    failed = statuses.count(500)
    assert set(statuses) <= {200, 500}
    assert 0 < failed < 30, statuses  # 50%: all-or-nothing has odds of 2 in a billion
    assert min(reply.seconds for reply in replies) >= 0.19
    assert good_times[5] < 0.1 < 0.19 <= sorted(reply.seconds for reply in replies)[15]
    assert all("simulated failure" in reply.body for reply in replies if reply.status == 500)
    assert sample(metrics, "errors_total", path="/version") == failed
    assert sample(metrics, "requests_total", path="/version", code="500") == failed
    assert sample(metrics, "requests_total", path="/version", code="200") == 30 - failed
    assert sample(metrics, "build_info", version="1.1.0") == 1
    assert sample(metrics, "behaviour_latency_seconds") == pytest.approx(0.2)
    # The latency lands in the histogram: nothing of /version under 0.1 s.
    assert sample(metrics, "request_duration_seconds_bucket", path="/version", le="0.1") == 0


def test_environment_overrides_behaviour_and_health_waits_for_start_up(shared: dict[str, Any]) -> None:
    environment = {"HELLO_STARTUP_SECONDS": "1.5", "HELLO_ERROR_RATE": "1", "HELLO_LATENCY_MS": "0"}
    with running(shared["good"], shared["home"] / "logs", environment=environment, wait_healthy=False) as app:
        starting = wait_for(app, "/health", 503)
        assert starting.body == "starting\n"
        ready = wait_for(app, "/health", 200, timeout=10)
        assert ready.body == "ok\n"
        assert get(app.url + "/version").status == 500  # error rate 1 from the environment
        assert get(app.url + "/metrics").status == 200  # never failed on purpose


def test_sigterm_lets_in_flight_requests_finish(shared: dict[str, Any]) -> None:
    environment = {"HELLO_LATENCY_MS": "800", "HELLO_ERROR_RATE": "0"}
    with running(shared["bad"], shared["home"] / "logs", environment=environment) as app:
        replies: list[Reply | BaseException] = []

        def slow_request() -> None:
            try:
                replies.append(get(app.url + "/version"))
            except BaseException as error:  # recorded, asserted below
                replies.append(error)

        client = threading.Thread(target=slow_request)
        client.start()
        time.sleep(0.3)  # the request is in flight (800 ms of latency)
        os.killpg(app.process.pid, signal.SIGTERM)
        client.join(timeout=10)
        assert app.process.wait(timeout=10) == 0
        [reply] = replies
        assert isinstance(reply, Reply) and reply.status == 200, reply
        assert reply.json()["version"] == "1.1.0"
        with pytest.raises(OSError):
            get(app.url + "/health", timeout=2)  # no longer listening
        assert "draining" in app.output() and "stopped" in app.output()


# --------------------------------------------------------------------------- same inputs, rebakes, crashes


def test_same_inputs_give_the_same_image(
    wheels: dict[str, Path], store: StateStore, home: Path, tmp_path: Path
) -> None:
    first = bake(store, hello_request(wheels["good"], "1.0.0"), home=home)
    again = bake(StateStore(store.path), hello_request(wheels["good"], "1.0.0"), home=home)
    copy = tmp_path / "elsewhere" / wheels["good"].name
    copy.parent.mkdir()
    shutil.copyfile(wheels["good"], copy)
    sha = hashlib.sha256(copy.read_bytes()).hexdigest()
    moved = bake(store, hello_request(f"{copy}#sha256={sha}", "1.0.0", tags={"build": "42"}), home=home)

    assert again == first
    assert moved.id == first.id  # the artifact's bytes count, not its path (nor labels)
    assert image_dirs(home) == [first.id]
    assert [image.id for image in store.find_images(inputs_hash=first.inputs_hash)] == [first.id]

    option = bake(store, hello_request(wheels["good"], "1.0.0", tags={"bake.health_check_path": "/version"}), home=home)
    other_account = bake(store, hello_request(wheels["good"], "1.0.0").replace(account="other"), home=home)
    assert option.id != first.id and option.manifest["health_check"] == {"path": "/version"}
    assert other_account.id != first.id and other_account.inputs_hash == first.inputs_hash
    assert len(image_dirs(home)) == 3


def test_rebake_makes_a_new_image(wheels: dict[str, Path], store: StateStore, home: Path) -> None:
    first = bake(store, hello_request(wheels["good"], "1.0.0"), home=home)
    second = bake(store, hello_request(wheels["good"], "1.0.0", rebake=True), home=home)
    third = bake(store, hello_request(wheels["good"], "1.0.0", rebake=True), home=home)

    assert len({first.id, second.id, third.id}) == 3
    assert first.inputs_hash == second.inputs_hash == third.inputs_hash
    assert [first.manifest["rebake"], second.manifest["rebake"], third.manifest["rebake"]] == [0, 1, 2]
    assert third.name.endswith("-r2")
    assert image_dirs(home) == sorted([first.id, second.id, third.id])
    # A plain bake of the same inputs now returns the newest.
    assert bake(store, hello_request(wheels["good"], "1.0.0"), home=home).id == third.id
    assert len(store.find_images(inputs_hash=first.inputs_hash)) == 3


def test_lost_record_or_lost_directory_is_repaired(wheels: dict[str, Path], store: StateStore, home: Path) -> None:
    image = bake(store, hello_request(wheels["good"], "1.0.0"), home=home)
    store.delete_image(image.id)  # a crash between the rename and the store write
    adopted = bake(store, hello_request(wheels["good"], "1.0.0"), home=home)
    assert adopted.id == image.id and adopted.created == image.created
    assert store.get_image(image.id) == adopted

    shutil.rmtree(images_root(home) / image.id)  # the directory was removed under the record
    rebuilt = bake(store, hello_request(wheels["good"], "1.0.0"), home=home)
    assert rebuilt.id == image.id and rebuilt.created > image.created
    assert (images_root(home) / image.id / MANIFEST).is_file()
    assert image_dirs(home) == [image.id]


CONCURRENT_BAKE = """
import json, sys, time
from pathlib import Path
from gennaker.cloud.local.images import bake
from gennaker.cloud.model import BakeRequest
from gennaker.cloud.local.state import StateStore

home, go, request = Path(sys.argv[1]), Path(sys.argv[2]), BakeRequest.model_validate_json(sys.argv[3])
store = StateStore(home / "local" / "state.db")
while not go.exists():
    time.sleep(0.005)
print(json.dumps({"id": bake(store, request, home=home).id}))
"""


def test_concurrent_bakes_of_the_same_inputs_make_one_image(
    wheels: dict[str, Path], store: StateStore, home: Path, tmp_path: Path
) -> None:
    request = hello_request(wheels["good"], "1.0.0")
    go = tmp_path / "go"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_BAKE, str(home), str(go), request.model_dump_json()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        for _ in range(3)
    ]
    try:
        time.sleep(1.0)  # let them import and wait at the line
        go.touch()
        outputs = [process.communicate(timeout=120) for process in processes]
    finally:
        for process in processes:
            stop(process, signal.SIGKILL)
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err.decode()
    ids = {json.loads(out)["id"] for out, _ in outputs}
    assert len(ids) == 1
    [image_id] = ids
    assert image_dirs(home) == [image_id]
    assert [image.id for image in store.find_images()] == [image_id]
    assert len([event for event in store.events() if event.kind == "image.baked"]) == 1


# --------------------------------------------------------------------------- tarballs and jars


def test_tarball_with_start_command_bakes_and_runs(store: StateStore, home: Path, tmp_path: Path) -> None:
    tarball = make_tarball(tmp_path / "greeter-2.0.tgz", {"app/server.py": TARBALL_APP, "README": "hi\n"})
    command = f"{shlex.quote(sys.executable)} app/server.py --greeting 'hi there'"
    request = BakeRequest(
        package="greeter",
        version="2.0",
        artifact=str(tarball),
        base="none",
        start_command=command,
        account=ACCOUNT,
        region=REGION,
    )
    image = bake(store, request, home=home)

    directory = images_root(home) / image.id
    assert image.manifest["start_command"] == [sys.executable, "app/server.py", "--greeting", "hi there"]
    assert image.manifest["artifact"]["kind"] == "tarball"
    assert image.manifest["runtime"] == {"kind": "none"}
    assert (directory / "app" / "server.py").read_text() == TARBALL_APP
    assert bake(store, request, home=home).id == image.id
    with running(image, home / "logs") as app:
        reply = get(app.url + "/")
        assert (reply.status, reply.body) == (200, f"hi there from {os.path.realpath(directory)}")


def test_tarball_without_start_command_is_refused(store: StateStore, home: Path, tmp_path: Path) -> None:
    tarball = make_tarball(tmp_path / "greeter-2.0.tgz", {"app/server.py": TARBALL_APP})
    request = BakeRequest(
        package="greeter", version="2.0", artifact=str(tarball), base="none", account=ACCOUNT, region=REGION
    )
    with pytest.raises(InvalidRequest, match="needs a start command") as raised:
        bake(store, request, home=home)
    assert "start_command" in str(raised.value)  # the hint says what to set
    assert_nothing_baked(store, home)


@pytest.mark.parametrize(
    "member",
    [
        tarfile.TarInfo("../evil.sh"),
        tarfile.TarInfo("app/../../evil.sh"),
        tarfile.TarInfo("/tmp/gennaker-evil.sh"),
        "symlink:/etc/passwd",
        "symlink:../../evil",
        "manifest.json",
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "absolute-symlink", "escaping-symlink", "manifest"],
)
def test_unsafe_tarball_is_refused(
    store: StateStore, home: Path, tmp_path: Path, member: tarfile.TarInfo | str
) -> None:
    tarball = tmp_path / "evil.tgz"
    with tarfile.open(tarball, "w:gz") as archive:
        archive.addfile(tarfile.TarInfo("app/ok.txt"), io.BytesIO(b""))
        if isinstance(member, tarfile.TarInfo):
            member.size = 2
            archive.addfile(member, io.BytesIO(b"hi"))
        elif member.startswith("symlink:"):
            link = tarfile.TarInfo("app/link")
            link.type, link.linkname = tarfile.SYMTYPE, member.split(":", 1)[1]
            archive.addfile(link)
        else:
            info = tarfile.TarInfo(member)
            info.size = 2
            archive.addfile(info, io.BytesIO(b"{}"))
    request = BakeRequest(
        package="evil",
        version="1",
        artifact=str(tarball),
        base="none",
        start_command="sh app/ok.txt",
        account=ACCOUNT,
        region=REGION,
    )
    with pytest.raises(InvalidRequest, match="unsafe members"):
        bake(store, request, home=home)
    assert_nothing_baked(store, home)
    assert not (tmp_path / "evil.sh").exists() and not Path("/tmp/gennaker-evil.sh").exists()


JAVA_APP = """
import com.sun.net.httpserver.HttpServer;
import java.net.InetSocketAddress;

public class Hello {
    public static void main(String[] args) throws Exception {
        String host = System.getenv().getOrDefault("HOST", "127.0.0.1");
        HttpServer server = HttpServer.create(new InetSocketAddress(host, Integer.parseInt(System.getenv("PORT"))), 0);
        server.createContext("/", exchange -> {
            byte[] body = ("java " + System.getenv("GENNAKER_INSTANCE_ID")).getBytes();
            exchange.sendResponseHeaders(200, body.length);
            exchange.getResponseBody().write(body);
            exchange.close();
        });
        server.start();
    }
}
"""


@pytest.mark.skipif(not (shutil.which("java") and shutil.which("javac") and shutil.which("jar")), reason="no JDK")
def test_jar_bakes_and_runs(store: StateStore, home: Path, tmp_path: Path) -> None:
    source = tmp_path / "java"
    source.mkdir()
    (source / "Hello.java").write_text(JAVA_APP)
    subprocess.run(["javac", "--release", "17", "Hello.java"], cwd=source, check=True, timeout=120)
    jar = tmp_path / "hello-java-1.0.jar"
    subprocess.run(
        ["jar", "--create", "--file", str(jar), "--main-class", "Hello", "Hello.class"],
        cwd=source,
        check=True,
        timeout=120,
    )
    request = BakeRequest(
        package="hello-java", version="1.0", artifact=str(jar), base="jre-17", account=ACCOUNT, region=REGION
    )
    image = bake(store, request, home=home)

    assert image.manifest["start_command"] == ["java", "-jar", jar.name]
    assert image.manifest["runtime"]["kind"] == "java"
    assert (images_root(home) / image.id / jar.name).read_bytes() == jar.read_bytes()
    with running(image, home / "logs", instance="i-java") as app:
        assert get(app.url + "/health").body == "java i-java"


def test_jar_without_java_is_refused(
    store: StateStore, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jar = tmp_path / "app.jar"
    with zipfile.ZipFile(jar, "w") as archive:
        archive.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\nMain-Class: Hello\n")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    request = BakeRequest(package="app", version="1", artifact=str(jar), base="jre-17", account=ACCOUNT, region=REGION)
    with pytest.raises(InvalidRequest, match="needs java") as raised:
        bake(store, request, home=home)
    assert "JAVA_HOME" in str(raised.value)
    assert_nothing_baked(store, home)


# --------------------------------------------------------------------------- bad requests and bad artifacts


def corrupt_copy(wheel: Path, target: Path) -> Path:
    """The wheel with one byte of a member's compressed data flipped (its CRC no longer matches)."""
    data = bytearray(wheel.read_bytes())
    with zipfile.ZipFile(wheel) as archive:
        info = archive.getinfo("hello_service/server.py")
    offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra) + info.compress_size // 2
    data[offset] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BAD_ARTIFACTS: dict[str, tuple[Any, type[Exception], str]] = {
    # name: (make(good wheel, tmp dir) -> artifact, error, message)
    "not-a-zip": (lambda wheel, tmp: write(tmp / wheel.name, b"not a zip at all"), InvalidRequest, "not a zip archive"),
    "truncated": (
        lambda wheel, tmp: write(tmp / wheel.name, wheel.read_bytes()[:2000]),
        InvalidRequest,
        "not a valid wheel",
    ),
    "bad-crc": (lambda wheel, tmp: corrupt_copy(wheel, tmp / wheel.name), InvalidRequest, "corrupt wheel"),
    "wrong-checksum": (lambda wheel, tmp: f"{wheel}#sha256={'0' * 64}", InvalidRequest, "not the expected"),
    "missing": (lambda wheel, tmp: tmp / "missing" / wheel.name, NotFound, "does not exist"),
    "bad-tarball": (
        lambda wheel, tmp: write(tmp / "hello.tgz", b"\x1f\x8b garbage"),
        InvalidRequest,
        "not a valid tarball",
    ),
    "unknown-kind": (lambda wheel, tmp: write(tmp / "hello.rpm", b"rpm"), InvalidRequest, "unknown kind of artifact"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARTIFACTS))
def test_bad_artifact_is_refused_and_leaves_nothing(
    wheels: dict[str, Path], store: StateStore, home: Path, tmp_path: Path, case: str
) -> None:
    make, error, message = BAD_ARTIFACTS[case]
    artifact = make(wheels["good"], tmp_path)
    with pytest.raises(error, match=message) as raised:
        bake(store, hello_request(artifact, "1.0.0", start_command="venv/bin/python -m hello_service"), home=home)
    assert ": " in str(raised.value)  # what happened, then what to do
    assert_nothing_baked(store, home)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"base": "windows-11"}, "unknown base 'windows-11'"),
        ({"base": "python-2.7"}, "needs a Python 2.7 interpreter"),
        ({"base": "none"}, "needs a python-X.Y base"),
        ({"package": "goodbye-service"}, "is the package 'hello-service', not 'goodbye-service'"),
        ({"version": "9.9.9"}, "is version 1.0.0, not 9.9.9"),
        ({"artifact": None}, "has no artifact"),
        ({"start_command": "venv/bin/python -m 'unclosed"}, "cannot be split"),
        ({"package": "hello_service", "tags": {"bake.health_check_path": "health"}}, "must start with /"),
    ],
    ids=["unknown-base", "missing-python", "wheel-on-none", "package", "version", "no-artifact", "quotes", "health"],
)
def test_bad_request_is_refused(
    wheels: dict[str, Path], store: StateStore, home: Path, changes: dict[str, Any], message: str
) -> None:
    request = hello_request(wheels["good"], "1.0.0").replace(**changes)
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        bake(store, request, home=home)
    assert_nothing_baked(store, home)


def test_wheel_without_the_module_needs_a_start_command(store: StateStore, home: Path, tmp_path: Path) -> None:
    wheel = tmp_path / "odd_name-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("other/__init__.py", "")
        archive.writestr("odd_name-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: odd-name\nVersion: 1.0\n")
        archive.writestr(
            "odd_name-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr("odd_name-1.0.dist-info/RECORD", "")
    request = BakeRequest(
        package="odd-name", version="1.0", artifact=str(wheel), base=PYTHON_BASE, account=ACCOUNT, region=REGION
    )
    with pytest.raises(InvalidRequest, match="installs no module odd_name") as raised:
        bake(store, request, home=home)
    assert "start command" in str(raised.value)
    assert_nothing_baked(store, home)
    image = bake(store, request.replace(start_command="venv/bin/python -m other"), home=home)
    assert image.manifest["start_command"] == ["venv/bin/python", "-m", "other"]


def test_sdist_is_recognised_by_its_pkg_info(store: StateStore, home: Path, tmp_path: Path) -> None:
    sdist = make_tarball(
        tmp_path / "hello_service-1.0.0.tar.gz",
        {"PKG-INFO": "Metadata-Version: 2.1\nName: hello-service\nVersion: 1.0.0\n", "setup.py": ""},
        prefix="hello_service-1.0.0/",
    )
    with pytest.raises(InvalidRequest, match="is the package 'hello-service', not 'other'"):
        bake(store, hello_request(sdist, "1.0.0").replace(package="other"), home=home)
    # On a non-Python base the same file is just a tarball (and needs a start command).
    with pytest.raises(InvalidRequest, match="needs a start command"):
        bake(store, hello_request(sdist, "1.0.0", base="none"), home=home)
    assert_nothing_baked(store, home)


def test_artifact_over_http(wheels: dict[str, Path], store: StateStore, home: Path) -> None:
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(wheels["good"].parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        sha = hashlib.sha256(wheels["good"].read_bytes()).hexdigest()
        image = bake(store, hello_request(f"{base}/{wheels['good'].name}#sha256={sha}", "1.0.0"), home=home)
        assert image.manifest["artifact"]["source"] == f"{base}/{wheels['good'].name}"
        assert bake(store, hello_request(wheels["good"], "1.0.0"), home=home).id == image.id
        with pytest.raises(NotFound, match="HTTP 404"):
            bake(store, hello_request(f"{base}/hello_service-9.9.9-py3-none-any.whl", "9.9.9"), home=home)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert image_dirs(home) == [image.id]


# --------------------------------------------------------------------------- artifacts from untrusted references


@contextlib.contextmanager
def recording_server(folder: Path, redirect_to: str = "") -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    """Serves ``folder``; ``/same/<f>`` redirects to ``/<f>`` and ``/hop/<f>`` to ``redirect_to/<f>``.

    Yields its base URL and the (path, Authorization header) of every request it got.
    """
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    seen: list[tuple[str, str | None]] = []

    class Recorder(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Authorization")))
            for prefix, target in (("/same/", ""), ("/hop/", redirect_to)):
                if self.path.startswith(prefix):
                    self.send_response(302)
                    self.send_header("Location", target + "/" + self.path[len(prefix) :])
                    self.end_headers()
                    return
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Recorder, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_url_credentials_go_to_the_artifacts_host_only(tmp_path: Path) -> None:
    from gennaker.cloud.local.image_artifacts import stage_artifact

    served = tmp_path / "served"
    served.mkdir()
    (served / "hello-1.0.0.whl").write_bytes(b"the wheel")
    basic = "Basic Ym9iOmh1bnRlcjIy"  # bob:hunter22
    with recording_server(served) as (other, other_seen), recording_server(served, other) as (base, seen):
        netloc = base.replace("http://", "http://bob:hunter22@")
        query = "?X-Amz-Credential=AKIAXYZ&X-Amz-Signature=f00dfeed"
        for n, how in enumerate(("", "same/", "hop/")):
            staging = tmp_path / f"staging{n}"
            staging.mkdir()
            path, source, _ = stage_artifact(f"{netloc}/{how}hello-1.0.0.whl{query}", staging)
            assert path.read_bytes() == b"the wheel"
            assert source == f"{base}/{how}hello-1.0.0.whl"  # what manifests and messages show
    # The artifact's host got the credentials, also after a redirect to itself; the other host never.
    assert [auth for _, auth in seen] == [basic] * 4
    assert [(path.split("?")[0], auth) for path, auth in other_seen] == [("/hello-1.0.0.whl", None)]


def test_a_symlinked_artifact_is_not_followed(tmp_path: Path) -> None:
    from gennaker.cloud.local.image_artifacts import stage_artifact

    (tmp_path / "secret").write_text("not an artifact")
    (tmp_path / "hello-1.0.0.whl").symlink_to(tmp_path / "secret")
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(InvalidRequest, match="is a symlink"):
        stage_artifact(str(tmp_path / "hello-1.0.0.whl"), staging)
    assert list(staging.iterdir()) == []
