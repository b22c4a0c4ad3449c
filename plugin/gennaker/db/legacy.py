"""Bring the audit trail of earlier versions into ``gennaker_audit`` (``gennaker db migrate`` does, once).

Before the shared tables, the Clusters page's audit trail was the table ``web_actions`` of
the local state file (``$GENNAKER_HOME/local/state.db``). Its rows are copied, oldest
first, so the page's history and the cluster history's users survive the upgrade; a row
whose id is already in ``gennaker_audit`` is skipped, so running it again copies nothing.
The old table is left in place (the local state's retention keeps it bounded).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import Engine, select

from gennaker.db import tables

LEGACY_TABLE = "web_actions"
COLUMNS = (
    "id",
    "at",
    "user",
    "action",
    "application",
    "account",
    "cluster",
    "server_group",
    "status",
    "worker",
    "body",
)
BATCH = 1000


def import_audit(engine: Engine, state_file: Path) -> int:
    """Copy the ``web_actions`` rows of ``state_file`` missing from ``gennaker_audit``; how many it copied."""
    if not state_file.is_file():
        return 0
    # Read-only: the local provider's processes may be writing that file right now.
    source = sqlite3.connect(f"file:{state_file}?mode=ro", uri=True, timeout=30.0)
    try:
        found = source.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (LEGACY_TABLE,))
        if found.fetchone() is None:
            return 0
        rows = source.execute(f"SELECT {', '.join(COLUMNS)} FROM {LEGACY_TABLE} ORDER BY seq").fetchall()
    finally:
        source.close()
    if not rows:
        return 0
    with engine.connect() as conn:
        known = {str(value) for value in conn.execute(select(tables.audit.c.id)).scalars()}
    missing = [dict(zip(COLUMNS, row, strict=True)) for row in rows if str(row[0]) not in known]
    for start in range(0, len(missing), BATCH):
        with engine.begin() as conn:
            conn.execute(tables.audit.insert(), missing[start : start + BATCH])
    return len(missing)


__all__ = ["import_audit"]
