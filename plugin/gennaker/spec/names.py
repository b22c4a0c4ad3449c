"""Which pipeline a spec file defines, read cheaply: its top-level lines, not its YAML.

Two callers need a spec's dag_id without loading it: the factory's task-start parse
(finding the one spec to build, see :mod:`gennaker.factory.index`) and ``gennaker
validate FILE`` (the folder's other pipelines may be named by the file, but are not
validated). Both read each file's top-level ``application:`` and ``name:`` lines; an
application may also come from the nearest ``defaults.yaml``, and a name from nothing
else. A file this cannot read simply defines no pipeline here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

DEFAULTS_NAMES = ("defaults.yaml", "defaults.yml")

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


def top_level(text: str) -> dict[str, str]:
    """The plain top-level ``application`` and ``name`` values of a spec's text (first of each)."""
    out: dict[str, str] = {}
    for key, raw in _TOP.findall(text):
        value = _scalar(raw)
        if value is not None and key not in out:
            out[key] = value
    return out


def app_from_defaults(root: Path, folder: Path, memo: dict[Path, str | None]) -> str | None:
    """The application the nearest defaults.yaml (up to ``root``) gives specs in ``folder``."""
    if folder not in memo:
        found: str | None = None
        for name in DEFAULTS_NAMES:
            f = folder / name
            if f.is_file():
                found = top_level(f.read_text(encoding="utf-8", errors="replace")).get("application")
                break
        if found is None and folder != root and root in folder.parents:
            found = app_from_defaults(root, folder.parent, memo)
        memo[folder] = found
    return memo[folder]


def dag_ids(root: Path, files: Iterable[Path]) -> dict[Path, str]:
    """``{file: dag_id}`` for the spec files (below ``root``) whose dag_id the cheap read finds."""
    memo: dict[Path, str | None] = {}
    out: dict[Path, str] = {}
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        top = top_level(text)
        app = top.get("application") or app_from_defaults(root, path.parent, memo)
        name = top.get("name")
        if app and name:
            out[path] = f"{app}.{name}"
    return out
