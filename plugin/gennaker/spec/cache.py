"""A parse cache of valid specs, as ``__pycache__`` is for Python DAG files.

The DAG processor parses the DAG file again every few seconds; re-validating every
spec each time would cost more than Airflow spends on the same pipelines written in
Python (which it reads from byte-code caches). A valid spec's Pipeline is kept in one
pickle per pipelines folder under ``$GENNAKER_HOME/cache/``, keyed by the spec's path
and a fingerprint of everything it was built from: its text, the texts of the
defaults.yaml files above it, its template's text, the template search path and the
gennaker version. Errors are never cached, and a cached spec reloads its source
positions the first time an error needs them. ``GENNAKER_SPEC_CACHE=0`` turns it off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

from gennaker import __version__

log = logging.getLogger(__name__)

_TEMPLATE = re.compile(r"^template\s*:\s*['\"]?([A-Za-z0-9][A-Za-z0-9_.-]*)", re.MULTILINE)
_FORMAT = 1


def enabled() -> bool:
    return os.environ.get("GENNAKER_SPEC_CACHE", "1").lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    if os.environ.get("GENNAKER_HOME"):
        home = Path(os.environ["GENNAKER_HOME"]).expanduser()
    else:
        airflow_home = os.environ.get("AIRFLOW_HOME")
        home = (Path(airflow_home).expanduser() if airflow_home else Path.home() / "airflow") / "gennaker"
    return home / "cache"


def template_name(text: str) -> str | None:
    """The template a spec's text names (top-level ``template:``), without parsing YAML."""
    match = _TEMPLATE.search(text)
    return match.group(1) if match else None


def fingerprint(text: str, defaults_texts: list[str], template_text: str | None, template_path: list[Path]) -> str:
    digest = hashlib.sha256()
    for part in (__version__, text, *defaults_texts, template_text or "", *map(str, template_path)):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


class SpecCache:
    """Valid pipelines of one folder by path, each with the fingerprint it was built from."""

    def __init__(self, root: Path) -> None:
        key = hashlib.sha256(str(root).encode()).hexdigest()[:16]
        self.path = cache_dir() / f"specs-{key}.pickle"
        self.entries: dict[str, tuple[str, Any]] = {}
        self.dirty = False
        self._load()

    def _load(self) -> None:
        try:
            with self.path.open("rb") as f:
                stored = pickle.load(f)
        except FileNotFoundError:
            return
        except Exception as error:  # a torn or foreign file: start afresh
            log.warning("gennaker: ignoring the spec cache %s (%s)", self.path, error)
            return
        if isinstance(stored, dict) and stored.get("format") == _FORMAT and stored.get("version") == __version__:
            self.entries = stored["entries"]

    def get(self, path: Path, print_: str) -> Any | None:
        entry = self.entries.get(str(path))
        return entry[1] if entry is not None and entry[0] == print_ else None

    def put(self, path: Path, print_: str, value: Any) -> None:
        self.entries[str(path)] = (print_, value)
        self.dirty = True

    def save(self, keep: set[str] | None = None) -> None:
        """Write the cache if it changed (atomically); ``keep`` drops entries of files that are gone."""
        if keep is not None:
            stale = set(self.entries) - keep
            for name in stale:
                del self.entries[name]
            self.dirty = self.dirty or bool(stale)
        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".specs-")
            with os.fdopen(fd, "wb") as f:
                pickle.dump({"format": _FORMAT, "version": __version__, "entries": self.entries}, f, protocol=5)
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError as error:  # a read-only home only costs speed
            log.warning("gennaker: could not write the spec cache %s (%s)", self.path, error)
