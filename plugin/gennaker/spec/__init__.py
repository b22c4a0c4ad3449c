"""The pipeline language: models, YAML loading with file:line errors, templates, JSON Schema."""

from gennaker.spec.errors import GennakerError, Position, SpecError, SpecErrors
from gennaker.spec.loader import FolderResult, LoadedSpec, discover, load_folder, load_spec
from gennaker.spec.models import STAGE_TYPES, Pipeline

__all__ = [
    "STAGE_TYPES",
    "FolderResult",
    "GennakerError",
    "LoadedSpec",
    "Pipeline",
    "Position",
    "SpecError",
    "SpecErrors",
    "discover",
    "load_folder",
    "load_spec",
]
