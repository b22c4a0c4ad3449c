"""The local provider's load balancers (one HTTP proxy each on 127.0.0.1), firewalls and metrics.

An upsert records the load balancer, makes sure its proxy runs and waits until it listens
on every port; a port another load balancer lists or another program holds is refused
before anything is recorded, and a proxy that cannot start puts back what served before.
Firewalls are recorded; the proxies enforce them. Metrics are the proxies' per-second
buckets, summed (or merged, for latency quantiles) per step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from gennaker.cloud.local import processes
from gennaker.cloud.local import proxy as local_proxy
from gennaker.cloud.local.provider_base import LocalProviderBase
from gennaker.cloud.model import Firewall, LoadBalancer, MetricSeries, Operation, OperationKind, OperationStatus
from gennaker.cloud.provider import IdempotencyKey
from gennaker.errors import CloudError, InvalidRequest, NotFound, ProviderUnavailable

# Series the local metric source offers (per second, from the load balancers' proxies).
LOCAL_METRICS = ("requests", "errors", "error_rate", "latency_mean", "latency_p50", "latency_p90", "latency_p99")

LISTEN_TIMEOUT = 10.0
"""How long an upsert waits for a running proxy to open a new listener."""


class LocalNetwork(LocalProviderBase):
    """Load balancers, firewalls and metrics of :class:`~gennaker.cloud.local.provider.LocalProvider`."""

    def upsert_load_balancer(self, load_balancer: LoadBalancer, key: IdempotencyKey) -> Operation:
        account, region, name = load_balancer.account, load_balancer.region, load_balancer.name
        op = self._claim(
            key, OperationKind.UPSERT_LOAD_BALANCER, load_balancer.to_dict(), lambda: self._check_ports(load_balancer)
        )
        if op.done:
            return op
        try:
            previous: LoadBalancer | None = self.store.get_load_balancer(account, region, name)
        except NotFound:
            previous = None
        self.store.put_load_balancer(load_balancer)
        ports = [listener.port for listener in load_balancer.listeners]
        try:
            local_proxy.ensure_running(self.store, self.home, account, region, name)
            self._wait_listening(ports, name)
        except CloudError as error:
            # Put back what served before, so a failed change leaves the load balancer as it was.
            if previous is not None:
                self.store.put_load_balancer(previous)
            else:
                self.store.delete_load_balancer(account, region, name)
            if error.retryable:
                raise
            self._finish(op, OperationStatus.FAILED, f"{name}: {error}")
            raise
        shown = ", ".join(str(port) for port in ports) or "no port"
        return self._finish(op, OperationStatus.SUCCEEDED, f"{name} listens on 127.0.0.1:{shown}")

    def list_load_balancers(self, *, application: str | None = None, region: str | None = None) -> list[LoadBalancer]:
        return self.store.list_load_balancers(
            account=self.account, region=region or self.region, application=application
        )

    def delete_load_balancer(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        region = region or self.region

        def check() -> None:
            try:
                lb = self.store.get_load_balancer(self.account, region, name)
            except NotFound:
                return  # already gone: the operation succeeds
            serving = [
                g.name
                for g in self.store.list_server_groups(account=self.account, region=region)
                if g.enabled and local_proxy.serves(lb, g)
            ]
            if serving:
                raise InvalidRequest(
                    f"{name} still serves {', '.join(serving)}",
                    hint="disable or destroy them first, or take them off the load balancer",
                )

        op = self._claim(key, OperationKind.DELETE_LOAD_BALANCER, {"name": name, "region": region}, check)
        if op.done:
            return op
        if not self.store.delete_load_balancer(self.account, region, name):
            return self._finish(op, OperationStatus.SUCCEEDED, f"{name} is already gone")
        # The proxy exits by itself within a refresh; stopping it here frees its ports at once.
        local_proxy.stop(self.store, self.home, self.account, region, name, timeout=10.0)
        local_proxy.forget_metrics(self.store, self.account, region, name)  # after the proxy's last flush
        return self._finish(op, OperationStatus.SUCCEEDED, f"deleted {name}")

    def upsert_firewall(self, firewall: Firewall, key: IdempotencyKey) -> Operation:
        op = self._claim(key, OperationKind.UPSERT_FIREWALL, firewall.to_dict())
        if op.done:
            return op
        self.store.put_firewall(firewall)
        return self._finish(op, OperationStatus.SUCCEEDED, f"{firewall.name}: {len(firewall.rules)} rule(s)")

    def list_firewalls(self, *, application: str | None = None, region: str | None = None) -> list[Firewall]:
        return self.store.list_firewalls(account=self.account, region=region or self.region, application=application)

    def delete_firewall(self, name: str, key: IdempotencyKey, *, region: str | None = None) -> Operation:
        region = region or self.region

        def check() -> None:
            users = [
                g.name
                for g in self.store.list_server_groups(account=self.account, region=region)
                if name in g.firewalls
            ]
            if users:
                raise InvalidRequest(f"{name} is used by {', '.join(users)}", hint="remove it from them first")

        op = self._claim(key, OperationKind.DELETE_FIREWALL, {"name": name, "region": region}, check)
        if op.done:
            return op
        self.store.delete_firewall(self.account, region, name)
        return self._finish(op, OperationStatus.SUCCEEDED, f"deleted {name}")

    def _check_ports(self, load_balancer: LoadBalancer) -> None:
        """Refuse listener ports that another load balancer has or another program holds."""
        account, region, name = load_balancer.account, load_balancer.region, load_balancer.name
        ports = [listener.port for listener in load_balancer.listeners]
        doubled = sorted({port for port in ports if ports.count(port) > 1})
        if doubled:
            raise InvalidRequest(f"load balancer {name} lists port(s) {doubled} more than once")
        for other in self.store.list_load_balancers():
            if (other.account, other.region, other.name) == (account, region, name):
                continue
            shared = sorted({listener.port for listener in other.listeners} & set(ports))
            if shared:
                raise InvalidRequest(
                    f"port(s) {shared} of load balancer {name} are listeners of load balancer {other.name}",
                    hint="every local load balancer needs ports of its own on 127.0.0.1; choose another port",
                )
        held: set[int] = set()  # ports this load balancer's own running proxy listens on
        if local_proxy.running_pid(self.home, account, region, name) is not None:
            try:
                held = {listener.port for listener in self.store.get_load_balancer(account, region, name).listeners}
            except NotFound:
                held = set()
        for port in ports:
            if port not in held and not processes.port_free(port):
                raise local_proxy.ListenerPortInUse(port)

    def _wait_listening(self, ports: Sequence[int], name: str) -> None:
        """Wait until every port accepts connections (a running proxy opens new listeners within a refresh)."""
        deadline = time.monotonic() + LISTEN_TIMEOUT
        waiting = list(ports)
        while waiting:
            waiting = [port for port in waiting if not processes.listening(port)]
            if not waiting:
                return
            if time.monotonic() > deadline:
                raise ProviderUnavailable(
                    f"load balancer {name} is not listening on 127.0.0.1 port(s) {waiting} after {LISTEN_TIMEOUT:g}s",
                    hint=f"see {local_proxy.log_file(self.home, name)}",
                )
            time.sleep(0.05)

    def metrics(
        self,
        server_group: str,
        names: Sequence[str],
        start: datetime,
        end: datetime,
        step: timedelta,
        *,
        region: str | None = None,
    ) -> dict[str, MetricSeries]:
        unknown = [n for n in names if n not in LOCAL_METRICS]
        if unknown:
            raise InvalidRequest(f"unknown local metric(s) {unknown}; the local source has {list(LOCAL_METRICS)}")
        buckets = local_proxy.read_metrics(self.store, self.account, region or self.region, server_group, start, end)
        seconds = max(step.total_seconds(), 1.0)  # the proxies record whole seconds
        count = max(math.ceil((end - start).total_seconds() / seconds), 0)  # [start, end): a last partial step too
        slots: list[list[Any]] = [[] for _ in range(count)]
        for bucket in buckets:
            i = int((bucket.ts - start.timestamp()) // seconds)
            if 0 <= i < count:
                slots[i].append(bucket)
        return {
            name: MetricSeries(
                name=name,
                server_group=server_group,
                start=start,
                step_seconds=seconds,
                values=tuple(_aggregate(name, slot) for slot in slots),
            )
            for name in names
        }

    def load_balancer_address(self, load_balancer: LoadBalancer) -> str | None:
        """``http://127.0.0.1:<port>`` of its first HTTP(S) listener (else its first listener); None without one."""
        listeners = load_balancer.listeners
        http = [x for x in listeners if x.protocol in ("HTTP", "HTTPS")] or list(listeners)
        return f"http://{local_proxy.HOST}:{http[0].port}" if http else None


def _aggregate(name: str, buckets: Sequence[Any]) -> float | None:
    requests = sum(b.requests for b in buckets)
    if name == "requests":
        return float(requests)
    if name == "errors":
        return float(sum(b.errors for b in buckets))
    if not requests:
        return None
    if name == "error_rate":
        return sum(b.errors for b in buckets) / requests
    if name == "latency_mean":
        return sum(b.latency_sum_ms for b in buckets) / requests
    quantile = {"latency_p50": 0.5, "latency_p90": 0.9, "latency_p99": 0.99}[name]
    merged = [sum(col) for col in zip(*(b.histogram for b in buckets), strict=False)]
    return local_proxy.histogram_quantile(merged, quantile, max(b.latency_max_ms for b in buckets))


__all__ = ["LISTEN_TIMEOUT", "LOCAL_METRICS", "LocalNetwork"]
