"""Process helpers of the local provider, written once for the supervisor, the proxy, images and the provider.

- identity: :func:`pid_alive`, :func:`proc_stat` (state and start time), :func:`boot_id`, :func:`cmdline`,
  :func:`environ_has`, :func:`runs_module` (a ``python -m <module>`` with given option values);
- children: :class:`Children`, the processes this process started (polled to learn exit codes and reap
  zombies), and :func:`start_detached` (``python -m ...`` in its own session, its output appended to a log);
- stopping: :func:`signal_group`, :func:`kill_group`, :func:`wait_gone`, :func:`stop_pids`, :func:`exit_phrase`;
- locks and pid files: :func:`flock` (waited for), :func:`hold_lock` (held for a process's life),
  :func:`lock_held` (does another process hold it), :func:`read_pid`;
- ports of 127.0.0.1: :func:`port_free`, :func:`free_port`, :func:`listening`;
- :func:`tail`, :func:`tail_file`: the last lines of an output or a log, for error messages.

POSIX only (``fcntl``, sessions, process groups); ``/proc`` makes identity checks exact (Linux),
elsewhere a live pid is taken at its word. Standard library only: supervisors and proxies import it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from gennaker.cloud.local import logfiles, privfiles
from gennaker.errors import ProviderUnavailable, QuotaExceeded

LOCALHOST = "127.0.0.1"
"""Where local instances and load balancers listen."""


# --------------------------------------------------------------------------- children


class Children:
    """Processes this process started, by pid: polled to learn exit codes and to reap zombies."""

    def __init__(self) -> None:
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    def add(self, process: subprocess.Popen[bytes]) -> None:
        """Remember a process this process started."""
        self._procs[process.pid] = process

    def __contains__(self, pid: object) -> bool:
        return pid in self._procs

    def get(self, pid: int) -> subprocess.Popen[bytes] | None:
        """The child with this pid, if this process started it and has not forgotten it."""
        return self._procs.get(pid)

    def forget(self, pid: int) -> subprocess.Popen[bytes] | None:
        """Stop tracking ``pid``; the child, if it was one."""
        return self._procs.pop(pid, None)

    def exit_code(self, pid: int) -> int | None:
        """The exit code of a child that ended, forgetting it (None if unknown: not our child, or running)."""
        child = self._procs.pop(pid, None)
        return None if child is None else child.poll()

    def reap(self, *, forget: bool = False) -> None:
        """Reap the children that have exited; ``forget``: stop tracking them too (their exit codes are not needed)."""
        for pid, child in list(self._procs.items()):
            if child.poll() is not None and forget:
                self._procs.pop(pid, None)


CHILDREN = Children()
"""Supervisors and instances this process started; :func:`pid_alive` asks it first."""


def start_detached(
    argv: Sequence[str], *, log_path: Path, cwd: Path, env: Mapping[str, str], umask: int = -1
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session (neither our death nor a kill of our process group reaches it).

    stdin from ``/dev/null``, stdout and stderr appended to ``log_path`` (O_APPEND: copy-truncate rotation
    keeps the child's stream), no inherited file descriptors. Raises OSError if it cannot be started.
    """
    with logfiles.open_log(log_path) as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd=cwd,
            env=dict(env),
            umask=umask,
        )


# --------------------------------------------------------------------------- identity


def proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, start time in clock ticks since boot)`` from ``/proc/<pid>/stat``; None if there is none."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rindex(")") + 2 :].split()
    return rest[0], int(rest[19])


def has_proc() -> bool:
    """This machine has a Linux ``/proc`` (identity checks are exact)."""
    return Path("/proc/self/stat").exists()


def boot_id() -> str | None:
    """The machine's boot id: a pid recorded before a reboot names another process after it."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def cmdline(pid: int) -> list[str] | None:
    """The process's command line (None if it cannot be read: gone, or no ``/proc``).

    Right after ``exec`` the kernel can show an empty command line for a moment; a live process always
    has one, so an empty read is tried again for up to 0.2 s (else a process just started would not be
    recognised as the one we started).
    """
    deadline = time.monotonic() + 0.2
    while True:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        if raw or time.monotonic() >= deadline:
            return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
        time.sleep(0.005)


def environ_has(pid: int, entry: str) -> bool:
    """The process's environment holds ``NAME=value`` ``entry``."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return entry.encode() in raw.split(b"\0")


def pid_alive(pid: int | None, children: Children = CHILDREN) -> bool:
    """A process with this pid runs (a zombie does not count). Reaps it if this process started it."""
    if not pid or pid <= 0:
        return False
    child = children.get(pid)
    if child is not None:
        return child.poll() is None  # poll() reaps; the exit code stays for Children.exit_code()
    stat = proc_stat(pid)
    if stat is not None:
        return stat[0] not in ("Z", "X", "x")
    if has_proc():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def runs_module(pid: int | None, modules: Sequence[str], options: Mapping[str, str]) -> bool:
    """``pid`` runs ``python -m`` one of ``modules`` with exactly these option values (``{"--home": ...}``).

    Without ``/proc`` a live pid is taken at its word.
    """
    if not pid_alive(pid):
        return False
    assert pid is not None
    argv = cmdline(pid)
    if argv is None:
        return not has_proc()
    got = {arg: argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in options}
    return any(module in argv for module in modules) and got == dict(options)


