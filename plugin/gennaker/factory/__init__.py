"""The DAG factory: pipeline specs in a folder -> Airflow DAGs, one per spec.

Used from the small DAG file in ``dags/``::

    from gennaker.factory import load_dags
    load_dags(globals())

Broken specs become import errors of their own files (see :mod:`report`);
the other pipelines load. When Airflow parses the file to run one task, only
that task's pipeline is built (Airflow's parsing context).
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gennaker.errors import SpecErrors
from gennaker.factory.builder import build_dag
from gennaker.factory.index import find_spec_files
from gennaker.factory.report import report_import_errors
from gennaker.spec.loader import FolderCache, LoadedSpec, load_folder, load_spec
from gennaker.spec.models import PipelineTrigger

__all__ = ["FactoryResult", "build_dag", "default_pipelines_folder", "load_dags"]

log = logging.getLogger(__name__)

ENV_FOLDER = "GENNAKER_PIPELINES"


@dataclass
class FactoryResult:
    dags: dict[str, Any] = field(default_factory=dict)
    errors: dict[Path, str] = field(default_factory=dict)


def default_pipelines_folder(dag_file: str | None = None) -> Path:
    """``$GENNAKER_PIPELINES``, else ``pipelines/`` next to the DAG file."""
    if os.environ.get(ENV_FOLDER):
        return Path(os.environ[ENV_FOLDER])
    base = Path(dag_file).parent if dag_file else Path.cwd()
    return base / "pipelines"


def _listened(specs: dict[str, LoadedSpec]) -> set[str]:
    out: set[str] = set()
    for spec in specs.values():
        for t in spec.pipeline.triggers:
            if isinstance(t, PipelineTrigger):
                out.add(t.pipeline)
    return out


def build_all(folder: Path, base: Path | None = None) -> FactoryResult:
    """Every pipeline below ``folder``; broken ones in ``errors`` with their rendered messages."""
    result = FactoryResult()
    loaded = load_folder(folder, base=base)
    for display, errs in loaded.errors.items():
        result.errors[loaded.paths[display]] = errs.render()
    listened = _listened(loaded.specs)
    for dag_id in sorted(loaded.specs):
        spec = loaded.specs[dag_id]
        try:
            result.dags[dag_id] = build_dag(spec, listened=dag_id in listened)
        except SpecErrors as exc:
            result.errors[spec.path] = exc.render()
        except Exception:  # a bug of ours must not take the other pipelines down with it
            log.exception("gennaker: building the DAG of %s failed", spec.display)
            result.errors[spec.path] = (
                f"{spec.display}: gennaker failed to build this pipeline (a gennaker bug; please report it):\n"
                + traceback.format_exc(limit=-5)
            )
    return result


def build_one(folder: Path, dag_id: str, base: Path | None = None, task_id: str | None = None) -> FactoryResult:
    """Only the pipeline ``dag_id``, for the parse Airflow does to run one of its tasks.

    The cost does not grow with the folder: the spec is found by a cheap index (see
    :mod:`index`), and other pipelines are not read. Whether another pipeline listens
    to this one only adds the publish-status task, a teardown leaf that no stage depends
    on, so it is built exactly when that is the task to run.
    """
    from gennaker.operators.pipeline_status import PUBLISH_TASK_ID

    result = FactoryResult()
    # One spec: parsing it (a few ms) is cheaper than reading the folder's whole parse cache.
    cache = FolderCache(folder, base, parse_cache=False)
    for path in find_spec_files(cache.root, dag_id):
        try:
            spec = load_spec(path, cache=cache)
        except Exception:  # SpecErrors or worse: the full build reports it as this file's error
            continue
        if spec.pipeline.dag_id != dag_id:
            continue
        try:
            result.dags[dag_id] = build_dag(spec, listened=task_id == PUBLISH_TASK_ID)
        except Exception:
            pass  # the caller falls back to the full build, which reports it like the DAG processor does
        break
    return result


def _build(root: Path, base: Path | None, wanted: str | None, task_id: str | None) -> FactoryResult:
    """The one pipeline a task's parse wants, else every pipeline (broken specs reported as import errors)."""
    result = build_one(root, wanted, base, task_id) if wanted else FactoryResult()
    if not result.dags:  # the DAG processor, or a dag_id that is not ours: build everything
        result = build_all(root, base)
        report_import_errors(result.errors)
    return result


def load_dags(namespace: MutableMapping[str, Any], folder: str | Path | None = None) -> FactoryResult:
    """Build the pipelines' DAGs into ``namespace`` (a DAG file's ``globals()``)."""
    from airflow.sdk import get_parsing_context

    started = time.perf_counter()
    dag_file = namespace.get("__file__")
    root = Path(folder) if folder is not None else default_pipelines_folder(dag_file)
    # Name files relative to the folder above dags/ (the repository), as `gennaker validate` does there.
    base = Path(dag_file).resolve().parent.parent if dag_file else None
    if not root.is_dir():
        log.warning("gennaker: pipelines folder %s does not exist; no pipelines loaded", root)
        return FactoryResult()
    context = get_parsing_context()
    try:
        result = _build(root, base, context.dag_id, context.task_id)
    except Exception:  # not one spec's problem (e.g. an unreadable folder): the DAG file must still import
        log.exception("gennaker: loading the pipelines of %s failed", root)
        result = FactoryResult(
            errors={root: f"{root}: gennaker could not load this folder:\n{traceback.format_exc(limit=-5)}"}
        )
        report_import_errors(result.errors)
    for dag_id, dag in result.dags.items():
        namespace[f"gennaker_dag__{dag_id}"] = dag
    log.info(
        "gennaker: %d pipeline(s) loaded, %d broken, from %s in %.3fs",
        len(result.dags),
        len(result.errors),
        root,
        time.perf_counter() - started,
    )
    return result
