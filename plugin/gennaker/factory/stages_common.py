"""What every stage builder shares: the build context and the cluster, account and duration helpers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gennaker.spec.models import (
    CloudStage,
    ClusterRef,
    Pipeline,
    RollbackStage,
    ServerGroupStage,
    StageBase,
)
from gennaker.spec.semantics import nearest


@dataclass
class StageBuild:
    """What the DAG builder knows when it turns one stage into a task."""

    stage: StageBase
    common: dict[str, Any]  # kwargs every stage operator takes (task_id, gate settings, ...)
    pipeline: Pipeline | None = None  # the stage's pipeline (cluster stages default to its application)
    spec_path: Path | None = None  # the spec file (a canary's configFile is relative to it)


def account_of(s: CloudStage) -> dict[str, Any]:
    """The operator kwargs naming a cloud stage's account: ``account``, ``region``, ``cloud``."""
    return {"account": s.account, "region": s.region, "cloud": s.provider}


def cluster_of(b: StageBuild, s: StageBase, ref: ClusterRef) -> dict[str, Any]:
    """``application``, ``stack``, ``detail`` of ``ref`` (the application defaults to the pipeline's)."""
    application = ref.application or (b.pipeline.application if b.pipeline is not None else None)
    if not application:
        raise ValueError(f"stage {s.id!r}: no application for its cluster (give cluster.application)")
    return {"application": application, "stack": ref.stack, "detail": ref.detail}


def server_group_cluster(b: StageBuild, s: ServerGroupStage | RollbackStage) -> dict[str, Any]:
    """The kwargs of a stage that acts on one server group: its account, cluster and target."""
    return {**account_of(s), **cluster_of(b, s, s.cluster), "target": s.target}


def nearest_upstream(b: StageBuild, types: tuple[str, ...]) -> str | None:
    """The closest stage of one of ``types`` before this one (the semantic checks made it unique)."""
    p = b.pipeline
    if p is None:
        return None
    found = nearest(p.parents(), b.stage.id, lambda s: p.stage(s).type in types)
    return found[0] if found else None


def seconds(value: Any) -> float:
    """A duration as seconds; ``None`` is 0."""
    return float(value.total_seconds()) if value is not None else 0.0
