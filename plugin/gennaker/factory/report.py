"""Show broken specs in Airflow's UI as import errors of their own files.

Airflow records import errors per file, and only for the DAG file it parsed: an
exception in our loader would hide every pipeline of the folder. Instead the
loader builds the good pipelines and hands each broken spec's message to the
DagBag that is parsing it, under the spec's own path (relative to the bundle),
so the UI lists ``pipelines/hello/deploy.yaml`` with its file:line message and
the other pipelines stay up.

Airflow 3.3 has no public API for this (the pluggable importers of 3.4 will):
we find the DagBag that is running our DAG file on the call stack. When there
is none (a plain ``import``, a task's own parse) the errors are logged.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _active_dagbag() -> Any | None:
    try:
        from airflow.dag_processing.dagbag import DagBag
    except ImportError:  # pragma: no cover - Airflow always has it in 3.x
        return None
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, DagBag):
            return candidate
        frame = frame.f_back  # type: ignore[assignment]
    return None


def report_import_errors(errors: Mapping[Path, str]) -> bool:
    """Record ``{spec path: message}`` as import errors. True if a DagBag took them."""
    if not errors:
        return True
    for path, message in sorted(errors.items()):
        log.error("gennaker: pipeline spec %s is invalid:\n%s", path, message)
    bag = _active_dagbag()
    if bag is None:
        return False
    bundle = getattr(bag, "bundle_path", None)
    for path, message in errors.items():
        key = str(path)
        if bundle is not None:
            try:
                key = os.path.relpath(Path(path).resolve(), Path(bundle).resolve())
            except ValueError:
                key = str(path)
        bag.import_errors[key] = message
    return True
