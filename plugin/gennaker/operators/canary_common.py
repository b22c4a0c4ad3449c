"""What the canary stage's parts share: its tags, failures, settings and plumbing (:class:`CanaryStage`).

The stage is put together in :mod:`gennaker.operators.canary` from :class:`CanaryStage`
and the parts that build on it: the report (:mod:`~gennaker.operators.canary_report`),
the baseline and canary groups (:mod:`~gennaker.operators.canary_groups`) and the
intervals with their judgement (:mod:`~gennaker.operators.canary_judging`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from gennaker.operators.base import CloudStageFailed
from gennaker.operators.delivery import DeliveryOperator
from gennaker.strategies.canary import ROLES

if TYPE_CHECKING:
    from gennaker.canary.sources import MetricSource, Scope
    from gennaker.cloud.model import LoadBalancer
    from gennaker.cloud.provider import IdempotencyKey

ROLE_TAG = "gennaker:canary-role"
OF_TAG = "gennaker:canary-of"
CONTINUE, STOP = "continue", "stop"
LINK_NAME = "Canary report"


class CanaryFailed(CloudStageFailed):
    """The canary scored too low, a person stopped it, or it cannot be judged (the message says which)."""


class CanaryInterrupted(CloudStageFailed):
    """The cleanup task found what a stopped canary had left behind (and destroyed it)."""


def score_words(value: Any) -> str:
    """A score as the log and the report show it (``87.5``, ``0.000123``)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{number:g}" if abs(number) >= 1e-3 or number == 0 else f"{number:.3g}"


class CanaryStage(DeliveryOperator):
    """The canary stage's settings and the plumbing its parts share (metric source, scopes, weights, clock)."""

    def __init__(
        self,
        *,
        canary_config: Mapping[str, Any],
        queries: Mapping[str, str],
        source_stage: str | None = None,
        baseline: str | None = None,
        canary: str | None = None,
        capacity: int = 1,
        traffic_percent: int = 10,
        lifetime: float = 1800.0,
        interval: float = 300.0,
        warmup: float = 0.0,
        lookback: float | None = None,
        baseline_offset: float = 0.0,
        thresholds: Mapping[str, float] | None = None,
        marginal: str = "fail",
        metric_source: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (baseline is None) != (canary is None):
            raise ValueError("give both baseline and canary server groups, or neither")
        if baseline is None and source_stage is None:
            raise ValueError("give a source (deploy) stage, or baseline and canary server groups")
        if marginal not in ("fail", "judge"):
            raise ValueError(f"marginal must be 'fail' or 'judge', not {marginal!r}")
        self.canary_config = dict(canary_config)
        self.queries = dict(queries)
        self.source_stage = source_stage
        self.baseline_name = baseline
        self.canary_name = canary
        self.capacity = int(capacity)
        self.traffic_percent = int(traffic_percent)
        self.lifetime = float(lifetime)
        self.interval = float(interval)
        self.warmup = float(warmup)
        self.lookback = float(lookback) if lookback else None
        self.baseline_offset = float(baseline_offset)
        self.thresholds = {"pass": 75.0, "marginal": 50.0, **dict(thresholds or {})}
        self.marginal_action = marginal
        self.metric_source = dict(metric_source or {"type": "local"})
        self._live: tuple[Any, dict[str, Any]] | None = None

    # ------------------------------------------------------------------ plumbing

    def key(self, context: Any, purpose: str) -> IdempotencyKey:
        """Keys of this try: a retried canary starts over with its own groups and weights."""
        try_number = getattr(context["ti"], "try_number", 1) or 1
        return super().key(context, f"{purpose}@try{try_number}")

    def drive(
        self, context: Any, result: dict[str, Any], event: tuple[str | None, dict[str, Any]] | None = None
    ) -> Any:
        self._live = (context, result)  # for on_kill
        return super().drive(context, result, event)

    def make_source(self) -> MetricSource:
        from gennaker.canary.sources import MetricSourceError, metric_source

        try:
            return metric_source(self.metric_source, self.get_provider)
        except MetricSourceError as error:
            raise CanaryFailed(f"stage {self.stage_id!r}: {error}") from error

    def score_thresholds(self) -> Any:
        from gennaker.canary import ScoreThresholds

        return ScoreThresholds(marginal=float(self.thresholds["marginal"]), pass_score=float(self.thresholds["pass"]))

    def scope(self, name: str, region: str) -> Scope:
        from gennaker.canary.sources import Scope
        from gennaker.cloud.naming import parse_server_group_name

        names = parse_server_group_name(name)
        return Scope(
            server_group=name, cluster=names.cluster, application=names.app, account=self.account, region=region
        )

    def find_load_balancers(self, names: Sequence[str], region: str) -> list[LoadBalancer]:
        with self.cloud_call("list the load balancers"):
            found = self.get_provider().list_load_balancers(application=None, region=region)
        return [lb for lb in found if lb.name in names]

    def weigh(self, context: Any, result: Mapping[str, Any], weights: Mapping[str, int], purpose: str) -> list[Any]:
        """Give the canary's load balancers ``weights`` for baseline and canary (empty: take theirs away)."""
        ours = {result.get(role) for role in ROLES} - {None}
        ops = []
        for lb in self.find_load_balancers(result.get("loadBalancers") or [], result["region"]):
            new = {k: v for k, v in lb.weights.items() if k not in ours} | dict(weights)
            if new == lb.weights:
                continue
            with self.cloud_call(f"set the weights of load balancer {lb.name}"):
                ops.append(
                    self.get_provider().upsert_load_balancer(
                        lb.replace(weights=new), self.key(context, f"{purpose}-{lb.name}")
                    )
                )
        return ops

    def _image_words(self, image_id: str, region: str) -> str:
        try:
            image = self.get_provider().get_image(image_id, region=region)
        except Exception:
            return image_id
        return f"{image.package} {image.version} ({image_id})"

    def now(self) -> datetime:
        """The clock of the intervals and the report (the stage's own, so tests can set it)."""
        return datetime.now(timezone.utc)


__all__ = [
    "CONTINUE",
    "LINK_NAME",
    "OF_TAG",
    "ROLES",
    "ROLE_TAG",
    "STOP",
    "CanaryFailed",
    "CanaryInterrupted",
    "CanaryStage",
    "score_words",
]
