"""Wait in the triggerer until a cluster's lock is free (see :mod:`gennaker.cloud.locks`).

The event says the lock *was* free at a poll; the resumed task takes it (and waits again
if another run was quicker). One event ends the trigger: ``{"status": "free"}`` or
``{"status": "timeout", "message": ...}``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from gennaker.triggers.server_group import _duration, _hold_until


class ClusterLockFreeTrigger(BaseTrigger):
    """Fire when ``resource`` is free, or held by ``owner`` itself, or its lease ran out.

    :param resource: the lock, e.g. ``cluster:local/local/hello-prod``.
    :param owner: the waiting task (``dag/run/task``).
    :param path: empty or None: the shared lock table (:mod:`gennaker.db`); else a private SQLite file's path.
    :param poll_interval: seconds between polls.
    :param timeout: seconds before giving up (status ``timeout``).
    :param not_before: no event before this moment (Airflow 3.3's resume race; see the server-group triggers).
    """

    def __init__(
        self,
        resource: str,
        owner: str,
        path: str | None = None,
        poll_interval: float = 1.0,
        timeout: float = 3600.0,
        not_before: datetime | None = None,
    ) -> None:
        super().__init__()
        self.resource = resource
        self.owner = owner
        self.path = path
        self.poll_interval = float(poll_interval)
        self.timeout = float(timeout)
        self.not_before = not_before

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "resource": self.resource,
                "owner": self.owner,
                "path": self.path,
                "poll_interval": self.poll_interval,
                "timeout": self.timeout,
                "not_before": self.not_before,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from gennaker.cloud.locks import ClusterLocks

        locks = await asyncio.to_thread(ClusterLocks, self.path)
        deadline = time.monotonic() + self.timeout
        said = ""
        while True:
            holder = await asyncio.to_thread(locks.holder, self.resource)
            if holder is None or holder.owner == self.owner:
                await _hold_until(self.not_before)
                self.log.info("%s is free", self.resource)
                yield TriggerEvent({"status": "free", "message": f"{self.resource} is free"})
                return
            text = f"waiting for {self.resource}, held by {holder.describe()}"
            if text != said:
                said = text
                self.log.info("%s", text)
            if time.monotonic() >= deadline:
                message = f"{self.resource} still held by {holder.describe()} after {_duration(self.timeout)}"
                yield TriggerEvent({"status": "timeout", "message": message})
                return
            await asyncio.sleep(self.poll_interval)
