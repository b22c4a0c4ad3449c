"""The stage graph as text: one line per stage, in run order, with what it waits for."""

from __future__ import annotations

from graphlib import TopologicalSorter

from gennaker.spec.models import Pipeline


def levels(pipeline: Pipeline) -> list[list[str]]:
    """Stages grouped by depth: each group can run in parallel once the groups before are done."""
    parents = pipeline.parents()
    order = {s.id: i for i, s in enumerate(pipeline.stages)}
    sorter = TopologicalSorter(parents)
    sorter.prepare()
    out: list[list[str]] = []
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=order.__getitem__)
        out.append(ready)
        sorter.done(*ready)
    return out


def render_graph(pipeline: Pipeline) -> str:
    parents = pipeline.parents()
    lines = [f"{pipeline.dag_id}"]
    for depth, group in enumerate(levels(pipeline)):
        parallel = len(group) > 1
        for stage_id in group:
            stage = pipeline.stage(stage_id)
            after = parents[stage_id]
            join = " (join)" if len(after) > 1 else ""
            waits = f"  <- {', '.join(after)}{join}" if after else "  (start)"
            flags = []
            if stage.when is not None:
                flags.append(f"when: {stage.when}")
            if stage.on_failure != "halt":
                flags.append(f"onFailure: {stage.on_failure}")
            extra = f"  [{'; '.join(flags)}]" if flags else ""
            mark = "||" if parallel else "  "
            lines.append(f"  {depth + 1:>2}. {mark} {stage_id} ({stage.type}){waits}{extra}")
    return "\n".join(lines) + "\n"
