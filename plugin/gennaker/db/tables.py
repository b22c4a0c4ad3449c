"""The ``gennaker_`` tables (SQLAlchemy Core), portable to SQLite, PostgreSQL and MySQL.

Times are stored as sortable UTC text (``2026-01-02T03:04:05.000000Z``) as they were in the
SQLite files these tables replace; a lease's end is epoch seconds in a double.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Double, Index, Integer, MetaData, String, Table, Text

SCHEMA_VERSION = 1
"""The version :func:`gennaker.db.migrate.migrate` brings the tables to (one row of ``gennaker_schema``)."""

metadata = MetaData()

schema = Table(
    "gennaker_schema",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1: one version row
    Column("version", Integer, nullable=False),
    Column("migrated", String(32), nullable=False),
)

locks = Table(
    "gennaker_locks",
    metadata,
    # 500 characters: the longest primary key MySQL's InnoDB indexes in utf8mb4 is 768.
    Column("resource", String(500), primary_key=True),
    Column("owner", Text, nullable=False),
    Column("note", Text, nullable=False),
    Column("acquired", String(40), nullable=False),
    Column("expires", Double, nullable=False),  # a double: MySQL's FLOAT would round epoch seconds to minutes
)

audit = Table(
    "gennaker_audit",
    metadata,
    # BIGINT everywhere but SQLite, whose auto-increment needs INTEGER PRIMARY KEY.
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("at", String(32), nullable=False),
    Column("user", Text, nullable=False),
    Column("action", String(64), nullable=False),
    Column("application", String(250), nullable=False),
    Column("account", String(250), nullable=False),
    Column("cluster", String(250)),
    Column("server_group", String(250)),
    Column("status", String(16), nullable=False),
    Column("worker", String(300), nullable=False),
    Column("body", Text, nullable=False),
    Index("gennaker_audit_application", "application", "seq"),
)

__all__ = ["SCHEMA_VERSION", "audit", "locks", "metadata", "schema"]