# --------------------------------------------------------------------------- stopping


def wait_gone(pids: Sequence[int], timeout: float, children: Children = CHILDREN) -> list[int]:
    """Wait until none of ``pids`` runs, at most ``timeout`` s; the ones still running."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if pid_alive(pid, children)]
        if not alive or time.monotonic() >= deadline:
            for pid in set(pids) - set(alive):
                children.forget(pid)
            return alive
        time.sleep(0.02)


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal a process group whose leader is ``pid`` (a process started with its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def kill_group(pid: int) -> None:
    """SIGKILL the process group whose leader is ``pid``."""
    signal_group(pid, signal.SIGKILL)


def stop_pids(pids: Sequence[int], grace: float) -> list[int]:
    """SIGTERM each process group, SIGKILL what is left after ``grace`` s; the ones that would not die."""
    for pid in pids:
        signal_group(pid, signal.SIGTERM)
    alive = wait_gone(pids, grace)
    for pid in pids:  # also the stragglers of groups whose leader did exit
        signal_group(pid, signal.SIGKILL)
    return wait_gone(alive, 5.0)


def exit_phrase(code: int | None) -> str:
    """An exit status in words: ``exit code 3``, ``exit code -9 (killed by SIGKILL)``, ``exit code unknown``."""
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"exit code {code} (killed by {name})"
    return f"exit code {code}"


# --------------------------------------------------------------------------- locks and pid files


@contextlib.contextmanager
def flock(
    path: Path, *, timeout: float | None = 30.0, message: str | None = None, hint: str | None = None, poll: float = 0.02
) -> Iterator[int]:
    """Hold an exclusive ``flock`` on ``path`` (made 0600 if missing), waited for up to ``timeout`` s
    (None: for ever); then :class:`ProviderUnavailable` with ``message`` and ``hint``. Yields the descriptor.
    """
    fd = privfiles.open_private(path, os.O_RDWR)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    raise ProviderUnavailable(
                        message or f"{path} stayed locked by another process for {timeout} s", hint=hint
                    ) from None
                time.sleep(poll)
        yield fd
    finally:
        os.close(fd)


def hold_lock(path: Path, *, wait: float = 1.0) -> int | None:
    """``path``'s descriptor, locked exclusively, for a process to hold for its life; None if another holds it.

    Retried for ``wait`` s: :func:`lock_held` takes a shared lock for an instant to look.
    """
    fd = privfiles.open_private(path, os.O_RDWR)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.02)


def lock_held(path: Path) -> bool:
    """Another process holds ``path`` locked (:func:`hold_lock`); a missing file is not held."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases our shared lock
    return False


def read_pid(path: Path) -> int | None:
    """The pid a pid file holds (None if it is missing, empty or not a number)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


# --------------------------------------------------------------------------- ports


def port_free(port: int, host: str = LOCALHOST) -> bool:
    """Nothing listens on ``host:port`` (bound as a listener binds it, so TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(exclude: set[int] | frozenset[int] = frozenset()) -> int:
    """A free TCP port of 127.0.0.1 (bind port 0, read it, close), not one of ``exclude``."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOCALHOST, 0))
            port = int(sock.getsockname()[1])
        if port not in exclude:
            return port
    raise QuotaExceeded(f"found no free port on {LOCALHOST}")


def listening(port: int, host: str = LOCALHOST, timeout: float = 1.0) -> bool:
    """Something accepts connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- output


def tail(text: str, lines: int, *, sep: str = "\n", empty: str = "(no output)") -> str:
    """The last ``lines`` non-blank lines of ``text``, joined by ``sep``; ``empty`` if there are none."""
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return sep.join(kept) if kept else empty


def tail_file(path: Path, lines: int = 5) -> str:
    """The last lines of a log on one line (``a | b | c``), for an error message; ``(no log)`` if unreadable."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return tail(text, lines, sep=" | ", empty="")


__all__ = [
    "CHILDREN",
    "LOCALHOST",
    "Children",
    "boot_id",
    "cmdline",
    "environ_has",
    "exit_phrase",
    "flock",
    "free_port",
    "has_proc",
    "hold_lock",
    "kill_group",
    "listening",
    "lock_held",
    "pid_alive",
    "port_free",
    "proc_stat",
    "read_pid",
    "runs_module",
    "signal_group",
    "start_detached",
    "stop_pids",
    "tail",
    "tail_file",
    "wait_gone",
]
