"""Server groups, their instances and their names in the local state.

Instances are rows of their own (the supervisor updates health without rewriting the
group); :meth:`ServerGroupRows.get_server_group` joins them back. The ``names`` table
reserves server group names, so that two processes never make the same one (see
:meth:`ServerGroupRows.allocate_server_group_name`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from gennaker.cloud.local.state_db import StateFile, dumps, filters, ts
from gennaker.cloud.model import Instance, ServerGroup, utcnow
from gennaker.cloud.naming import format_server_group_name, next_sequence, parse_server_group_name
from gennaker.cloud.provider import IdempotencyKey
from gennaker.errors import InvalidName, InvalidRequest, NotFound


class ServerGroupRows(StateFile):
    """The ``server_groups``, ``instances`` and ``names`` tables of :class:`~gennaker.cloud.local.state.StateStore`."""

    # ----------------------------------------------------------------------- server groups

    def put_server_group(self, group: ServerGroup) -> None:
        """Store (or replace) a server group. Its ``instances`` are not stored: see :meth:`put_instance`."""
        self._put(
            "server_groups",
            {
                "account": group.account,
                "region": group.region,
                "name": group.name,
                "cluster": group.cluster,
                "application": group.application,
                "created": ts(group.created),
                "body": dumps(group.model_dump(mode="json", exclude={"instances"})),
            },
        )

    def get_server_group(self, account: str, region: str, name: str) -> ServerGroup:
        """One server group, with its instances."""
        with self.snapshot() as db:
            row = db.execute(
                "SELECT body FROM server_groups WHERE account = ? AND region = ? AND name = ?",
                (account, region, name),
            ).fetchone()
            if row is None:
                raise NotFound(f"server group {name} not found in account {account}, region {region}")
            return self._with_instances(json.loads(row[0]))

    def list_server_groups(
        self,
        *,
        account: str | None = None,
        region: str | None = None,
        application: str | None = None,
        cluster: str | None = None,
    ) -> list[ServerGroup]:
        """Server groups matching every given filter, with instances, oldest first."""
        where, params = filters(account=account, region=region, application=application, cluster=cluster)
        with self.snapshot() as db:
            rows = db.execute(f"SELECT body FROM server_groups{where} ORDER BY created, rowid", params).fetchall()
            return [self._with_instances(json.loads(row[0])) for row in rows]

    def _with_instances(self, body: dict[str, Any]) -> ServerGroup:
        instances = self.list_instances(account=body["account"], region=body["region"], server_group=body["name"])
        body["instances"] = [instance.to_dict() for instance in instances]
        return ServerGroup.from_dict(body)

    def update_server_group(
        self, account: str, region: str, name: str, change: Callable[[ServerGroup], ServerGroup]
    ) -> ServerGroup:
        """Read, change and write back one server group atomically; returns the new one."""
        with self.transaction():
            group = change(self.get_server_group(account, region, name))
            if (group.account, group.region, group.name) != (account, region, name):
                raise InvalidRequest(f"a change to server group {name} may not rename or move it")
            self.put_server_group(group)
            return group

    def delete_server_group(self, account: str, region: str, name: str) -> bool:
        """Forget a server group, its instances, and release its name; False if there was none."""
        with self.transaction() as db:
            db.execute(
                "DELETE FROM instances WHERE account = ? AND region = ? AND server_group = ?", (account, region, name)
            )
            self.release_server_group_name(account, region, name)
            return self._delete("server_groups", "account = ? AND region = ? AND name = ?", (account, region, name))

    # ----------------------------------------------------------------------- server group names

    def allocate_server_group_name(
        self, *, account: str, region: str, cluster: str, reserved_by: str | IdempotencyKey | None = None
    ) -> str:
        """Reserve the cluster's next server group name (``hello-prod-v004``), atomically across processes.

        The next sequence follows the newest name ever reserved in the cluster (so a
        destroyed group's name is not handed out again until the sequence wraps),
        skipping names still reserved or in use. ``reserved_by`` (an idempotency key)
        makes it repeatable: the same holder gets the same name back while it is held.
        """
        if parse_server_group_name(cluster).sequence is not None:
            raise InvalidName(f"{cluster!r} is a server group name, not a cluster")
        holder = None if reserved_by is None else str(reserved_by)
        with self.transaction() as db:
            if holder is not None:
                held = _held_name(db, account, region, cluster, holder)
                if held is not None:
                    return held
            name = _next_free_name(db, account, region, cluster)
            db.execute(
                "DELETE FROM names WHERE account = ? AND region = ? AND name = ?", (account, region, name)
            )  # a released reservation of the same name, from before the sequence wrapped
            db.execute(
                "INSERT INTO names (account, region, cluster, name, reserved_by, reserved) VALUES (?, ?, ?, ?, ?, ?)",
                (account, region, cluster, name, holder, ts(utcnow())),
            )
            return name

    def release_server_group_name(self, account: str, region: str, name: str) -> None:
        """Free a reserved name (its group was destroyed, or never made); it still counts for "newest"."""
        with self.transaction() as db:
            db.execute(
                "UPDATE names SET released = 1 WHERE account = ? AND region = ? AND name = ?", (account, region, name)
            )

    # ----------------------------------------------------------------------- instances

    def put_instance(self, instance: Instance, *, account: str, region: str) -> None:
        """Store (or replace) an instance of a server group in ``account``/``region``."""
        self._put(
            "instances",
            {
                "id": instance.id,
                "account": account,
                "region": region,
                "server_group": instance.server_group,
                "body": dumps(instance.to_dict()),
            },
        )

    def get_instance(self, instance_id: str) -> Instance:
        """One instance by id."""
        return self._one(Instance, "SELECT body FROM instances WHERE id = ?", (instance_id,), f"instance {instance_id}")

    def list_instances(self, *, account: str, region: str, server_group: str) -> list[Instance]:
        """A server group's instances, in the order they were stored."""
        return self._many(
            Instance,
            "SELECT body FROM instances WHERE account = ? AND region = ? AND server_group = ? ORDER BY rowid",
            (account, region, server_group),
        )

    def update_instance(self, instance_id: str, change: Callable[[Instance], Instance]) -> Instance:
        """Read, change and write back one instance atomically (health, restarts); returns the new one."""
        with self.transaction() as db:
            row = db.execute("SELECT account, region FROM instances WHERE id = ?", (instance_id,)).fetchone()
            if row is None:
                raise NotFound(f"instance {instance_id} not found in {self.path}")
            instance = change(self.get_instance(instance_id))
            if instance.id != instance_id:
                raise InvalidRequest(f"a change to instance {instance_id} may not change its id")
            self.put_instance(instance, account=row[0], region=row[1])
            return instance

    def delete_instance(self, instance_id: str) -> bool:
        """Forget an instance; False if there was none."""
        return self._delete("instances", "id = ?", (instance_id,))


def _held_name(db: sqlite3.Connection, account: str, region: str, cluster: str, holder: str) -> str | None:
    row = db.execute(
        "SELECT name FROM names WHERE account = ? AND region = ? AND cluster = ? AND reserved_by = ? AND released = 0",
        (account, region, cluster, holder),
    ).fetchone()
    return None if row is None else str(row[0])


def _next_free_name(db: sqlite3.Connection, account: str, region: str, cluster: str) -> str:
    """The name after the cluster's newest reservation (or newest group), skipping every name in use."""
    where = "account = ? AND region = ? AND cluster = ?"
    params = (account, region, cluster)
    reservations = db.execute(f"SELECT name, released FROM names WHERE {where} ORDER BY seq", params).fetchall()
    groups = [row[0] for row in db.execute(f"SELECT name FROM server_groups WHERE {where} ORDER BY created", params)]
    in_use = {name for name, released in reservations if not released} | set(groups)
    newest = reservations[-1][0] if reservations else (groups[-1] if groups else None)
    return format_server_group_name(cluster, next_sequence(in_use, newest=newest))


__all__ = ["ServerGroupRows"]
