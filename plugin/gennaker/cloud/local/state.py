"""The local provider's state: one SQLite file that several processes share safely.

Airflow's workers, the triggerer, the API server and the local supervisor all read
and write the same file, ``$GENNAKER_HOME/local/state.db`` (``$GENNAKER_HOME``
defaults to ``$AIRFLOW_HOME/gennaker``, else ``~/airflow/gennaker``). Why it is safe:

- WAL journal: readers never block the writer, nor the writer them;
- every write runs in ``BEGIN IMMEDIATE`` (:meth:`StateStore.transaction`): the write
  lock is taken up front, so a read-then-write (claim a key, allocate a name) cannot
  interleave with another process's, and never fails half way on a lock upgrade;
- a busy timeout: a writer waits for the lock (30 s by default) instead of failing;
  after that it raises :class:`ProviderUnavailable` (retryable);
- one connection per process and thread; a forked child opens its own;
- ``synchronous=FULL``: a committed operation record survives a power cut, since
  idempotency rests on it (the write rate is tiny).

Rows keep a few indexed columns and the model's dict as JSON (``body``). Instances
are rows of their own (the supervisor updates health without rewriting the group);
:meth:`StateStore.get_server_group` joins them back. The ``names`` table reserves
server group names (see :meth:`StateStore.allocate_server_group_name`) and the
``events`` table is the audit log. Events, finished operations and the other logs are
pruned by age and count as part of writing (:mod:`gennaker.cloud.local.retention`).

The store is written in modules of one concern, and this one puts it together:

- :mod:`~gennaker.cloud.local.state_db`: the schema, connections, transactions, snapshots;
- :mod:`~gennaker.cloud.local.state_groups`: server groups, instances, name reservations;
- :mod:`~gennaker.cloud.local.state_resources`: images, load balancers, firewalls;
- :mod:`~gennaker.cloud.local.state_operations`: operations and the audit log.
"""

from __future__ import annotations

from typing import Any

from gennaker.cloud.local.state_db import SCHEMA_VERSION, default_state_path
from gennaker.cloud.local.state_groups import ServerGroupRows
from gennaker.cloud.local.state_operations import OperationRows
from gennaker.cloud.local.state_resources import ResourceRows


class StateStore(ServerGroupRows, ResourceRows, OperationRows):
    """The local provider's images, server groups, instances, load balancers, firewalls, operations, events.

    Every write is one transaction; callers compose several in :meth:`transaction`
    (nested calls join it). Lookups of one resource raise :class:`NotFound`. A store
    pickles as its path, so it can be handed to another process, which opens the file
    itself.
    """

    def __repr__(self) -> str:
        return f"StateStore({str(self.path)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (str(self.path), self.timeout))


def _reopen(path: str, timeout: float) -> StateStore:
    return StateStore(path, timeout=timeout)


__all__ = ["SCHEMA_VERSION", "StateStore", "default_state_path"]
