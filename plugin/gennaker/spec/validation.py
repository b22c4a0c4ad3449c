"""Turn pydantic's errors into :class:`SpecError` with file, line, field and a hint."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ValidationError

from gennaker.errors import Loc, SpecError
from gennaker.spec.yamlsource import SourceMap


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    """`` (did you mean 'dependsOn'?)`` or an empty string."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    if not close:
        lowered = {str(c).lower(): str(c) for c in choices}
        if str(word).lower() in lowered:
            close = [lowered[str(word).lower()]]
    return f" (did you mean {close[0]!r}?)" if close else ""


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types an annotation may hold (Optional, Annotated and unions opened)."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        out: list[Any] = []
        for arg in get_args(annotation):
            out.extend(_unwrap(arg))
        return out
    return [annotation]


def _aliases(model: type[BaseModel]) -> dict[str, str]:
    """alias -> attribute name."""
    return {(f.alias or name): name for name, f in model.model_fields.items()}


def _pick(candidates: list[Any], value: Any) -> Any:
    """Choose the member of a (discriminated) union that ``value`` is meant for."""
    models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    if len(models) > 1 and isinstance(value, dict):
        for m in models:
            tf = m.model_fields.get("type")
            if tf is not None and get_origin(tf.annotation) is Literal and value.get("type") in get_args(tf.annotation):
                return m
        return None
    if models:
        return models[0]
    for c in candidates:
        if get_origin(c) in (list, dict):
            return c
    return None


def model_at(root: type[BaseModel], loc: Loc, data: Any) -> Any:
    """The model class (or list/dict type) that describes the value at ``loc``."""
    current: Any = root
    value = data
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            name = _aliases(current).get(str(part))
            if name is None:
                return None
            annotation = current.model_fields[name].annotation
            value = value.get(part) if isinstance(value, dict) else None
            current = _pick(_unwrap(annotation), value)
        elif get_origin(current) is list and isinstance(part, int):
            value = value[part] if isinstance(value, list) and part < len(value) else None
            current = _pick(_unwrap(get_args(current)[0]), value)
        elif get_origin(current) is dict:
            value = value.get(part) if isinstance(value, dict) else None
            current = _pick(_unwrap(get_args(current)[1]), value)
        else:
            return None
        if current is None:
            return None
    return current


def _resolve_loc(raw: tuple[Any, ...], data: Any, missing: bool = False) -> Loc:
    """Drop pydantic's union tags and validator names from a loc, keeping real keys and indexes."""
    out: list[str | int] = []
    value = data
    tagged: Any = None  # the mapping whose discriminated-union tag (its 'type') was passed already
    for i, part in enumerate(raw):
        last = i == len(raw) - 1
        if isinstance(value, dict) and value is not tagged and isinstance(part, str) and value.get("type") == part:
            tagged = value  # the union member pydantic tried, e.g. 'canary': not the stage's 'canary' key
        elif isinstance(value, dict) and part in value:
            out.append(part)
            value = value[part]
        elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            out.append(part)
            value = value[part]
        elif missing and last and isinstance(value, dict) and isinstance(part, str):
            out.append(part)  # a missing key of this mapping
        # anything else is a union tag such as 'deploy' or 'function-after[...]': skip it
    return tuple(out)


_BOUNDS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}


def _message(err: dict[str, Any], loc: Loc, data: Any, root: type[BaseModel]) -> tuple[str, bool]:
    """(message, whether it concerns the key rather than the value)."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind in _BOUNDS:
        op, key = _BOUNDS[kind]
        return f"must be {op} {ctx.get(key)} (got {value!r})", False
    if kind == "missing":
        return f"missing required field {loc[-1]!r}" if loc else "missing required field", True
    if kind == "extra_forbidden":
        parent = model_at(root, loc[:-1], data)
        choices = list(_aliases(parent)) if isinstance(parent, type) else []
        hint = did_you_mean(str(loc[-1]), choices)
        return f"unknown field {loc[-1]!r}{hint}", True
    if kind == "union_tag_invalid":
        expected = ctx.get("expected_tags", "")
        tags = [t.strip().strip("'") for t in str(expected).split(",")]
        return (
            f"unknown type {ctx.get('tag')!r}{did_you_mean(str(ctx.get('tag')), tags)}; one of: {expected}",
            False,
        )
    if kind == "union_tag_not_found":
        return "missing 'type'", False
    if kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        options = [o.strip().strip("'") for o in expected.replace(" or ", ",").split(",") if o.strip()]
        return f"{value!r} is not allowed{did_you_mean(str(value), options)}; one of: {expected}", False
    if kind == "string_pattern_mismatch":
        return f"{value!r} does not match the pattern {ctx.get('pattern')}", False
    if kind == "value_error":
        return str(ctx.get("error", err["msg"])), False
    if kind in ("too_short", "too_long"):
        return err["msg"][0].lower() + err["msg"][1:], False
    msg = err["msg"]
    if value is not None and not isinstance(value, dict | list):
        msg = f"{msg} (got {value!r})"
    return msg[0].lower() + msg[1:], False


def errors_from_validation(
    exc: ValidationError, data: Any, positions: SourceMap, root: type[BaseModel], prefix: Loc = ()
) -> list[SpecError]:
    """One SpecError per pydantic error, positioned via ``positions``."""
    out: list[SpecError] = []
    seen: set[tuple[Loc, str]] = set()
    for err in exc.errors(include_url=False):
        loc = _resolve_loc(tuple(err["loc"]), data, missing=err["type"] == "missing")
        if err["type"] == "union_tag_invalid":
            loc = (*loc, "type")
        message, on_key = _message(dict(err), loc, data, root)
        if (loc, message) in seen:
            continue
        seen.add((loc, message))
        full = prefix + loc
        if err["type"] == "missing":
            position = positions.find(full[:-1])
        else:
            position = positions.find(full, key=on_key)
        out.append(SpecError(message, position, full))
    return out
