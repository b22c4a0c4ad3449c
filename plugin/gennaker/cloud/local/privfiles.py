"""Private files and folders: what gennaker creates in its home is readable by its own user only.

The state store and the lock table hold the audit trail and every deploy's environment;
logs hold whatever the apps print. Other users of the machine have no business reading
them, so folders are created 0700 and files 0600 with explicit modes (never a process-wide
``umask``: the API server and the workers are multi-threaded). Folders and files that
already exist keep their modes: an operator who made them so chose them.

Each missing level of a folder is made with 0700 (``Path.mkdir(parents=True)`` would
make the parents with the default mode). SQLite gives a database's ``-wal`` and ``-shm``
files the database file's mode, so creating the database 0600 first covers them.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: str | os.PathLike[str]) -> Path:
    """Make ``path`` and every missing parent with mode 0700; the path."""
    folder = Path(path)
    missing: list[Path] = []
    for level in (folder, *folder.parents):
        if level.exists():
            break
        missing.append(level)
    for level in reversed(missing):
        try:
            os.mkdir(level, DIR_MODE)
        except FileExistsError:  # another process made it meanwhile
            pass
    return folder


def private_file(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (mode 0600) and its missing folders (0700) unless it exists; the path."""
    target = Path(path)
    private_dir(target.parent)
    if not target.exists():  # never opened for writing when it exists: it may be read-only on purpose
        try:
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE))
        except FileExistsError:  # another process made it meanwhile
            pass
    return target


def open_private(path: str | os.PathLike[str], flags: int) -> int:
    """``os.open(path, flags | O_CREAT | O_CLOEXEC, 0o600)`` after making its folders 0700."""
    private_dir(Path(path).parent)
    return os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)


def write_private(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Replace ``path`` atomically with ``data`` in a new 0600 file (a temp file renamed over it)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = open_private(tmp, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, target)


__all__ = ["DIR_MODE", "FILE_MODE", "open_private", "private_dir", "private_file", "write_private"]
