"""Size-bounded logs for the local provider's processes: copy-truncate rotation.

An instance writes its stdout and stderr straight into ``<instance-id>.log`` through a
descriptor its supervisor opened with ``O_APPEND`` and handed over; the supervisor and
the proxy write theirs the same way (their parent opened the file). Nothing can rename
the file under such a writer without losing its stream, so a log is rotated by
**copy-truncate**, by the process that owns it (every :data:`CHECK_SECONDS`):

- when ``<log>`` is larger than ``max_bytes``, its newest ``max_bytes`` (from a line
  start) are read, the file is truncated to 0, ``<log>.1`` .. ``<log>.<keep-1>`` move up
  one (the oldest is dropped) and what was read becomes ``<log>.1``;
- every writer's ``O_APPEND`` descriptor then writes at the new end: the child keeps its
  stream and never knows. Output written between the read and the truncation (a few
  microseconds, only at a rotation) is lost: the price of not piping every line through
  the supervisor.

So a log and its ``keep`` older files hold at most about ``max_bytes * (keep + 1)``
bytes, plus whatever is written within one check. Settings (read by the supervisor and
the proxy, which inherit ``GENNAKER_LOCAL_*``): ``GENNAKER_LOCAL_LOG_MAX_BYTES``
(default 10 MiB) and ``GENNAKER_LOCAL_LOG_KEEP`` (default 3). Every file is 0600.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from gennaker.cloud.local.privfiles import open_private, write_private
from gennaker.errors import InvalidRequest

log = logging.getLogger("gennaker.cloud.local.logfiles")

MAX_BYTES_ENV = "GENNAKER_LOCAL_LOG_MAX_BYTES"
KEEP_ENV = "GENNAKER_LOCAL_LOG_KEEP"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_KEEP = 3
CHECK_SECONDS = 1.0
MIN_MAX_BYTES = 1024


@dataclass(frozen=True)
class LogLimits:
    """How big one log file may grow (``max_bytes``) and how many rotated files are kept."""

    max_bytes: int = DEFAULT_MAX_BYTES
    keep: int = DEFAULT_KEEP

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LogLimits:
        """The defaults, overridden by ``GENNAKER_LOCAL_LOG_MAX_BYTES`` and ``GENNAKER_LOCAL_LOG_KEEP``."""
        env = os.environ if environ is None else environ
        return cls(
            max_bytes=_whole(env, MAX_BYTES_ENV, DEFAULT_MAX_BYTES, MIN_MAX_BYTES),
            keep=_whole(env, KEEP_ENV, DEFAULT_KEEP, 0),
        )


def _whole(env: Mapping[str, str], name: str, default: int, least: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = least - 1
    if value < least:
        raise InvalidRequest(f"{name}={text!r} is not a whole number of at least {least}")
    return value


def open_log(path: str | os.PathLike[str]) -> IO[bytes]:
    """``path`` opened for appending (``O_APPEND``: rotation-safe), created 0600 in a 0700 folder."""
    return os.fdopen(open_private(path, os.O_WRONLY | os.O_APPEND), "ab")


def rotated(path: str | os.PathLike[str], number: int) -> Path:
    """``<log>.<number>``: the ``number``-th newest rotated file."""
    return Path(f"{os.fspath(path)}.{number}")


def rotate_if_big(path: str | os.PathLike[str], limits: LogLimits) -> bool:
    """Copy-truncate ``path`` if it is larger than ``limits.max_bytes``; True if it was rotated."""
    try:
        with open(path, "r+b") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size <= limits.max_bytes:
                return False
            handle.seek(size - limits.max_bytes)
            tail = handle.read()  # to the end as it is now: a writer may have added more
            os.ftruncate(handle.fileno(), 0)  # at once: what is written from here on stays in the file
    except FileNotFoundError:
        return False
    if limits.max_bytes < len(tail):  # written since the size was read: keep the newest
        tail = tail[-limits.max_bytes :]
    newline = tail.find(b"\n")
    if 0 <= newline < len(tail) - 1:
        tail = tail[newline + 1 :]  # from a line start
    if limits.keep == 0:
        return True
    with contextlib.suppress(FileNotFoundError):
        os.unlink(rotated(path, limits.keep))
    for number in range(limits.keep - 1, 0, -1):
        with contextlib.suppress(FileNotFoundError):
            os.replace(rotated(path, number), rotated(path, number + 1))
    write_private(rotated(path, 1), tail)
    return True


class Rotator:
    """A daemon thread that rotates the logs ``files()`` names every ``every`` seconds."""

    def __init__(self, files: Callable[[], Iterable[Path]], limits: LogLimits, *, every: float = CHECK_SECONDS) -> None:
        self.files, self.limits, self.every = files, limits, every
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="log-rotator", daemon=True)

    def start(self) -> Rotator:
        """Start checking; returns itself."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop checking (the thread ends after its current check)."""
        self._stopped.set()

    def check(self) -> list[Path]:
        """One check: the logs that were rotated."""
        done = []
        for path in self.files():
            try:
                if rotate_if_big(path, self.limits):
                    done.append(path)
            except OSError as error:  # a full disk must not stop the supervisor; try again next time
                log.warning("could not rotate %s: %s", path, error)
        return done

    def _run(self) -> None:
        while not self._stopped.wait(self.every):
            self.check()


__all__ = ["LogLimits", "Rotator", "open_log", "rotate_if_big", "rotated"]
