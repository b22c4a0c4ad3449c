"""A broken ``$GENNAKER_HOME`` answers 503 with what to fix, never a stack trace or a server path.

Every Clusters API route needs the gennaker home: the local account's state
(``local/state.db``). (The audit trail and the cluster locks live in gennaker's shared tables,
:mod:`gennaker.db`, whose absence is a 503 ``SharedStateUnavailable`` of its own.)
:func:`check_home` looks at it before a route runs (a few ``stat`` calls and an SQLite
read of each file's header per request): missing and not creatable, not writable by the API server's user, or a
state file SQLite cannot read all raise :class:`LocalStateUnavailable` (HTTP 503,
``{detail, type, hint}``). An SQLite or file error that shows up later in a route is
answered the same way (:func:`unavailable_from`). No answer names a path: whoever may only
view the page must not learn the server's layout; the server's log has the details.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

from gennaker.errors import LocalStateUnavailable
from gennaker.paths import gennaker_home

log = logging.getLogger(__name__)

STATE_FILES = ("local/state.db",)
HINT = (
    "check the API server's GENNAKER_HOME (else AIRFLOW_HOME/gennaker): it must be the directory the scheduler, "
    "workers and triggerer use, exist (or be creatable) and be writable by the API server's user; a state file "
    "that is not a database must be restored from a backup or moved away. The API server's log names the path."
)


def check_home(home: Path | None = None) -> None:
    """Raise :class:`LocalStateUnavailable` if the gennaker home (default: ``$GENNAKER_HOME``) cannot be used."""
    home = home if home is not None else gennaker_home()
    if not home.is_dir():
        try:
            home.mkdir(parents=True, exist_ok=True)  # as every other gennaker process would on first use
        except OSError as error:
            log.error("gennaker home %s is missing and cannot be created: %s", home, error)
            raise LocalStateUnavailable("gennaker's home directory is missing and cannot be created", HINT) from None
    for directory in (home, home / "local"):
        if directory.exists() and not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
            log.error("gennaker home directory %s is not writable by this process", directory)
            raise LocalStateUnavailable("gennaker's home directory is read-only for the API server", HINT)
    for name in STATE_FILES:
        _check_state_file(home / name)


def _check_state_file(path: Path) -> None:
    if not path.exists():
        return  # created on first use
    if not os.access(path, os.R_OK | os.W_OK):
        log.error("gennaker state file %s is not writable by this process", path)
        raise LocalStateUnavailable("a gennaker state file is read-only for the API server", HINT)
    # Read through SQLite, never with open(): closing another descriptor of a database file drops the
    # POSIX locks that this process's SQLite connections hold on it (SQLite shares them safely).
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=rw", uri=True, timeout=5.0)
        try:
            conn.execute("PRAGMA schema_version").fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError as error:
        if "locked" in str(error) or "busy" in str(error):
            return  # busy is not broken: the route waits for it as usual
        log.error("gennaker state file %s cannot be opened: %s", path, error)
        raise LocalStateUnavailable("a gennaker state file cannot be opened", HINT) from None
    except sqlite3.DatabaseError as error:
        log.error("gennaker state file %s is not an SQLite database (corrupt?): %s", path, error)
        raise LocalStateUnavailable("a gennaker state file is corrupt (not an SQLite database)", HINT) from None


def unavailable_from(error: Exception) -> LocalStateUnavailable:
    """The 503 for an SQLite or file error met while serving a route (logged here with its details)."""
    log.error("the local state failed: %r", error)
    return LocalStateUnavailable(f"gennaker's local state cannot be used ({type(error).__name__})", HINT)


__all__ = ["LocalStateUnavailable", "check_home", "unavailable_from"]
