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
    text: str


def build_index(root: Path) -> dict[str, list[IndexEntry]]:
    """dag_id -> the spec files that (cheaply) appear to define it."""
    defaults_app: dict[Path, str | None] = {}

    def app_from_defaults(folder: Path) -> str | None:
        if folder in defaults_app:
            return defaults_app[folder]
        found: str | None = None
        for name in DEFAULTS_NAMES:
            f = folder / name
            if f.is_file():
                found = _top_level(f.read_text(encoding="utf-8", errors="replace")).get("application")
                break
        if found is None and folder != root and root in folder.parents:
            found = app_from_defaults(folder.parent)
        defaults_app[folder] = found
        return found

    index: dict[str, list[IndexEntry]] = {}
    for path in discover(root):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        top = _top_level(text)
        app = top.get("application") or app_from_defaults(path.parent)
        name = top.get("name")
        if app and name:
            dag_id = f"{app}.{name}"
            index.setdefault(dag_id, []).append(IndexEntry(path, dag_id, text))
    return index


def mentions(root: Path, dag_id: str, exclude: Path | None = None) -> list[Path]:
    """Spec files other than ``exclude`` whose text mentions ``dag_id`` (listener candidates)."""
    out = []
    for path in discover(root):
        if exclude is not None and path == exclude:
            continue
        try:
            if dag_id in path.read_text(encoding="utf-8"):
                out.append(path)
        except (OSError, UnicodeDecodeError):
            continue
    return out
