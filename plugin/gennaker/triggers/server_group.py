"""Wait in the triggerer for a server group to be healthy, or for cloud operations to end.

Both triggers poll the account's :class:`~gennaker.cloud.provider.CloudProvider`; its
calls block (SQLite, HTTP), so each runs in a thread (``asyncio.to_thread``) and the
triggerer's event loop keeps serving every other trigger. Each change is logged in plain
words ("hello-prod-v004: 2/3 instances healthy (1 starting)"); the task's log shows them.

One event ends each trigger, a dict with ``status`` and ``message``:

- :class:`ServerGroupHealthyTrigger`: ``healthy`` | ``timeout`` | ``error``, with ``up``
  (instances Up), ``total`` (the desired capacity), ``needed`` (Up instances that count as
  healthy) and ``server_group``;
- :class:`ServerGroupOperationTrigger`: ``succeeded`` | ``failed`` | ``timeout`` | ``error``,
  with ``operations`` (id, status, message, result of each).

``not_before`` holds an event back until that moment. Airflow 3.3 fails a deferred task
that resumes before the scheduler has read the executor's report of the try that deferred
(a "state mismatch", up to ``[workers] min_heartbeat_interval`` after the deferral), so the
operators set it a little past that.

:data:`provider_factory` builds the provider from the connection id and region; tests
replace it with a fake.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from gennaker.errors import CloudError, ProviderUnavailable

if TYPE_CHECKING:
    from gennaker.cloud.model import Instance, Operation
    from gennaker.cloud.provider import CloudProvider

HEALTHY = "healthy"
SUCCEEDED = "succeeded"
FAILED = "failed"
TIMEOUT = "timeout"
ERROR = "error"

DEFAULT_POLL_INTERVAL = 2.0
DEFAULT_TIMEOUT = 600.0  # ten minutes, the spec's HealthCheck.waitTimeout default


def _default_provider(conn_id: str, region: str | None) -> CloudProvider:
    from gennaker.hooks.cluster import provider_for

    return provider_for(conn_id, region)


provider_factory: Callable[[str, str | None], CloudProvider] = _default_provider
"""(connection id, region) -> provider; replaced in tests."""


# --------------------------------------------------------------------------- health, in words


@dataclass(frozen=True)
class Health:
    """A server group's health at one poll, and how to say it."""

    server_group: str
    up: int
    desired: int
    percent: int = 100
    states: dict[str, int] = field(default_factory=dict)
    """Instances not Up, by health state (``Starting``: 1)."""
    reason: str = ""
    """Why one instance is Down, if one is."""
    pending: str = ""
    """An operation that has not ended yet, in words."""

    @property
    def needed(self) -> int:
        """Up instances that count as healthy: ``ceil(desired * percent / 100)``."""
        return math.ceil(self.desired * self.percent / 100)

    @property
    def healthy(self) -> bool:
        return self.up >= self.needed and not self.pending

    @property
    def message(self) -> str:
        text = f"{self.server_group}: {self.up}/{self.desired} instances healthy"
        others = [f"{n} {state.lower()}" for state, n in sorted(self.states.items()) if n]
        if others:
            text += f" ({', '.join(others)})"
        if self.percent < 100:
            text += f"; {self.needed} needed ({self.percent}%)"
        if self.reason:
            text += f"; {self.reason}"
        if self.pending:
            text += f"; {self.pending}"
        return text

    def payload(self, status: str, message: str | None = None) -> dict[str, Any]:
        return {
            "status": status,
            "server_group": self.server_group,
            "up": self.up,
            "total": self.desired,
            "needed": self.needed,
            "message": message or self.message,
        }


def measure_health(
    server_group: str,
    instances: Sequence[Instance],
    desired: int,
    percent: int = 100,
    operation: Operation | None = None,
) -> Health:
    """How healthy a server group is, from its instances (and an operation that must end first)."""
    from gennaker.cloud.model import Health as State

    up = sum(1 for i in instances if i.health is State.UP)
    states: dict[str, int] = {}
    reason = ""
    for instance in instances:
        if instance.health is State.UP:
            continue
        states[str(instance.health)] = states.get(str(instance.health), 0) + 1
        if instance.health is State.DOWN and not reason:
            reason = f"{instance.id} is down" + (f": {instance.health_reason}" if instance.health_reason else "")
    pending = ""
    if operation is not None and not operation.done:
        pending = f"{operation.kind} still running" + (f" ({operation.message})" if operation.message else "")
    return Health(server_group, up, desired, percent, states, reason, pending)


