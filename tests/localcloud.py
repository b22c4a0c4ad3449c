"""Helpers shared by the tests that run the local provider's real processes.

Import as ``from localcloud import ...`` (``tests/`` is on the path through its conftest).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
BUILD_HELLO = REPO / "scripts" / "build-hello.sh"
T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 20.0, every: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


class Timeout(BaseException):
    """Raised in the main thread by :func:`bounded_to`'s timer."""


@contextmanager
def bounded_to(seconds: float) -> Iterator[None]:
    """Fail the code inside if it runs longer than ``seconds`` (a fixture's teardown still runs)."""

    def expire(signum: int, frame: Any) -> None:
        raise Timeout(f"the test ran longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def proc_running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] not in "ZXx"


def marked_processes(mark: str, *, started_from: Path | None = None) -> list[int]:
    """Running processes whose environment carries ``GENNAKER_TEST_MARK=<mark>``, or whose command line
    names ``started_from`` (processes Airflow's tasks started, which do not inherit the mark)."""
    entry = f"GENNAKER_TEST_MARK={mark}".encode()
    needle = str(started_from).encode() if started_from is not None else None
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            marked = entry in (proc / "environ").read_bytes().split(b"\0")
            if not marked and needle is not None:
                marked = needle in (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if marked and proc_running(int(proc.name)):
            found.append(int(proc.name))
    return found


def describe(pid: int) -> str:
    """A process's command line, for a message about a leftover."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_hello(version: str, out: Path, *options: str) -> Path:
    """The demo service's wheel at ``version``, built by scripts/build-hello.sh into ``out``."""
    done = subprocess.run(
        [str(BUILD_HELLO), version, "--out", str(out), *options],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHON": sys.executable},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    wheel = Path(done.stdout.strip().splitlines()[-1])
    assert wheel == out / f"hello_service-{version}-py3-none-any.whl"
    assert wheel.is_file()
    return wheel
