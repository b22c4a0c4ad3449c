"""A cheap index of spec files: which file holds which dag_id, without parsing YAML.

When Airflow runs a task it re-parses the DAG file; the factory then builds only
the pipeline it needs. Finding that pipeline must not cost a full parse of every
spec, so this reads each file's top-level ``application:`` and ``name:`` lines
(an application may also come from the nearest ``defaults.yaml``, and a name from
nothing else). A file the index cannot read is simply not a candidate; the full
parse in the DAG processor is what reports errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gennaker.spec.loader import discover
from gennaker.spec.names import app_from_defaults, dag_ids, top_level


@dataclass(frozen=True)
class IndexEntry:
    path: Path
    dag_id: str


def build_index(root: Path) -> dict[str, list[IndexEntry]]:
    """dag_id -> the spec files that (cheaply) appear to define it."""
    index: dict[str, list[IndexEntry]] = {}
    for path, dag_id in dag_ids(root, discover(root)).items():
        index.setdefault(dag_id, []).append(IndexEntry(path, dag_id))
    return index


def find_spec_files(root: Path, dag_id: str) -> list[Path]:
    """The spec files that (cheaply) appear to define ``dag_id``.

    Files named after the pipeline or its application (``<app>/<name>.yaml``,
    ``<name>.yaml``, ``<app>.yaml``) are tried first, reading only them; the whole
    folder is indexed only when none of them defines it.
    """
    application, _, name = dag_id.partition(".")
    files = discover(root)
    likely = [p for p in files if p.stem in (name, application) or p.parent.name == application]
    for path in likely:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        top = top_level(text)
        if (
            top.get("name") == name
            and (top.get("application") or app_from_defaults(root, path.parent, {})) == application
        ):
            return [path]
    return [entry.path for entry in build_index(root).get(dag_id, [])]