def _now() -> datetime:
    return datetime.now(timezone.utc)


async def _hold_until(moment: datetime | None) -> None:
    if moment is not None:
        delay = (moment - _now()).total_seconds()
        if delay > 0:
            await asyncio.sleep(delay)


async def _open(conn_id: str, region: str | None) -> CloudProvider:
    return await asyncio.to_thread(provider_factory, conn_id, region)


def _close(provider: CloudProvider | None) -> None:
    if provider is not None:
        try:
            provider.close()
        except Exception:
            pass  # best effort


# --------------------------------------------------------------------------- healthy


class ServerGroupHealthyTrigger(BaseTrigger):
    """Fire when enough of a server group's instances are Up (and the given operations have ended).

    :param conn_id: the account (Airflow connection id).
    :param region: the server group's region (None: the account's).
    :param server_group: its name, e.g. ``hello-prod-v004``.
    :param target_healthy_percentage: percent of ``desired`` that must be Up (rounded up).
    :param desired: the capacity to measure against; None reads it from the group at each poll.
    :param poll_interval: seconds between polls.
    :param timeout: seconds before giving up (status ``timeout``).
    :param operation_ids: operations (a resize, the enable) that must also have ended; a FAILED one is
        an ``error``.
    :param not_before: no event before this moment (see the module's docstring).
    """

    def __init__(
        self,
        conn_id: str,
        region: str | None,
        server_group: str,
        target_healthy_percentage: int = 100,
        desired: int | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        operation_ids: Sequence[str] = (),
        not_before: datetime | None = None,
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.region = region
        self.server_group = server_group
        self.target_healthy_percentage = int(target_healthy_percentage)
        self.desired = desired
        self.poll_interval = float(poll_interval)
        self.timeout = float(timeout)
        self.operation_ids = list(operation_ids)
        self.not_before = not_before

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "region": self.region,
                "server_group": self.server_group,
                "target_healthy_percentage": self.target_healthy_percentage,
                "desired": self.desired,
                "poll_interval": self.poll_interval,
                "timeout": self.timeout,
                "operation_ids": list(self.operation_ids),
                "not_before": self.not_before,
            },
        )

    def _measure(self, provider: CloudProvider) -> Health:
        instances = provider.instances(self.server_group, region=self.region)
        desired = self.desired
        if desired is None:
            desired = provider.get_server_group(self.server_group, region=self.region).capacity.desired
        operations = [provider.poll(op_id) for op_id in self.operation_ids]  # OperationFailed if one failed
        pending = next((op for op in operations if not op.done), None)
        return measure_health(self.server_group, instances, desired, self.target_healthy_percentage, pending)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = time.monotonic() + self.timeout
        want = f"{self.target_healthy_percentage}% of " if self.target_healthy_percentage < 100 else ""
        self.log.info("waiting for %s to be healthy (%sits instances Up)", self.server_group, want)
        provider: CloudProvider | None = None
        last: Health | None = None
        said = ""
        try:
            provider = await _open(self.conn_id, self.region)
            while True:
                try:
                    health = await asyncio.to_thread(self._measure, provider)
                except ProviderUnavailable as error:
                    text = f"{self.server_group}: the cloud did not answer ({error}); trying again"
                    if text != said:
                        said = text
                        self.log.warning("%s", text)
                else:
                    last = health
                    if health.message != said:
                        said = health.message
                        self.log.info("%s", said)
                    if health.healthy:
                        await _hold_until(self.not_before)
                        self.log.info("%s is healthy", self.server_group)
                        yield TriggerEvent(health.payload(HEALTHY))
                        return
                if time.monotonic() >= deadline:
                    minutes = _duration(self.timeout)
                    now = last.message if last else f"{self.server_group}: no answer from the cloud"
                    message = f"{self.server_group} was not healthy after {minutes}: {now}"
                    self.log.warning("%s", message)
                    payload = (
                        last.payload(TIMEOUT, message)
                        if last
                        else _empty_health(self.server_group, TIMEOUT, message, self.target_healthy_percentage)
                    )
                    yield TriggerEvent(payload)
                    return
                await asyncio.sleep(self.poll_interval)
        except CloudError as error:
            message = f"{self.server_group}: {error}"
            self.log.error("%s", message)
            yield TriggerEvent(_empty_health(self.server_group, ERROR, message, self.target_healthy_percentage, last))
        except Exception as error:
            self.log.exception("%s: checking health failed", self.server_group)
            message = f"{self.server_group}: checking health failed: {type(error).__name__}: {error}"
            yield TriggerEvent(_empty_health(self.server_group, ERROR, message, self.target_healthy_percentage, last))
        finally:
            _close(provider)


