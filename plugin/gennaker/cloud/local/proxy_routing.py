"""Where a local load balancer sends a request: its routing table, built from one read of the state store.

It serves the **Up** instances of the **enabled** server groups in the load balancer's account and region
that name it in ``ServerGroup.load_balancers`` or belong to one of ``LoadBalancer.clusters``.

- **weights**: ``LoadBalancer.weights`` maps a server group to an integer share out of 100 (a canary takes
  e.g. 10); groups without an entry share what is left of 100 equally; when every serving group has an entry
  the weights are relative. Only groups with an Up instance take part. A weight of 0 takes no traffic while a
  group with a positive weight can serve; if none can, the rest share equally (better than a 503). A group is
  picked by smooth weighted round robin (nginx's: exact shares, evenly spread; the rotation survives a rebuilt
  table), then one of its Up instances round robin;
- an Up instance whose recorded process has ended (:func:`ended_processes`) gets nothing, even while its row
  says Up, until its supervisor reports it Up again;
- **firewalls**: a server group's own firewalls decide which clients may reach its instances: a group admits a
  client on a listener port when a ``tcp``/``all`` CIDR rule of one of its firewalls covers the client's
  address and that port. A group naming no firewall admits everyone. ``source_firewall`` rules never match a
  client address, and a named firewall that does not exist admits nobody.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gennaker.cloud.local.instance_processes import process_ended
from gennaker.cloud.local.state import StateStore
from gennaker.cloud.local.supervisor_options import SupervisorPaths
from gennaker.cloud.model import Firewall, Health, Instance, LoadBalancer, ServerGroup
from gennaker.cloud.naming import parse_server_group_name
from gennaker.errors import InvalidRequest

_Rule = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int, int]


@dataclass
class _Backend:
    """A serving server group with at least one Up instance."""

    group: str
    weight: float
    instances: tuple[Instance, ...]
    turn: Iterator[int]


class RoutingTable:
    """Where one load balancer sends requests, built from one read of the store. Thread-safe."""

    def __init__(
        self,
        lb: LoadBalancer,
        groups: Sequence[ServerGroup],
        firewalls: Mapping[str, Firewall],
        previous: RoutingTable | None = None,
        *,
        ended: frozenset[str] = frozenset(),
    ) -> None:
        """``previous``: the table this one replaces; its rotation state carries over, so shares stay
        exact even when the table is rebuilt more often than a low request rate goes round.
        ``ended``: instances whose process is gone, whatever their rows say (not sent anything).
        """
        self.lb = lb
        self.ended = ended
        self.serving = tuple(g for g in groups if g.enabled and serves(lb, g))
        up = {
            g.name: tuple(i for i in g.instances if i.health is Health.UP and i.id not in ended) for g in self.serving
        }
        available = [g.name for g in self.serving if up[g.name]]
        weights = share_weights(lb.weights, available)
        before = {b.group: b for b in previous.backends} if previous is not None else {}
        self.backends: tuple[_Backend, ...] = tuple(
            _Backend(n, weights[n], up[n], itertools.count(next(before[n].turn)) if n in before else itertools.count())
            for n in available
        )
        self.missing_firewalls: set[str] = set()
        self._policies: dict[str, tuple[_Rule, ...] | None] = {}
        for group in self.serving:
            self._policies[group.name] = self._policy(group, firewalls)
        self._open = all(policy is None for policy in self._policies.values())
        self._lock = threading.Lock()
        carried = {b.group: previous._current.get(b.group, 0.0) if previous else 0.0 for b in self.backends}
        mean = sum(carried.values()) / len(carried) if carried else 0.0
        self._current: dict[str, float] = {
            name: value - mean for name, value in carried.items()
        }  # smooth WRR wants sum 0
        self._firewalls = {name: firewalls[name] for g in self.serving for name in g.firewalls if name in firewalls}
        self._admitted: dict[tuple[str, int], frozenset[str]] = {}

    def _policy(self, group: ServerGroup, firewalls: Mapping[str, Firewall]) -> tuple[_Rule, ...] | None:
        if not group.firewalls:
            return None
        rules: list[_Rule] = []
        for name in group.firewalls:
            firewall = firewalls.get(name)
            if firewall is None:
                self.missing_firewalls.add(name)
                continue
            for rule in firewall.rules:
                if rule.cidr is not None and rule.protocol in ("tcp", "all"):
                    rules.append((ipaddress.ip_network(rule.cidr, strict=False), rule.port_from, rule.port_to))
        return tuple(rules)

    def admitted(self, address: str, port: int) -> frozenset[str] | None:
        """The serving groups whose firewalls let ``address`` in on ``port``; None: every group (no firewalls)."""
        if self._open:
            return None
        key = (address, port)
        cached = self._admitted.get(key)
        if cached is not None:
            return cached
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            ip = None
        names = frozenset(
            name
            for name, policy in self._policies.items()
            if policy is None
            or (
                ip is not None
                and any(ip.version == net.version and ip in net and lo <= port <= hi for net, lo, hi in policy)
            )
        )
        if len(self._admitted) > 4096:
            self._admitted.clear()
        self._admitted[key] = names
        return names

    def choose(
        self, admitted: frozenset[str] | None, exclude: set[str], avoid: frozenset[str]
    ) -> tuple[str, Instance] | None:
        """A server group by weight, then one of its Up instances round robin; None if nothing is left.

        ``exclude``: instance ids tried already; ``avoid``: instances recently failing,
        chosen only when nothing else is left.
        """
        for skip in (exclude | avoid, exclude) if avoid else (exclude,):
            candidates = [
                b
                for b in self.backends
                if (admitted is None or b.group in admitted) and any(i.id not in skip for i in b.instances)
            ]
            if not candidates:
                continue
            backend = self._pick(candidates)
            count = len(backend.instances)
            start = next(backend.turn)
            for step in range(count):
                instance = backend.instances[(start + step) % count]
                if instance.id not in skip:
                    return backend.group, instance
        return None

    def _pick(self, candidates: list[_Backend]) -> _Backend:
        """Smooth weighted round robin among ``candidates``."""
        if len(candidates) == 1:
            return candidates[0]
        positive = [b for b in candidates if b.weight > 0]
        weights = {b.group: b.weight for b in positive} if positive else {b.group: 1.0 for b in candidates}
        with self._lock:
            total = 0.0
            best: _Backend | None = None
            for backend in positive or candidates:
                weight = weights[backend.group]
                self._current[backend.group] += weight
                total += weight
                if best is None or self._current[backend.group] > self._current[best.group]:
                    best = backend
            assert best is not None
            self._current[best.group] -= total
            return best

    def describe(self) -> str:
        """One line for the log: who serves, with which weight and how many Up instances."""
        if not self.serving:
            return "no enabled server group serves it"
        parts = []
        by_name = {b.group: b for b in self.backends}
        for group in self.serving:
            backend = by_name.get(group.name)
            share = f"weight {backend.weight:g}, " if backend is not None else ""
            up = len(backend.instances) if backend is not None else 0
            firewalls = f", firewalls {','.join(group.firewalls)}" if group.firewalls else ""
            parts.append(f"{group.name} ({share}{up}/{len(group.instances)} up{firewalls})")
        text = "serving " + ", ".join(parts)
        for name, firewall in sorted(self._firewalls.items()):
            rules = [
                f"{r.protocol} {r.cidr or 'members of ' + str(r.source_firewall)} ports {r.port_from}-{r.port_to}"
                for r in firewall.rules
            ]
            text += f"; firewall {name} admits {', '.join(rules) or 'nobody'}"
        if self.missing_firewalls:
            text += f"; missing firewalls (admit nobody): {', '.join(sorted(self.missing_firewalls))}"
        if self.ended:
            text += f"; not sending to {', '.join(sorted(self.ended))}: their processes have ended"
        return text


def serves(lb: LoadBalancer, group: ServerGroup) -> bool:
    """The group names the load balancer, or belongs to one of its clusters (same account and region)."""
    return (
        group.account == lb.account
        and group.region == lb.region
        and (lb.name in group.load_balancers or group.cluster in lb.clusters)
    )


def share_weights(weights: Mapping[str, int], groups: Sequence[str]) -> dict[str, float]:
    """Each group's share: its weight, or an equal part of what the weighted ones leave of 100.

    When every group has a weight, weights are relative. If all come to 0, all share equally.
    """
    explicit = {name: float(weights[name]) for name in groups if name in weights}
    rest = [name for name in groups if name not in weights]
    shares = dict(explicit)
    if rest:
        left = max(0.0, 100.0 - sum(explicit.values())) / len(rest)
        shares.update(dict.fromkeys(rest, left))
    if groups and sum(shares.values()) <= 0:
        return dict.fromkeys(groups, 1.0)
    return shares


RawRows = tuple[str, tuple[Any, ...], tuple[Any, ...], tuple[Any, ...]]


def read_rows(store: StateStore, account: str, region: str, name: str) -> RawRows | None:
    """The rows the routing table is built from, in one snapshot; None if the load balancer is gone."""
    with store.snapshot() as db:
        lb = db.execute(
            "SELECT body FROM load_balancers WHERE account = ? AND region = ? AND name = ?", (account, region, name)
        ).fetchone()
        if lb is None:
            return None
        groups = db.execute(
            "SELECT body FROM server_groups WHERE account = ? AND region = ? ORDER BY created, rowid",
            (account, region),
        ).fetchall()
        instances = db.execute(
            "SELECT server_group, body FROM instances WHERE account = ? AND region = ? ORDER BY rowid",
            (account, region),
        ).fetchall()
        firewalls = db.execute(
            "SELECT name, region, body FROM firewalls WHERE account = ? AND region IN (?, 'global') "
            "ORDER BY name, region = 'global'",
            (account, region),
        ).fetchall()
    return lb[0], tuple(groups), tuple(instances), tuple(firewalls)


ParsedRows = tuple[LoadBalancer, list[ServerGroup], dict[str, Firewall]]


def _build_table(raw: RawRows, previous: RoutingTable | None = None) -> RoutingTable:
    return RoutingTable(*parse_rows(raw), previous)


def parse_rows(raw: RawRows) -> ParsedRows:
    """The load balancer, the server groups attached to it (with their instances) and the firewalls."""
    lb = LoadBalancer.from_dict(json.loads(raw[0]))
    bodies = [json.loads(row[0]) for row in raw[1]]
    attached = [
        body
        for body in bodies
        if lb.name in body.get("load_balancers", ()) or parse_server_group_name(body["name"]).cluster in lb.clusters
    ]
    wanted = {body["name"] for body in attached}
    instances: dict[str, list[Any]] = {}
    for group_name, body in raw[2]:
        if group_name in wanted:
            instances.setdefault(group_name, []).append(json.loads(body))
    groups = [ServerGroup.from_dict({**body, "instances": instances.get(body["name"], [])}) for body in attached]
    firewalls: dict[str, Firewall] = {}
    for fw_name, _region, body in raw[3]:
        firewalls.setdefault(fw_name, Firewall.from_dict(json.loads(body)))  # the region's own before 'global'
    return lb, groups, firewalls


def ended_processes(home: Path, lb: LoadBalancer, groups: Sequence[ServerGroup]) -> frozenset[str]:
    """The Up instances of serving groups whose recorded process has ended (the supervisor's records tell)."""
    ended = set()
    for group in groups:
        if not (group.enabled and serves(lb, group)):
            continue
        try:
            paths = SupervisorPaths.of(home, group.account, group.region, group.name)
        except InvalidRequest:
            continue
        for instance in group.instances:
            if instance.health is Health.UP and process_ended(paths, instance.id) is not None:
                ended.add(instance.id)
    return frozenset(ended)


__all__ = [
    "ParsedRows",
    "RawRows",
    "RoutingTable",
    "ended_processes",
    "parse_rows",
    "read_rows",
    "serves",
    "share_weights",
]
