"""The pipeline language: models, YAML loading with file:line errors, templates, JSON Schema.

Names are imported lazily: ``gennaker.errors`` is imported by processes that never
load a spec (the local provider's supervisor and proxy), and must not pay for the models.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "GennakerError": "gennaker.errors",
    "Position": "gennaker.errors",
    "SpecError": "gennaker.errors",
    "SpecErrors": "gennaker.errors",
    "FolderResult": "gennaker.spec.loader",
    "LoadedSpec": "gennaker.spec.loader",
    "discover": "gennaker.spec.loader",
    "load_folder": "gennaker.spec.loader",
    "load_spec": "gennaker.spec.loader",
    "STAGE_TYPES": "gennaker.spec.models",
    "Pipeline": "gennaker.spec.models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'gennaker.spec' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
