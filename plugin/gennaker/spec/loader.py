"""Load pipeline specs: YAML -> defaults.yaml cascade -> template -> validated :class:`Pipeline`.

Every problem is a :class:`SpecError` with file:line:column and the field, and a
file's problems are reported together. One broken file never stops the others:
:func:`load_folder` returns the good pipelines and the errors side by side.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gennaker.spec import semantics
from gennaker.spec.errors import Position, SpecError, SpecErrors
from gennaker.spec.models import Pipeline, StageBase
from gennaker.spec.templates import expand
from gennaker.spec.validation import errors_from_validation
from gennaker.spec.yamlsource import Document, SourceMap, load_file

DEFAULTS_NAMES = ("defaults.yaml", "defaults.yml")
SPEC_SUFFIXES = (".yaml", ".yml")
_DEFAULTS_ONLY = "stageDefaults"


@dataclass
class LoadedSpec:
    """A valid pipeline and where it came from."""

    path: Path
    display: str
    pipeline: Pipeline
    data: dict[str, Any]
    positions: SourceMap
    source: str


@dataclass
class FolderResult:
    """What :func:`load_folder` found: valid pipelines and per-file errors."""

    specs: dict[str, LoadedSpec] = field(default_factory=dict)  # by dag_id
    errors: dict[str, SpecErrors] = field(default_factory=dict)  # by display path


def display_path(path: Path, base: Path | None = None) -> str:
    """How a file is named in messages: relative to ``base`` (or the cwd) when possible."""
    for anchor in (base, Path.cwd()):
        if anchor is None:
            continue
        try:
            return str(path.resolve().relative_to(anchor.resolve()))
        except ValueError:
            continue
    return str(path)


def template_search_path(spec_path: Path) -> list[Path]:
    """``$GENNAKER_TEMPLATE_PATH`` first, then the nearest ``templates/`` folder above the spec."""
    out = [Path(p) for p in os.environ.get("GENNAKER_TEMPLATE_PATH", "").split(os.pathsep) if p]
    for parent in spec_path.resolve().parents:
        candidate = parent / "templates"
        if candidate.is_dir():
            out.append(candidate)
            break
    return out


def is_spec_file(path: Path) -> bool:
    return path.suffix in SPEC_SUFFIXES and path.name not in DEFAULTS_NAMES and not path.name.startswith(".")


def discover(root: Path) -> list[Path]:
    """Spec files below ``root``, sorted, skipping hidden folders and ``.airflowignore`` patterns."""
    ignore = _ignore_patterns(root)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in filenames:
            path = Path(dirpath) / name
            if is_spec_file(path) and not _ignored(path.relative_to(root), ignore):
                found.append(path)
    return sorted(found)


def _ignore_patterns(root: Path) -> list[str]:
    f = root / ".airflowignore"
    if not f.is_file():
        return []
    return [ln.strip() for ln in f.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def _ignored(rel: Path, patterns: list[str]) -> bool:
    return any(rel.match(p) or any(part == p.strip("/") for part in rel.parts) for p in patterns)


def defaults_chain(spec_path: Path, root: Path) -> list[Path]:
    """defaults.yaml files from ``root`` down to the spec's folder (outermost first)."""
    chain: list[Path] = []
    root = root.resolve()
    folder = spec_path.resolve().parent
    folders = [folder, *folder.parents]
    for f in reversed(folders):
        if f != root and root not in f.parents:
            continue
        for name in DEFAULTS_NAMES:
            if (f / name).is_file():
                chain.append(f / name)
    return chain


def _apply_defaults(
    data: dict[str, Any], positions: SourceMap, defaults: Iterable[Document]
) -> tuple[dict[str, Any], SourceMap]:
    """Pipeline keys the spec leaves out come from the nearest defaults.yaml that has them.

    ``stageDefaults: {"*": {...}, deploy: {...}}`` fills stage fields a stage leaves
    out (type-specific entries before ``*``), only where the stage type has that field.
    """
    from gennaker.spec.validation import _aliases, model_at

    merged = dict(data)
    out_pos = SourceMap()
    out_pos.merge(positions)
    stage_defaults: list[tuple[dict[str, Any], SourceMap]] = []
    for doc in reversed(list(defaults)):  # nearest first
        d = doc.data or {}
        for key, value in d.items():
            if key == _DEFAULTS_ONLY:
                stage_defaults.append((value, doc.positions.subtree((key,))))
                continue
            if key not in merged:
                merged[key] = value
                out_pos.merge(doc.positions.subtree((key,)), (key,))
                if (key,) in doc.positions.keys:
                    out_pos.keys[(key,)] = doc.positions.keys[(key,)]
    stages = merged.get("stages")
    if stage_defaults and isinstance(stages, list):
        new_stages = []
        for i, stage in enumerate(stages):
            if not isinstance(stage, dict):
                new_stages.append(stage)
                continue
            stage = dict(stage)
            model = model_at(Pipeline, ("stages", i), merged)
            fields = set(_aliases(model)) if isinstance(model, type) else set()
            for sd, sd_pos in stage_defaults:
                for selector in (str(stage.get("type")), "*"):
                    block = sd.get(selector) if isinstance(sd, dict) else None
                    if not isinstance(block, dict):
                        continue
                    for key, value in block.items():
                        if key in fields and key not in stage:
                            stage[key] = value
                            out_pos.merge(sd_pos.subtree((selector, key)), ("stages", i, key))
            new_stages.append(stage)
        merged["stages"] = new_stages
    return merged, out_pos


