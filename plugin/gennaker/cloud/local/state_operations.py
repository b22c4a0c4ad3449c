"""Operations and the audit log in the local state.

An operation row is claimed once per idempotency key (the ``key`` column is UNIQUE and
the claim runs in ``BEGIN IMMEDIATE``), so of several processes retrying one request
exactly one does the work. The ``events`` table is the audit log, appended to and read
by id.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from gennaker.cloud.local.state_db import StateFile, dumps, filters, ts
from gennaker.cloud.model import Event, Operation, OperationKind, OperationStatus, utcnow
from gennaker.cloud.provider import IdempotencyKey
from gennaker.errors import IdempotencyConflict, InvalidRequest


class OperationRows(StateFile):
    """The ``operations`` and ``events`` tables of :class:`~gennaker.cloud.local.state.StateStore`."""

    # ----------------------------------------------------------------------- operations

    def claim_operation(
        self,
        key: IdempotencyKey | str,
        kind: OperationKind | str,
        *,
        request: Mapping[str, Any] | None = None,
        message: str = "",
    ) -> tuple[Operation, bool]:
        """The operation for ``key``: ``(existing, False)`` if the key was claimed before, else ``(new, True)``.

        Atomic across processes: of several claims of one key exactly one gets
        ``True`` and does the work; the others get its operation. A key already used
        for another kind of operation raises :class:`IdempotencyConflict`.
        """
        key_text, kind = str(key), OperationKind(kind)
        with self.transaction() as db:
            row = db.execute("SELECT body FROM operations WHERE key = ?", (key_text,)).fetchone()
            if row is not None:
                return _same_kind(Operation.from_dict(json.loads(row[0])), kind), False
            op = Operation(
                id=f"op-{uuid.uuid4().hex[:16]}",
                kind=kind,
                key=key_text,
                message=message or f"{kind.value} started",
                request=dict(request or {}),
            )
            self._put_operation(op)
            self.record_event("operation.started", op.id, op.message, key=key_text, data={"kind": kind.value})
            return op, True

    def _put_operation(self, op: Operation) -> None:
        self._put(
            "operations",
            {
                "id": op.id,
                "key": op.key,
                "kind": op.kind.value,
                "status": op.status.value,
                "started": ts(op.started),
                "updated": ts(op.updated),
                "body": dumps(op.to_dict()),
            },
        )

    def get_operation(self, operation_id: str) -> Operation:
        """One operation by id."""
        return self._one(
            Operation, "SELECT body FROM operations WHERE id = ?", (operation_id,), f"operation {operation_id}"
        )

    def find_operation(self, key: IdempotencyKey | str) -> Operation | None:
        """The operation claimed with ``key``, if any."""
        row = self._connection().execute("SELECT body FROM operations WHERE key = ?", (str(key),)).fetchone()
        return None if row is None else Operation.from_dict(json.loads(row[0]))

    def update_operation(
        self,
        operation_id: str,
        *,
        status: OperationStatus | str | None = None,
        message: str | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> Operation:
        """Record progress: a new status or message, more result keys (merged). A final operation is read-only."""
        with self.transaction():
            op = self.get_operation(operation_id)
            if op.done:
                raise InvalidRequest(f"operation {op.id} already ended {op.status.value}; it cannot change")
            changes: dict[str, Any] = {"updated": utcnow(), "result": {**op.result, **(result or {})}}
            if status is not None:
                changes["status"] = OperationStatus(status)
                changes["message"] = f"{op.kind.value} {changes['status'].value.lower()}"
            if message is not None:
                changes["message"] = message
            new = op.replace(**changes)
            self._put_operation(new)
            if new.done:
                self.record_event(f"operation.{new.status.value.lower()}", new.id, new.message, key=new.key)
            return new

    def list_operations(
        self, *, status: OperationStatus | str | None = None, kind: OperationKind | str | None = None
    ) -> list[Operation]:
        """Operations matching the filters, oldest first (a restarted supervisor resumes the RUNNING ones)."""
        where, params = filters(
            status=None if status is None else OperationStatus(status).value,
            kind=None if kind is None else OperationKind(kind).value,
        )
        return self._many(Operation, f"SELECT body FROM operations{where} ORDER BY started, rowid", params)

    # ----------------------------------------------------------------------- audit log

    def record_event(
        self,
        kind: str,
        subject: str,
        message: str = "",
        *,
        account: str | None = None,
        key: IdempotencyKey | str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> Event:
        """Append one line to the audit log."""
        event = Event(
            kind=kind,
            subject=subject,
            message=message,
            account=account,
            key=None if key is None else str(key),
            data=dict(data or {}),
        )
        with self.transaction() as db:
            cursor = db.execute(
                "INSERT INTO events (at, kind, subject, account, key, message, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (ts(event.at), kind, subject, account, event.key, message, dumps(event.data)),
            )
        return event.replace(id=cursor.lastrowid)

    def events(self, *, subject: str | None = None, after: int = 0, limit: int = 1000) -> list[Event]:
        """Audit log lines with id above ``after`` (oldest first), for one subject or all."""
        where, params = filters(subject=subject)
        where = f"{where} AND id > ?" if where else " WHERE id > ?"
        rows = self._connection().execute(
            f"SELECT id, at, kind, subject, account, key, message, data FROM events{where} ORDER BY id LIMIT ?",
            (*params, after, limit),
        )
        return [_event(row) for row in rows]


def _same_kind(op: Operation, kind: OperationKind) -> Operation:
    if op.kind is not kind:
        raise IdempotencyConflict(
            f"idempotency key {op.key} already names a {op.kind.value} operation ({op.id}), not {kind.value}"
        )
    return op


def _event(row: Sequence[Any]) -> Event:
    event_id, at, kind, subject, account, key, message, data = row
    return Event(
        id=event_id,
        at=datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc),
        kind=kind,
        subject=subject,
        account=account,
        key=key,
        message=message,
        data=json.loads(data),
    )


__all__ = ["OperationRows"]
