"""Checks that need the whole pipeline: ids, the stage graph, what a stage needs upstream."""

from __future__ import annotations

from collections.abc import Callable

from gennaker.errors import Loc, SpecError
from gennaker.spec.models import (
    CanaryStage,
    DeployStage,
    Pipeline,
    PipelineTrigger,
    PromoteStage,
    RunPipelineStage,
)
from gennaker.spec.validation import did_you_mean
from gennaker.spec.yamlsource import SourceMap


def nearest(parents: dict[str, list[str]], stage_id: str, wanted: Callable[[str], bool]) -> list[str]:
    """The closest stages before ``stage_id`` (fewest dependsOn hops) for which ``wanted`` holds, in id order."""
    seen: set[str] = set()
    level = list(parents.get(stage_id, []))
    while level:
        found = sorted({s for s in level if wanted(s)})
        if found:
            return found
        seen.update(level)
        level = [p for s in level for p in parents.get(s, []) if p not in seen]
    return []


def ancestors(parents: dict[str, list[str]], stage_id: str) -> set[str]:
    """Every stage that must finish before ``stage_id`` (cycle-safe)."""
    seen: set[str] = set()
    stack = list(parents.get(stage_id, []))
    while stack:
        s = stack.pop()
        if s in seen:
            continue
        seen.add(s)
        stack.extend(parents.get(s, []))
    return seen


def find_cycle(parents: dict[str, list[str]]) -> list[str] | None:
    """A dependency cycle as a list of ids (first == last), or None.

    A depth-first walk with its own stack: a long chain of stages must not exhaust
    Python's recursion limit.
    """
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in parents:
        if start in state:
            continue
        state[start] = 1
        path = [start]
        stack = [iter(parents.get(start, []))]
        while stack:
            for p in stack[-1]:
                if p not in parents:
                    continue
                if state.get(p) == 1:
                    return list(reversed([*path[path.index(p) :], p]))
                if p not in state:
                    state[p] = 1
                    path.append(p)
                    stack.append(iter(parents.get(p, [])))
                    break
            else:
                state[path.pop()] = 2
                stack.pop()
    return None


def check(pipeline: Pipeline, positions: SourceMap, known_pipelines: set[str] | None = None) -> list[SpecError]:
    """All in-file semantic errors of a valid pipeline."""
    errors: list[SpecError] = []
    ids: dict[str, int] = {}
    for i, stage in enumerate(pipeline.stages):
        loc: Loc = ("stages", i, "id")
        if stage.id in ids:
            first = positions.find(("stages", ids[stage.id], "id"))
            line = f" (first on line {first.line})" if first else ""
            errors.append(SpecError(f"duplicate stage id {stage.id!r}{line}", positions.find(loc), loc))
        else:
            ids[stage.id] = i
    if errors:
        return errors

    parents = pipeline.parents()
    for i, stage in enumerate(pipeline.stages):
        for j, dep in enumerate(stage.depends_on or []):
            loc = ("stages", i, "dependsOn", j)
            if dep not in ids:
                errors.append(SpecError(f"no stage with id {dep!r}{did_you_mean(dep, ids)}", positions.find(loc), loc))
            elif dep == stage.id:
                errors.append(SpecError("a stage cannot depend on itself", positions.find(loc), loc))
    if errors:
        return errors

    cycle = find_cycle(parents)
    if cycle:
        # Point at the dependsOn of the stage that closes the loop.
        last = cycle[-2]
        i = ids[last]
        loc = ("stages", i, "dependsOn")
        shown = cycle if len(cycle) <= 10 else [*cycle[:6], f"... ({len(cycle) - 1} stages)", *cycle[-3:]]
        errors.append(SpecError(f"dependency cycle: {' -> '.join(shown)}", positions.find(loc), loc))
        return errors

    types = {s.id: s.type for s in pipeline.stages}
    for i, stage in enumerate(pipeline.stages):
        if not isinstance(stage, (PromoteStage, CanaryStage, DeployStage)):
            continue  # only these look upstream; walking every stage's ancestors grows with its square
        up = ancestors(parents, stage.id)
        up_types = {types[s] for s in up}
        if isinstance(stage, PromoteStage) and "deploy" not in up_types and stage.server_group is None:
            errors.append(
                SpecError(
                    "a promote stage needs a deploy stage before it (in its dependsOn chain) "
                    "or an explicit serverGroup",
                    positions.find(("stages", i, "type")),
                    ("stages", i),
                )
            )
        if isinstance(stage, CanaryStage) and stage.baseline is None and "deploy" not in up_types:
            errors.append(
                SpecError(
                    "a canary stage needs a deploy stage before it, or explicit baseline and canary server groups",
                    positions.find(("stages", i, "type")),
                    ("stages", i),
                )
            )
        if isinstance(stage, DeployStage):
            errors.extend(_check_image_source(pipeline, stage, i, up, positions))
    errors.extend(_check_param_refs(pipeline, positions))
    if known_pipelines is not None:
        errors.extend(check_references(pipeline, positions, known_pipelines))
    return errors