def _empty_health(name: str, status: str, message: str, percent: int, last: Health | None = None) -> dict[str, Any]:
    if last is not None:
        return last.payload(status, message)
    return {"status": status, "server_group": name, "up": 0, "total": 0, "needed": 0, "message": message}


def _duration(seconds: float) -> str:
    if seconds >= 120 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


# --------------------------------------------------------------------------- operations


class ServerGroupOperationTrigger(BaseTrigger):
    """Fire when every given operation (a disable that drains, a destroy) has ended.

    :param conn_id: the account (Airflow connection id).
    :param region: the region the operations run in (None: the account's).
    :param operation_ids: the operations to wait for.
    :param poll_interval: seconds between polls.
    :param timeout: seconds before giving up (status ``timeout``).
    :param not_before: no event before this moment (see the module's docstring).
    """

    def __init__(
        self,
        conn_id: str,
        region: str | None,
        operation_ids: Sequence[str],
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        not_before: datetime | None = None,
    ) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.region = region
        self.operation_ids = list(operation_ids)
        self.poll_interval = float(poll_interval)
        self.timeout = float(timeout)
        self.not_before = not_before

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "region": self.region,
                "operation_ids": list(self.operation_ids),
                "poll_interval": self.poll_interval,
                "timeout": self.timeout,
                "not_before": self.not_before,
            },
        )

    def _check(self, provider: CloudProvider) -> list[Operation]:
        return [provider.operation(op_id) for op_id in self.operation_ids]

    async def run(self) -> AsyncIterator[TriggerEvent]:
        deadline = time.monotonic() + self.timeout
        provider: CloudProvider | None = None
        said = ""
        try:
            provider = await _open(self.conn_id, self.region)
            while True:
                try:
                    ops = await asyncio.to_thread(self._check, provider)
                except ProviderUnavailable as error:
                    text = f"the cloud did not answer ({error}); trying again"
                    if text != said:
                        said = text
                        self.log.warning("%s", text)
                    ops = []
                if ops:
                    text = "; ".join(_op_words(op) for op in ops)
                    if text != said:
                        said = text
                        self.log.info("%s", text)
                    if all(op.done for op in ops):
                        await _hold_until(self.not_before)
                        failed = [op for op in ops if not op.succeeded]
                        status = FAILED if failed else SUCCEEDED
                        message = "; ".join(_op_words(op) for op in (failed or ops))
                        yield TriggerEvent(_op_payload(status, message, ops))
                        return
                if time.monotonic() >= deadline:
                    message = f"still running after {_duration(self.timeout)}: {said or 'no answer from the cloud'}"
                    self.log.warning("%s", message)
                    yield TriggerEvent(_op_payload(TIMEOUT, message, ops))
                    return
                await asyncio.sleep(self.poll_interval)
        except Exception as error:
            if not isinstance(error, CloudError):
                self.log.exception("checking operations %s failed", ", ".join(self.operation_ids))
            message = f"checking operations failed: {error}"
            yield TriggerEvent(_op_payload(ERROR, message, []))
        finally:
            _close(provider)


def _op_words(op: Operation) -> str:
    state = {"RUNNING": "running", "SUCCEEDED": "done", "FAILED": "failed"}[str(op.status)]
    return f"{op.kind} {state}" + (f": {op.message}" if op.message else "")


def _op_payload(status: str, message: str, ops: Sequence[Operation]) -> dict[str, Any]:
    return {
        "status": status,
        "message": message,
        "operations": [
            {"id": op.id, "status": str(op.status), "message": op.message, "result": dict(op.result)} for op in ops
        ],
    }
