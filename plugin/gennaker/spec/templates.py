"""Pipeline templates: typed variables plus stages that a spec fills in and extends.

A template (``templates/<name>.yaml``)::

    template: {name: bake-deploy-canary-promote, description: ...}
    variables:
      - {name: package, type: string, description: what to bake}
      - {name: desired, type: integer, default: 2}
    stages:
      - {id: bake, type: bake, package: "${package}"}

A spec uses it with ``template: <name>`` and ``variables: {...}``; its own
``stages`` override template stages with the same id (field by field) and add
new ones. ``${name}`` alone is replaced by the typed value, inside a longer
string by its text; ``$${`` writes a literal ``${``. Airflow's own ``{{ }}``
Jinja is left alone for run time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from gennaker.durations import parse_duration
from gennaker.errors import Loc, Position, SpecError
from gennaker.spec.models import SpecModel
from gennaker.spec.validation import did_you_mean, errors_from_validation
from gennaker.spec.yamlsource import Document, SourceMap, load_file

VarType = Literal["string", "integer", "number", "boolean", "list", "object", "duration"]
_REF = re.compile(r"\$\$\{|\$\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}")
_WHOLE = re.compile(r"^\$\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}$")


class TemplateInfo(SpecModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str | None = None


class Variable(SpecModel):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    type: VarType = "string"
    description: str | None = None
    default: Any = None
    required: bool | None = Field(default=None, description="default: required when there is no default")

    @property
    def is_required(self) -> bool:
        return self.required if self.required is not None else self.default is None


class TemplateHeader(SpecModel):
    """The template-only part of a template file; the rest is pipeline fields."""

    template: TemplateInfo
    variables: list[Variable] = Field(default_factory=list)


def check_type(var: Variable, value: Any) -> str | None:
    """None if ``value`` fits the variable's type, else what is wrong."""
    t = var.type
    ok = {
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "list": isinstance(value, list),
        "object": isinstance(value, dict),
        "duration": True,
    }[t]
    if t == "duration":
        try:
            parse_duration(value)
        except ValueError as exc:
            return str(exc)
    if not ok:
        return f"must be of type {t} (got {type(value).__name__} {value!r})"
    return None


def locate_template(name: str, search_path: list[Path]) -> Path | None:
    """The file of template ``name``: the first ``<name>.yaml`` (or ``.yml``) on the search path."""
    for folder in search_path:
        for ext in (".yaml", ".yml"):
            candidate = folder / f"{name}{ext}"
            if candidate.is_file():
                return candidate
    return None


def find_template(name: str, search_path: list[Path], where: Position | None) -> Path:
    found = locate_template(name, search_path)
    if found is not None:
        return found
    known = sorted({p.stem for folder in search_path if folder.is_dir() for p in folder.glob("*.y*ml")})
    places = ", ".join(str(p) for p in search_path) or "no template folder found"
    raise SpecError(
        f"unknown template {name!r}{did_you_mean(name, known)}; looked in {places}"
        + (f"; known: {', '.join(known)}" if known else ""),
        where,
        ("template",),
    )