def _check_image_source(
    pipeline: Pipeline, stage: DeployStage, i: int, up: set[str], positions: SourceMap
) -> list[SpecError]:
    image_stages = [s for s in up if pipeline.stage(s).type in ("bake", "findImage")]
    if stage.image is None:
        if not image_stages:
            return [
                SpecError(
                    "a deploy stage needs an image: a bake or findImage stage before it, or 'image'",
                    positions.find(("stages", i, "type")),
                    ("stages", i),
                )
            ]
        closest = nearest(pipeline.parents(), stage.id, lambda s: pipeline.stage(s).type in ("bake", "findImage"))
        if len(closest) > 1:
            return [
                SpecError(
                    f"several bake/findImage stages are equally close before this deploy ({', '.join(closest)}): "
                    f"say which one with image: {{stage: {closest[0]}}}",
                    positions.find(("stages", i, "type")),
                    ("stages", i),
                )
            ]
        return []
    if stage.image.stage is not None:
        loc: Loc = ("stages", i, "image", "stage")
        if stage.image.stage not in up:
            return [
                SpecError(
                    f"image stage {stage.image.stage!r} is not a stage this deploy depends on"
                    f"{did_you_mean(stage.image.stage, image_stages)}",
                    positions.find(loc),
                    loc,
                )
            ]
        if pipeline.stage(stage.image.stage).type not in ("bake", "findImage"):
            return [SpecError("image stage must be a bake or findImage stage", positions.find(loc), loc)]
    return []


def _check_param_refs(pipeline: Pipeline, positions: SourceMap) -> list[SpecError]:
    """Required parameters must not be undefined; defaults of options are checked by the model."""
    errors = []
    names: dict[str, int] = {}
    for i, p in enumerate(pipeline.parameters):
        if p.name in names:
            loc: Loc = ("parameters", i, "name")
            errors.append(SpecError(f"duplicate parameter {p.name!r}", positions.find(loc), loc))
        names[p.name] = i
        if p.required and p.default is None and pipeline.triggers:
            loc = ("parameters", i)
            errors.append(
                SpecError(
                    f"required parameter {p.name!r} needs a 'default': triggered runs have nobody to ask",
                    positions.find(loc),
                    loc,
                )
            )
    return errors


def references_ok(pipeline: Pipeline, known: set[str]) -> bool:
    """Whether every pipeline a trigger or runPipeline stage names exists (no positions needed)."""
    for trig in pipeline.triggers:
        if isinstance(trig, PipelineTrigger) and (trig.pipeline not in known or trig.pipeline == pipeline.dag_id):
            return False
    return not any(
        isinstance(s, RunPipelineStage) and (s.pipeline not in known or s.pipeline == pipeline.dag_id)
        for s in pipeline.stages
    )


def check_references(pipeline: Pipeline, positions: SourceMap, known: set[str]) -> list[SpecError]:
    """Triggers and runPipeline stages must name pipelines that exist."""
    errors = []
    for i, trig in enumerate(pipeline.triggers):
        if isinstance(trig, PipelineTrigger):
            loc: Loc = ("triggers", i, "pipeline")
            if trig.pipeline not in known:
                errors.append(
                    SpecError(
                        f"unknown pipeline {trig.pipeline!r}{did_you_mean(trig.pipeline, known - {pipeline.dag_id})}",
                        positions.find(loc),
                        loc,
                    )
                )
            elif trig.pipeline == pipeline.dag_id:
                errors.append(SpecError("a pipeline cannot trigger itself", positions.find(loc), loc))
    for i, stage in enumerate(pipeline.stages):
        if isinstance(stage, RunPipelineStage) and stage.pipeline == pipeline.dag_id:
            loc = ("stages", i, "pipeline")
            errors.append(SpecError("a runPipeline stage cannot run its own pipeline", positions.find(loc), loc))
        elif isinstance(stage, RunPipelineStage) and stage.pipeline not in known:
            loc = ("stages", i, "pipeline")
            errors.append(
                SpecError(
                    f"unknown pipeline {stage.pipeline!r}{did_you_mean(stage.pipeline, known)}",
                    positions.find(loc),
                    loc,
                )
            )
    return errors
