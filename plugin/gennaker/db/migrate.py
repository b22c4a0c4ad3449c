"""``gennaker db migrate``: create or upgrade the ``gennaker_`` tables, idempotently.

Run it after ``airflow db migrate`` (``make demo`` and the integration tests do), with the
environment of the Airflow components, so it finds the same database they will
(:func:`gennaker.db.engine.state_db_url`). Running it again changes nothing; it refuses a
database migrated by a newer gennaker.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Connection, inspect, select, update

from gennaker.db import tables
from gennaker.db.engine import get_engine, shown
from gennaker.errors import SharedStateUnavailable


@dataclass(frozen=True)
class Migration:
    """What a migration found and did."""

    url: str  # without its password
    before: int | None  # the version found (None: no gennaker tables)
    after: int
    created: tuple[str, ...]  # the tables it created

    def describe(self) -> str:
        """One line for the command's output."""
        if self.before == self.after and not self.created:
            return f"gennaker tables in {self.url} are up to date (version {self.after})"
        made = f"; created {', '.join(self.created)}" if self.created else ""
        start = "nothing" if self.before is None else f"version {self.before}"
        return f"migrated gennaker tables in {self.url} from {start} to version {self.after}{made}"


def migrate(url: str | None = None) -> Migration:
    """Create the missing ``gennaker_`` tables and record :data:`~gennaker.db.tables.SCHEMA_VERSION`."""
    engine = get_engine(url)
    where = shown(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:  # on SQLite an immediate transaction: two migrations at once take turns
        existing = set(inspect(conn).get_table_names())
        before = _version(conn) if tables.schema.name in existing else None
        if before is not None and before > tables.SCHEMA_VERSION:
            raise SharedStateUnavailable(
                f"gennaker's tables in {where} are at version {before}, newer than this gennaker "
                f"({tables.SCHEMA_VERSION})",
                hint="run the migration with the newest gennaker of the deployment",
            )
        created = tuple(t.name for t in tables.metadata.sorted_tables if t.name not in existing)
        tables.metadata.create_all(conn, checkfirst=True)
        # Later versions add their upgrade steps here, keyed on ``before``.
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if before is None and _version(conn) is None:
            conn.execute(tables.schema.insert().values(id=1, version=tables.SCHEMA_VERSION, migrated=stamp))
        elif before != tables.SCHEMA_VERSION:
            conn.execute(
                update(tables.schema)
                .where(tables.schema.c.id == 1)
                .values(version=tables.SCHEMA_VERSION, migrated=stamp)
            )
    return Migration(url=where, before=before, after=tables.SCHEMA_VERSION, created=created)


def _version(conn: Connection) -> int | None:
    value = conn.execute(select(tables.schema.c.version).where(tables.schema.c.id == 1)).scalar()
    return None if value is None else int(value)


__all__ = ["Migration", "migrate"]
