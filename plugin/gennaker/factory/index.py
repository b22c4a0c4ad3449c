"""A cheap index of spec files: which file holds which dag_id, without parsing YAML.

When Airflow runs a task it re-parses the DAG file; the factory then builds only
the pipeline it needs. Finding that pipeline must not cost a full parse of every
spec, so this reads each file's top-level ``application:`` and ``name:`` lines
(an application may also come from the nearest ``defaults.yaml``, and a name from
nothing else). A file the index cannot read is simply not a candidate; the full
parse in the DAG processor is what reports errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gennaker.spec.loader import DEFAULTS_NAMES, discover

_TOP = re.compile(r"^(application|name)\s*:\s*(.*?)\s*(?:#.*)?$", re.MULTILINE)


def _scalar(raw: str) -> str | None:
    raw = raw.strip()
    if not raw or raw[0] in "[{|>&*!":
        return None
    if raw[0] in "'\"":
        if len(raw) >= 2 and raw[-1] == raw[0]:
            return raw[1:-1]
        return None
    return raw


def _top_level(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, raw in _TOP.findall(text):
        value = _scalar(raw)
        if value is not None and key not in out:
            out[key] = value
    return out


@dataclass(frozen=True)
class IndexEntry:
    path: Path
    dag_id: str


def build_index(root: Path) -> dict[str, list[IndexEntry]]:
    """dag_id -> the spec files that (cheaply) appear to define it."""
    memo: dict[Path, str | None] = {}
    index: dict[str, list[IndexEntry]] = {}
    for path in discover(root):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        top = _top_level(text)
        app = top.get("application") or _app_from_defaults(root, path.parent, memo)
        name = top.get("name")
        if app and name:
            dag_id = f"{app}.{name}"
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
        top = _top_level(text)
        if (
            top.get("name") == name
            and (top.get("application") or _app_from_defaults(root, path.parent, {})) == application
        ):
            return [path]
    return [entry.path for entry in build_index(root).get(dag_id, [])]


def _app_from_defaults(root: Path, folder: Path, memo: dict[Path, str | None]) -> str | None:
    """The application the nearest defaults.yaml (up to ``root``) gives specs in ``folder``."""
    if folder not in memo:
        found: str | None = None
        for name in DEFAULTS_NAMES:
            f = folder / name
            if f.is_file():
                found = _top_level(f.read_text(encoding="utf-8", errors="replace")).get("application")
                break
        if found is None and folder != root and root in folder.parents:
            found = _app_from_defaults(root, folder.parent, memo)
        memo[folder] = found
    return memo[folder]
