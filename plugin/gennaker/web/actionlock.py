"""The Clusters page's actions take the cluster lock that the deploy, promote and rollback stages take.

An action on a server group or a cluster takes the cluster's lock
(:mod:`gennaker.cloud.locks`, ``cluster:<account>/<region>/<cluster>``) before its first
cloud call and keeps it until the action ends, its background follow-up included: a
click never interleaves with a pipeline's deploy. Its owner is ``ui:<action id>:<user>``
(no DAG id contains ``:``, so it cannot be taken for a task's ``dag/run/task``).

When someone else holds the lock the action is refused (HTTP 409, :class:`ClusterLocked`)
and the answer names the holder: the pipeline run and task with a link to the run in the
Airflow UI, or the other action and its user. The lease bounds how long a worker that
died mid-action keeps the cluster locked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from gennaker.cloud.locks import ClusterLocks, Holder, cluster_resource
from gennaker.errors import ClusterLocked
from gennaker.web.links import run_page_url

log = logging.getLogger(__name__)

UI_OWNER_PREFIX = "ui:"
MAX_OWNER_USER = 100
"""User names longer than this are cut in the lock owner (it is shown to whoever waits for it)."""


def ui_owner(action_id: str, user: str) -> str:
    """The lock owner of a Clusters page action."""
    return f"{UI_OWNER_PREFIX}{action_id}:{user[:MAX_OWNER_USER]}"


@dataclass(frozen=True)
class HolderView:
    """Who holds a cluster's lock, in the words of an HTTP answer."""

    detail: str
    hint: str


def describe(holder: Holder) -> HolderView:
    """The holder as a person reads it: a pipeline's run and task (and a link to the run), or a page action."""
    since = holder.acquired.strftime("%H:%M:%S UTC")
    note = f"{holder.note}, " if holder.note else ""
    if holder.owner.startswith(UI_OWNER_PREFIX):
        action_id, _, user = holder.owner[len(UI_OWNER_PREFIX) :].partition(":")
        return HolderView(
            detail=f"action {action_id} of {user} on the Clusters page ({note}since {since})",
            hint="wait until that action ends (see the audit trail), then try again",
        )
    parts = holder.owner.split("/")
    if len(parts) < 3:
        return HolderView(detail=f"{holder.owner} ({note}since {since})", hint="try again when it ends")
    dag_id, run_id, task_id = parts[0], parts[1], parts[2]
    detail = f"task {task_id} of run {run_id} of pipeline (DAG) {dag_id} ({note}since {since})"
    return HolderView(detail=detail, hint=f"try again when that run's task ends: {run_page_url(dag_id, run_id)}")


class ActionLocks:
    """The cluster locks the actions hold, by action id (one API server worker's share of the lock table)."""

    def __init__(self, locks: Callable[[], ClusterLocks] = ClusterLocks) -> None:
        self._locks = locks
        self._guard = threading.Lock()
        self._held: dict[str, tuple[str, str]] = {}

    def take(
        self, action_id: str, user: str, account: str, region: str, cluster: str, lease: timedelta, note: str
    ) -> None:
        """Take the cluster's lock for the action; :class:`ClusterLocked` naming the holder if it is taken."""
        resource = cluster_resource(account, region, cluster)
        owner = ui_owner(action_id, user)
        holder = self._locks().acquire(resource, owner, note=note, lease=lease)
        if holder is not None:
            view = describe(holder)
            raise ClusterLocked(f"cluster {cluster} is busy: it is locked by {view.detail}", view.hint, holder)
        with self._guard:
            self._held[action_id] = (resource, owner)

    def release(self, action_id: str) -> None:
        """Give back the action's lock, if it holds one (called once the action has ended, however it ended)."""
        with self._guard:
            held = self._held.pop(action_id, None)
        if held is None:
            return
        try:
            self._locks().release(*held)
        except Exception:  # a database that did not answer: the lease frees it; the action's error is the one to report
            log.exception("giving back the lock of %s failed; it expires with its lease", held[0])

    def holds(self, action_id: str) -> bool:
        """Whether the action still holds its cluster's lock."""
        with self._guard:
            return action_id in self._held


__all__ = ["ActionLocks", "ClusterLocked", "HolderView", "describe", "ui_owner"]
