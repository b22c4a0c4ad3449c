"""Load pipeline specs: YAML -> defaults.yaml cascade -> template -> validated :class:`Pipeline`.

Every problem is a :class:`SpecError` with file:line:column and the field, and a
file's problems are reported together. One broken file never stops the others:
:func:`load_folder` returns the good pipelines and the errors side by side.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gennaker.errors import Position, SpecError, SpecErrors
from gennaker.spec import cache as spec_cache
from gennaker.spec import semantics
from gennaker.spec.models import Pipeline, StageBase
from gennaker.spec.names import DEFAULTS_NAMES, dag_ids
from gennaker.spec.templates import expand, locate_template
from gennaker.spec.validation import errors_from_validation
from gennaker.spec.yamlsource import Document, SourceMap, load_file, parse_text

log = logging.getLogger(__name__)

SPEC_SUFFIXES = (".yaml", ".yml")
_DEFAULTS_ONLY = "stageDefaults"


class LoadedSpec:
    """A valid pipeline and where it came from.

    A spec served from the parse cache (:mod:`gennaker.spec.cache`) has no source
    positions until something asks for them (an error to report): then it is loaded
    again from its file.
    """

    def __init__(
        self,
        path: Path,
        display: str,
        pipeline: Pipeline,
        data: dict[str, Any] | None,
        positions: SourceMap | None,
        source: str,
        reload: Callable[[], LoadedSpec] | None = None,
    ) -> None:
        self.path = path
        self.display = display
        self.pipeline = pipeline
        self.source = source
        self._data = data
        self._positions = positions
        self._reload = reload

    def _fill(self) -> None:
        if self._reload is None:
            raise RuntimeError(f"{self.display}: no source positions and no way to reload them")
        full = self._reload()
        self._data, self._positions = full.data, full.positions

    @property
    def positions(self) -> SourceMap:
        if self._positions is None:
            self._fill()
        assert self._positions is not None
        return self._positions

    @property
    def data(self) -> dict[str, Any]:
        if self._data is None:
            self._fill()
        assert self._data is not None
        return self._data


@dataclass
class FolderResult:
    """What :func:`load_folder` found: valid pipelines and per-file errors."""

    specs: dict[str, LoadedSpec] = field(default_factory=dict)  # by dag_id
    errors: dict[str, SpecErrors] = field(default_factory=dict)  # by display path
    paths: dict[str, Path] = field(default_factory=dict)  # display path -> file, for every file read


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
    data: dict[str, Any], positions: SourceMap, defaults: Iterable[Document], stage_level: bool = True
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
                if stage_level:
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


def _check_stage_defaults(doc: Document) -> list[SpecError]:
    """``stageDefaults: {"*" or a stage type: {field: value}}``; a typo here would otherwise do nothing at all."""
    from typing import get_args

    from gennaker.spec.models import Stage
    from gennaker.spec.validation import _aliases, did_you_mean

    members = get_args(get_args(Stage)[0])
    fields_of = {get_args(m.model_fields["type"].annotation)[0]: set(_aliases(m)) - {"id", "type"} for m in members}
    fields_of["*"] = set().union(*fields_of.values())
    loc: tuple[str | int, ...] = (_DEFAULTS_ONLY,)
    block = doc.data[_DEFAULTS_ONLY]
    if not isinstance(block, dict):
        return [SpecError('must map "*" or a stage type to stage fields', doc.positions.find(loc), loc)]
    errors = []
    for selector, values in block.items():
        where = (*loc, selector)
        if selector not in fields_of:
            hint = did_you_mean(selector, fields_of)
            errors.append(
                SpecError(f"unknown stage type {selector!r}{hint}", doc.positions.find(where, key=True), where)
            )
        elif not isinstance(values, dict):
            errors.append(SpecError("must be a mapping of stage fields", doc.positions.find(where), where))
        else:
            for name in values:
                if name not in fields_of[selector]:
                    hint = did_you_mean(name, sorted(fields_of[selector]))
                    at = (*where, name)
                    what = "no stage type has" if selector == "*" else f"{selector!r} stages have no"
                    errors.append(SpecError(f"{what} field {name!r}{hint}", doc.positions.find(at, key=True), at))
    return errors


def _check_defaults_doc(doc: Document) -> list[SpecError]:
    errors = []
    if doc.data is None:
        return []
    if not isinstance(doc.data, dict):
        return [SpecError("defaults.yaml must be a mapping", doc.positions.find(()))]
    allowed = set(Pipeline.model_fields) | {f.alias for f in Pipeline.model_fields.values() if f.alias}
    for key in doc.data:
        if key == _DEFAULTS_ONLY:
            errors.extend(_check_stage_defaults(doc))
            continue
        if key in ("stages", "name") or key not in allowed:
            from gennaker.spec.validation import did_you_mean

            hint = did_you_mean(key, [*sorted(a for a in allowed if a not in ("stages", "name")), _DEFAULTS_ONLY])
            hint = "" if key in allowed else hint  # 'stages' is known, just not allowed here: no "did you mean"
            errors.append(
                SpecError(
                    f"{key!r} cannot be set in defaults.yaml{hint}",
                    doc.positions.find((key,), key=True),
                    (key,),
                )
            )
    return errors


class FolderCache:
    """What specs of one folder share, computed once: defaults files, template path, names.

    Resolving paths and reading defaults.yaml per spec would dominate the parse of a
    large folder; one cache serves a whole :func:`load_folder` (or one spec).
    """

    def __init__(self, root: Path, base: Path | None = None, *, parse_cache: bool = True) -> None:
        self.root = root.resolve()
        self.anchor = (base or Path.cwd()).resolve()
        self._defaults: dict[Path, tuple[list[Document], list[SpecError]]] = {}
        self._defaults_texts: dict[Path, list[str]] = {}
        self._templates: dict[Path, list[Path]] = {}
        self._template_texts: dict[tuple[Path, str], str | None] = {}
        self.specs = spec_cache.SpecCache(self.root) if parse_cache and spec_cache.enabled() else None

    def display(self, path: Path) -> str:
        """``path`` (absolute) named relative to the anchor (the repository, or the cwd)."""
        try:
            return str(path.relative_to(self.anchor))
        except ValueError:
            return str(path)

    def defaults(self, folder: Path) -> tuple[list[Document], list[SpecError]]:
        """The parsed defaults.yaml chain for specs in ``folder`` (outermost first), and its errors."""
        if folder not in self._defaults:
            docs: list[Document] = []
            errors: list[SpecError] = []
            for dpath in defaults_chain(folder / "_", self.root):
                try:
                    doc = load_file(dpath, self.display(dpath))
                except SpecError as exc:
                    errors.append(exc)
                    continue
                errors.extend(_check_defaults_doc(doc))
                docs.append(doc)
            self._defaults[folder] = (docs, errors)
        return self._defaults[folder]

    def templates(self, folder: Path) -> list[Path]:
        if folder not in self._templates:
            self._templates[folder] = template_search_path(folder / "_")
        return self._templates[folder]

    def fingerprint(self, folder: Path, source: str) -> str:
        """What a spec in ``folder`` with this text was built from (see :mod:`gennaker.spec.cache`)."""
        if folder not in self._defaults_texts:
            self._defaults_texts[folder] = [
                p.read_text(encoding="utf-8", errors="replace") for p in defaults_chain(folder / "_", self.root)
            ]
        search = self.templates(folder)
        name = spec_cache.template_name(source)
        text = None
        if name is not None:
            key = (folder, name)
            if key not in self._template_texts:
                found = locate_template(name, search)
                self._template_texts[key] = found.read_text(encoding="utf-8", errors="replace") if found else None
            text = self._template_texts[key]
        return spec_cache.fingerprint(source, self._defaults_texts[folder], text, search)


def load_spec(
    path: Path | str,
    *,
    root: Path | str | None = None,
    display: str | None = None,
    known_pipelines: set[str] | None = None,
    cache: FolderCache | None = None,
) -> LoadedSpec:
    """Load, expand and validate one spec. Raises :class:`SpecErrors` with every problem found."""
    path = Path(path)
    if cache is None:
        cache = FolderCache(Path(root) if root is not None else path.parent)
    if not path.is_absolute():
        path = path.resolve()
    name = display or cache.display(path)
    try:
        source = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecErrors([SpecError(f"not UTF-8 text: {exc.reason}", Position(name, 1, 1))]) from None
    except OSError as exc:
        raise SpecErrors([SpecError(f"cannot read file: {exc.strerror}", Position(name, 1, 1))]) from None
    print_ = cache.fingerprint(path.parent, source) if cache.specs is not None else ""
    if cache.specs is not None:
        pipeline = cache.specs.get(path, print_)
        if pipeline is not None:
            spec = LoadedSpec(path, name, pipeline, None, None, source, reload=lambda: _uncached(path, name, cache))
            if known_pipelines is not None:
                problems = semantics.check_references(pipeline, spec.positions, known_pipelines)
                if problems:
                    raise SpecErrors(problems)
            return spec
    try:
        doc = parse_text(source, name)
    except SpecError as exc:
        raise SpecErrors([exc]) from None
    if not isinstance(doc.data, dict):
        raise SpecErrors([SpecError("a pipeline spec must be a mapping of fields", doc.positions.find(()))])

    defaults_docs, errors = cache.defaults(path.parent)
    if errors:
        raise SpecErrors(errors)
    if "template" in doc.data:  # defaults.yaml outranks the template: fill the spec's own fields first
        doc = Document(doc.path, *_apply_defaults(doc.data, doc.positions, defaults_docs, stage_level=False))
    try:
        data, positions = expand(doc, cache.templates(path.parent))
    except SpecError as exc:
        raise SpecErrors([exc]) from None
    data, positions = _apply_defaults(data, positions, defaults_docs)

    try:
        pipeline = Pipeline.model_validate(data)
    except ValidationError as exc:
        raise SpecErrors(errors_from_validation(exc, data, positions, Pipeline)) from None

    problems = semantics.check(pipeline, positions, known_pipelines)
    if problems:
        raise SpecErrors(problems)
    if cache.specs is not None:
        cache.specs.put(path, print_, pipeline)
    return LoadedSpec(path, name, pipeline, data, positions, source)


def _uncached(path: Path, display: str, cache: FolderCache) -> LoadedSpec:
    """Load a spec from its file, positions included, bypassing the parse cache."""
    fresh = FolderCache(cache.root, cache.anchor, parse_cache=False)
    return load_spec(path, display=display, cache=fresh)


def load_folder(root: Path, *, base: Path | None = None, files: Iterable[Path] | None = None) -> FolderResult:
    """Load every spec below ``root``; cross-file checks (unknown pipelines, duplicate dag_ids) included.

    With ``files``, only those specs are loaded; the folder's other specs only lend their
    names (read cheaply, see :mod:`gennaker.spec.names`) to the check of pipeline references.
    """
    result = FolderResult()
    cache = FolderCache(root, base)
    paths = [Path(f).resolve() for f in files] if files is not None else discover(cache.root)
    origins: dict[str, str] = {}
    for path in paths:
        name = cache.display(path)
        result.paths[name] = path
        try:
            _add_spec(result, load_spec(path, display=name, cache=cache), origins)
        except SpecErrors as exc:
            result.errors[name] = exc
        except Exception as exc:  # a bug of ours, or a spec too big for us: that file's error, not the folder's
            result.errors[name] = unexpected_error(name, exc)
    known = set(result.specs) | _names_of([result.paths[name] for name in result.errors], cache)
    if files is not None:  # some files of the folder: the folder's other pipelines exist too
        asked = set(paths)
        known |= set(dag_ids(cache.root, [p for p in discover(cache.root) if p not in asked]).values())
    _check_references(result, known)
    if cache.specs is not None:
        cache.specs.save(keep={str(p) for p in paths} if files is None else None)
    return result


def _add_spec(result: FolderResult, spec: LoadedSpec, origins: dict[str, str]) -> None:
    """Add a loaded spec, unless its dag_id is already taken (then it is that file's error)."""
    dag_id = spec.pipeline.dag_id
    if dag_id in result.specs:
        pos = spec.positions.find(("name",))
        result.errors[spec.display] = SpecErrors(
            [SpecError(f"pipeline {dag_id!r} is already defined in {origins[dag_id]}", pos, ("name",))]
        )
        return
    origins[dag_id] = spec.display
    result.specs[dag_id] = spec


def _check_references(result: FolderResult, known: set[str]) -> None:
    """Move the specs that name an unknown pipeline from ``specs`` to ``errors``."""
    for dag_id, spec in list(result.specs.items()):
        if semantics.references_ok(spec.pipeline, known):
            continue
        try:
            result.errors[spec.display] = SpecErrors(semantics.check_references(spec.pipeline, spec.positions, known))
        except Exception as exc:  # reloading a cached spec's positions failed: still only this file's error
            result.errors[spec.display] = unexpected_error(spec.display, exc)
        del result.specs[dag_id]


def unexpected_error(display: str, exc: BaseException) -> SpecErrors:
    """An exception no check foresaw (RecursionError, MemoryError, a gennaker bug) as the error of one spec file."""
    log.error("gennaker: loading %s failed unexpectedly", display, exc_info=exc)
    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    message = f"gennaker could not load this spec ({what}); if the spec looks fine, please report it"
    return SpecErrors([SpecError(message, Position(display, 1, 1))])


def _names_of(paths: Iterable[Path], cache: FolderCache) -> set[str]:
    """dag_ids of specs that were not loaded (broken, or not asked for), so one error does not cascade."""
    out: set[str] = set()
    for path in paths:
        try:
            data = load_file(path, cache.display(path)).data
        except Exception:  # not even YAML (or worse): its name is unknowable
            continue
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            continue
        app = data.get("application")
        for doc in reversed(cache.defaults(path.parent)[0] if app is None else []):
            if isinstance(doc.data, dict) and "application" in doc.data:
                app = doc.data["application"]  # the nearest defaults.yaml that names one
                break
        if isinstance(app, str):
            out.add(f"{app}.{data['name']}")
    return out


def stage_position(spec: LoadedSpec, stage: StageBase, field_name: str | None = None) -> Position | None:
    """Where a stage (or one of its fields) is written."""
    index = spec.pipeline.stages.index(stage)  # type: ignore[arg-type]
    loc: tuple[str | int, ...] = ("stages", index)
    if field_name:
        loc = (*loc, field_name)
    return spec.positions.find(loc, key=field_name is not None)
