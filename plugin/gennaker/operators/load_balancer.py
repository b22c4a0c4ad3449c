"""``upsertLoadBalancer``: create a cluster's load balancer, or update its listeners.

The load balancer serves the enabled server groups of its clusters (the stage's cluster,
besides any it served already). An update keeps what deploys set on it: the traffic
weights of the server groups and the other clusters it serves. Listening on a port that
another load balancer or program holds fails the stage and changes nothing.

Outputs: ``loadBalancer``, ``clusters``, ``listeners`` (port, protocol), ``address``
(the provider's :meth:`~gennaker.cloud.provider.CloudProvider.load_balancer_address`:
``http://127.0.0.1:<port>`` of the local provider's first HTTP listener, a cloud's DNS
name once it has one), ``created`` (false when it existed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gennaker.errors import NotFound
from gennaker.operators.server_group import CloudStageOperator


class UpsertLoadBalancerOperator(CloudStageOperator):
    """Create or update one load balancer."""

    gennaker_stage_type = "upsertLoadBalancer"
    template_fields: Sequence[str] = ("account", "region", "name")

    def __init__(
        self,
        *,
        application: str,
        cluster: str,
        listeners: Sequence[Mapping[str, Any]],
        name: str | None = None,
        health_check_path: str = "/health",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.application = application
        self.cluster = cluster
        self.listeners = [dict(listener) for listener in listeners]
        self.name = name or cluster
        self.health_check_path = health_check_path

    def run_stage(self, context: Any) -> Any:
        from gennaker.cloud.model import Listener, LoadBalancer

        provider = self.get_provider()
        region = self.region or provider.region
        try:
            with self.cloud_call(f"read load balancer {self.name}"):
                current: LoadBalancer | None = next(
                    (lb for lb in provider.list_load_balancers(region=region) if lb.name == self.name), None
                )
        except NotFound:
            current = None
        listeners = tuple(
            Listener(port=int(x["port"]), protocol=x.get("protocol", "HTTP"), target_port=x.get("target_port"))
            for x in self.listeners
        )
        clusters = tuple(sorted({*(current.clusters if current else ()), self.cluster}))
        wanted = LoadBalancer(
            name=self.name,
            application=self.application,
            account=self.account,
            region=region,
            listeners=listeners,
            clusters=clusters,
            weights=dict(current.weights) if current else {},
            health_check={"path": self.health_check_path},
        )
        if current is not None and _same(current, wanted):
            self.log.info("load balancer %s is as asked already (%s)", self.name, _ports(listeners))
            op = None
        else:
            with self.cloud_call(f"{'update' if current else 'create'} load balancer {self.name}"):
                op = provider.upsert_load_balancer(wanted, self.key(context, f"upsert-{self.name}"))
            self.log.info(
                "%s load balancer %s for cluster(s) %s: %s",
                "updated" if current else "created",
                self.name,
                ", ".join(clusters),
                op.message or _ports(listeners),
            )
        result = {
            "loadBalancer": self.name,
            "clusters": list(clusters),
            "listeners": [{"port": x.port, "protocol": x.protocol} for x in listeners],
            # The asked-for listeners with the name the cloud gave it (if any): the address after this change.
            "address": provider.load_balancer_address(wanted.replace(dns_name=current.dns_name) if current else wanted),
            "created": current is None,
        }
        if op is not None:
            self.wait_operations(context, [op], region, method_name="upserted", kwargs={"result": result})
        return result

    def upserted(self, context: Any, event: Any = None, result: dict[str, Any] | None = None) -> Any:
        result = self.pending(context, result)
        self.check_event(event, f"load balancer {result.get('loadBalancer')} did not finish its change")
        return result


def _same(current: Any, wanted: Any) -> bool:
    keys = ("listeners", "clusters", "health_check", "application")
    return all(getattr(current, k) == getattr(wanted, k) for k in keys)


def _ports(listeners: Sequence[Any]) -> str:
    return ", ".join(f"{x.protocol} {x.port}" for x in listeners)


__all__ = ["UpsertLoadBalancerOperator"]
