"""The local provider's shared process helpers: pid files, locks, identity by command line, ports, tails."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from gennaker.cloud.local import processes
from gennaker.errors import ProviderUnavailable

if not Path("/proc/self/stat").exists():  # pragma: no cover - identity checks read /proc
    pytest.skip("needs Linux /proc", allow_module_level=True)

HOLDER = """
import sys, time
from pathlib import Path
from gennaker.cloud.local import processes
fd = processes.hold_lock(Path(sys.argv[1]))
print("held" if fd is not None else "refused", flush=True)
time.sleep(30)
"""


def test_read_pid_takes_only_a_positive_number(tmp_path: Path) -> None:
    path = tmp_path / "x.pid"
    assert processes.read_pid(path) is None
    for text, expected in (("123\n", 123), ("", None), ("0", None), ("-5", None), ("abc", None)):
        path.write_text(text)
        assert processes.read_pid(path) == expected


def test_a_lock_held_by_another_process_is_seen_and_not_taken(tmp_path: Path) -> None:
    path = tmp_path / "run" / "x.pid"
    assert not processes.lock_held(path)  # missing: not held, and not made by looking
    assert not path.exists()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert processes.lock_held(path)
        assert processes.hold_lock(path, wait=0.1) is None
        with pytest.raises(ProviderUnavailable, match="held for ever"):
            with processes.flock(path, timeout=0.1, message="held for ever"):
                pass
    finally:
        holder.kill()
        holder.wait()
    fd = processes.hold_lock(path)
    assert fd is not None  # its holder is gone: the lock went with it


def test_runs_module_matches_the_module_and_every_option(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(tmp_path), "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    processes.CHILDREN.add(child)
    try:
        options = {"--bind": "127.0.0.1", "--directory": str(tmp_path)}
        assert processes.runs_module(child.pid, ("old.name", "http.server"), options)
        assert not processes.runs_module(child.pid, ("other.module",), options)
        assert not processes.runs_module(child.pid, ("http.server",), {**options, "--directory": "/elsewhere"})
    finally:
        child.terminate()
        child.wait()
    assert not processes.pid_alive(child.pid)
    assert processes.CHILDREN.exit_code(child.pid) == child.returncode
    assert processes.exit_phrase(child.returncode) == "exit code -15 (killed by SIGTERM)"


def test_stop_pids_ends_a_process_group_that_ignores_sigterm() -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", stubborn], start_new_session=True, stdout=subprocess.PIPE, text=True
    )
    processes.CHILDREN.add(child)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    started = time.monotonic()
    assert processes.stop_pids([child.pid], grace=0.3) == []
    assert time.monotonic() - started < 5.0
    assert not processes.pid_alive(child.pid)


def test_ports_and_tails() -> None:
    port = processes.free_port()
    assert processes.port_free(port) and not processes.listening(port)
    assert processes.tail("a\n\nb\nc\n", 2) == "b\nc"
    assert processes.tail("  \n", 2) == "(no output)"


def test_tail_file_puts_the_end_of_a_log_on_one_line(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    assert processes.tail_file(log) == "(no log)"
    log.write_text("one\ntwo\n\nthree\n")
    assert processes.tail_file(log, 2) == "two | three"