def _check_defaults_doc(doc: Document) -> list[SpecError]:
    errors = []
    if doc.data is None:
        return []
    if not isinstance(doc.data, dict):
        return [SpecError("defaults.yaml must be a mapping", doc.positions.find(()))]
    allowed = set(Pipeline.model_fields) | {f.alias for f in Pipeline.model_fields.values() if f.alias}
    for key in doc.data:
        if key == _DEFAULTS_ONLY:
            continue
        if key in ("stages", "name") or key not in allowed:
            from gennaker.spec.validation import did_you_mean

            hint = did_you_mean(key, [*sorted(a for a in allowed if a not in ("stages", "name")), _DEFAULTS_ONLY])
            errors.append(
                SpecError(
                    f"{key!r} cannot be set in defaults.yaml{hint}",
                    doc.positions.find((key,), key=True),
                    (key,),
                )
            )
    return errors


def load_spec(
    path: Path | str,
    *,
    root: Path | str | None = None,
    display: str | None = None,
    known_pipelines: set[str] | None = None,
) -> LoadedSpec:
    """Load, expand and validate one spec. Raises :class:`SpecErrors` with every problem found."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    name = display or display_path(path)
    try:
        doc = load_file(path, name)
    except SpecError as exc:
        raise SpecErrors([exc]) from None
    source = Path(path).read_text(encoding="utf-8")
    if not isinstance(doc.data, dict):
        raise SpecErrors([SpecError("a pipeline spec must be a mapping of fields", doc.positions.find(()))])

    errors: list[SpecError] = []
    defaults_docs: list[Document] = []
    for dpath in defaults_chain(path, root):
        try:
            ddoc = load_file(dpath, display_path(dpath, _base_of(name, path)))
        except SpecError as exc:
            errors.append(exc)
            continue
        errors.extend(_check_defaults_doc(ddoc))
        defaults_docs.append(ddoc)
    if errors:
        raise SpecErrors(errors)

    try:
        data, positions = expand(doc, template_search_path(path))
    except SpecError as exc:
        raise SpecErrors([exc]) from None
    data, positions = _apply_defaults(data, positions, defaults_docs)

    try:
        pipeline = Pipeline.model_validate(data)
    except ValidationError as exc:
        raise SpecErrors(errors_from_validation(exc, data, positions, Pipeline)) from None

    errors.extend(semantics.check(pipeline, positions, known_pipelines))
    if errors:
        raise SpecErrors(errors)
    return LoadedSpec(path, name, pipeline, data, positions, source)


def _base_of(display: str, path: Path) -> Path | None:
    """The folder that ``display`` is relative to, so defaults files are named alike."""
    parts = Path(display).parts
    resolved = path.resolve()
    if len(parts) <= len(resolved.parts) and resolved.parts[-len(parts) :] == parts:
        return Path(*resolved.parts[: len(resolved.parts) - len(parts)]) if len(parts) < len(resolved.parts) else None
    return None


def load_folder(root: Path, *, base: Path | None = None, files: Iterable[Path] | None = None) -> FolderResult:
    """Load every spec below ``root``; cross-file checks (unknown pipelines, duplicate dag_ids) included."""
    result = FolderResult()
    paths = list(files) if files is not None else discover(root)
    origins: dict[str, str] = {}
    for path in paths:
        name = display_path(path, base)
        try:
            spec = load_spec(path, root=root, display=name)
        except SpecErrors as exc:
            result.errors[name] = exc
            continue
        dag_id = spec.pipeline.dag_id
        if dag_id in result.specs:
            pos = spec.positions.find(("name",))
            result.errors[name] = SpecErrors(
                [SpecError(f"pipeline {dag_id!r} is already defined in {origins[dag_id]}", pos, ("name",))]
            )
            continue
        origins[dag_id] = name
        result.specs[dag_id] = spec
    known = set(result.specs) | _names_in_error(result)
    for dag_id, spec in list(result.specs.items()):
        problems = semantics.check_references(spec.pipeline, spec.positions, known)
        if problems:
            result.errors[spec.display] = SpecErrors(problems)
            del result.specs[dag_id]
    return result


def _names_in_error(result: FolderResult) -> set[str]:
    """dag_ids of broken specs still count as known pipelines, so one error does not cascade."""
    return set()


def stage_position(spec: LoadedSpec, stage: StageBase, field_name: str | None = None) -> Position | None:
    """Where a stage (or one of its fields) is written."""
    index = spec.pipeline.stages.index(stage)  # type: ignore[arg-type]
    loc: tuple[str | int, ...] = ("stages", index)
    if field_name:
        loc = (*loc, field_name)
    return spec.positions.find(loc, key=field_name is not None)