def _substitute(value: Any, variables: dict[str, Any], loc: Loc, positions: SourceMap) -> Any:
    if isinstance(value, dict):
        return {k: _substitute(v, variables, (*loc, k), positions) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, variables, (*loc, i), positions) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    whole = _WHOLE.match(value)
    if whole:
        return _lookup(whole.group(1), variables, loc, positions)

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$${":
            return "${"
        found = _lookup(m.group(1), variables, loc, positions)
        return str(found).lower() if isinstance(found, bool) else str(found)  # YAML's text: true, not True

    return _REF.sub(repl, value)


def _lookup(name: str, variables: dict[str, Any], loc: Loc, positions: SourceMap) -> Any:
    if name not in variables:
        raise SpecError(
            f"template uses undeclared variable {name!r}{did_you_mean(name, variables)}",
            positions.find(loc),
            loc,
        )
    return variables[name]


def expand(spec: Document, search_path: list[Path]) -> tuple[dict[str, Any], SourceMap]:
    """Apply the template a spec names; return the pipeline data and its positions.

    A spec without ``template`` is returned unchanged.
    """
    data = spec.data
    if not isinstance(data, dict) or "template" not in data:
        return data, spec.positions
    errors: list[SpecError] = []
    name = data["template"]
    if not isinstance(name, str):
        raise SpecError("'template' must be a template name", spec.positions.find(("template",)), ("template",))
    path = find_template(name, search_path, spec.positions.find(("template",)))
    tdoc = load_file(path, _display(path))
    if not isinstance(tdoc.data, dict):
        raise SpecError("a template must be a mapping", tdoc.positions.find(()))
    header_data = {k: tdoc.data[k] for k in ("template", "variables") if k in tdoc.data}
    try:
        header = TemplateHeader.model_validate(header_data)
    except ValidationError as exc:
        raise _many(errors_from_validation(exc, header_data, tdoc.positions, TemplateHeader)) from None

    given = data.get("variables") or {}
    vpos = ("variables",)
    if not isinstance(given, dict):
        raise SpecError("'variables' must be a mapping of name: value", spec.positions.find(vpos), vpos)
    declared = {v.name: v for v in header.variables}
    values: dict[str, Any] = {}
    for key in given:
        if key not in declared:
            errors.append(
                SpecError(
                    f"template {name!r} has no variable {key!r}{did_you_mean(key, declared)}",
                    spec.positions.find((*vpos, key), key=True),
                    (*vpos, key),
                )
            )
    for var in header.variables:
        if var.name in given:
            problem = check_type(var, given[var.name])
            if problem:
                errors.append(SpecError(problem, spec.positions.find((*vpos, var.name)), (*vpos, var.name)))
            values[var.name] = given[var.name]
        elif var.is_required:
            desc = f" ({var.description})" if var.description else ""
            errors.append(
                SpecError(
                    f"missing variable {var.name!r} of type {var.type}{desc} required by template {name!r}",
                    spec.positions.find(vpos if "variables" in data else ("template",), key=True),
                    vpos,
                )
            )
        else:
            values[var.name] = var.default
    if errors:
        raise _many(errors)

    body = {k: v for k, v in tdoc.data.items() if k not in ("template", "variables")}
    body = _substitute(body, values, (), tdoc.positions)
    positions = SourceMap()
    positions.merge(tdoc.positions)

    merged = dict(body)
    for key, value in data.items():
        if key in ("template", "variables"):
            continue
        if key == "stages":
            continue
        merged[key] = value
        positions.override(spec.positions.subtree((key,)), (key,))
        if (key,) in spec.positions.keys:
            positions.keys[(key,)] = spec.positions.keys[(key,)]
    if "stages" in data:
        merged["stages"] = _merge_stages(body.get("stages") or [], data["stages"], spec.positions, positions)
    positions.values.setdefault((), spec.positions.find(()) or Position(spec.path, 1, 1))
    positions.values[()] = spec.positions.values.get((), positions.values[()])
    return merged, positions


def _merge_stages(base: list[Any], extra: Any, spec_pos: SourceMap, positions: SourceMap) -> Any:
    if not isinstance(extra, list):
        positions.override(spec_pos.subtree(("stages",)), ("stages",))
        return extra  # validation reports that it must be a list
    out = [dict(s) if isinstance(s, dict) else s for s in base]
    index = {s.get("id"): i for i, s in enumerate(out) if isinstance(s, dict)}
    for j, stage in enumerate(extra):
        sub = spec_pos.subtree(("stages", j))
        if isinstance(stage, dict) and stage.get("id") in index:
            i = index[stage["id"]]
            out[i] = _deep_merge(out[i], stage)
            positions.override(sub, ("stages", i))
        else:
            out.append(stage)
            positions.override(sub, ("stages", len(out) - 1))
    return out


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _many(errors: list[SpecError]) -> Exception:
    from gennaker.errors import SpecErrors

    return SpecErrors(errors)


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
