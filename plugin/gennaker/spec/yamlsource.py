"""Read YAML as plain data while keeping where every value came from.

Safety is that of ``yaml.safe_load``: only the YAML core types (maps, lists,
strings, numbers, booleans, null) are built, and any other tag (``!!python/...``,
custom ``!tags``) is an error with its position. Timestamps stay the strings
they were written as. Duplicate keys are errors too (plain PyYAML silently
keeps the last one). Anchors and aliases are refused: an alias that refers to
itself, or a few hundred bytes of nested aliases ("billion laughs"), would
otherwise expand without bound, and templates and defaults.yaml already share
what a spec would reuse.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gennaker.errors import Loc, Position, SpecError, register_source

try:  # libyaml's composer is several times faster; fall back to pure Python.
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - depends on the PyYAML build
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

_STR = "tag:yaml.org,2002:str"
_BOOL = "tag:yaml.org,2002:bool"
_SEQ = "tag:yaml.org,2002:seq"
_MAP = "tag:yaml.org,2002:map"
_SCALARS = {
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    _STR,
}
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
# Far deeper than any spec; deep enough nesting would otherwise exhaust Python's recursion limit.
MAX_DEPTH = 64
NO_ALIASES = "YAML aliases/anchors are not allowed in pipeline specs (use templates or defaults.yaml)"


@dataclass
class SourceMap:
    """Positions of the values (and of the keys) of a loaded document, by path."""

    values: dict[Loc, Position] = field(default_factory=dict)
    keys: dict[Loc, Position] = field(default_factory=dict)

    def find(self, loc: Loc, *, key: bool = False) -> Position | None:
        """The position of ``loc``, or of its nearest ancestor that has one."""
        table = self.keys if key else self.values
        probe = tuple(loc)
        while True:
            if probe in table:
                return table[probe]
            if key and probe in self.values:
                return self.values[probe]
            if not probe:
                return None
            probe = probe[:-1]

    def merge(self, other: SourceMap, prefix: Loc = ()) -> None:
        """Add ``other``'s positions (rooted at ``prefix``), keeping ours where both have one."""
        for loc, pos in other.values.items():
            self.values.setdefault(prefix + loc, pos)
        for loc, pos in other.keys.items():
            self.keys.setdefault(prefix + loc, pos)

    def override(self, other: SourceMap, prefix: Loc = ()) -> None:
        """Add ``other``'s positions (rooted at ``prefix``), replacing ours."""
        for loc, pos in other.values.items():
            self.values[prefix + loc] = pos
        for loc, pos in other.keys.items():
            self.keys[prefix + loc] = pos

    def subtree(self, prefix: Loc) -> SourceMap:
        """Positions below ``prefix``, re-rooted at it."""
        n = len(prefix)
        out = SourceMap()
        for loc, pos in self.values.items():
            if loc[:n] == prefix:
                out.values[loc[n:]] = pos
        for loc, pos in self.keys.items():
            if loc[:n] == prefix:
                out.keys[loc[n:]] = pos
        return out


@dataclass
class Document:
    """A loaded YAML file: its data and where each value is."""

    path: str
    data: Any
    positions: SourceMap


def _pos(file: str, mark: Any) -> Position:
    return Position(file, mark.line + 1, mark.column + 1)


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.positions = SourceMap()
        self._constructor = yaml.SafeLoader("")

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.positions.values[loc] = _pos(self.file, node.start_mark)
        if len(loc) > MAX_DEPTH:
            raise SpecError(f"nested more than {MAX_DEPTH} levels deep", _pos(self.file, node.start_mark), loc[:1])
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, loc)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ:
                raise self._bad_tag(node, loc)
            return [self.build(child, (*loc, i)) for i, child in enumerate(node.value)]
        if isinstance(node, yaml.ScalarNode):
            if node.tag == _TIMESTAMP:
                return node.value
            if node.tag == _STR:
                return node.value
            if node.tag == _BOOL and node.value.lower() not in ("true", "false"):
                # YAML 1.1 reads yes/no/on/off as booleans (`options: [yes, no]`, a key `on:`);
                # specs follow YAML 1.2, where only true and false are.
                return node.value
            if node.tag not in _SCALARS:
                raise self._bad_tag(node, loc)
            return self._scalar(node)
        raise self._bad_tag(node, loc)  # pragma: no cover - composer yields only these

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, Any]:
        if node.tag != _MAP:
            raise self._bad_tag(node, loc)
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise SpecError(
                    "YAML merge keys (<<) are not supported; use defaults.yaml or a template instead",
                    _pos(self.file, key_node.start_mark),
                    loc,
                )
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag not in _SCALARS:
                raise SpecError("mapping keys must be plain strings", _pos(self.file, key_node.start_mark), loc)
            key = key_node.value  # keys are names: the text as written (`on:` is "on", `1:` is "1")
            child = (*loc, key)
            if key in out:
                raise SpecError(
                    f"duplicate key {key!r} (first defined on line {self.positions.keys[child].line})",
                    _pos(self.file, key_node.start_mark),
                    child,
                )
            self.positions.keys[child] = _pos(self.file, key_node.start_mark)
            out[key] = self.build(value_node, child)
        return out

    def _scalar(self, node: yaml.ScalarNode) -> Any:
        # The safe constructor's own function for the tag, without construct_object's bookkeeping.
        return yaml.SafeLoader.yaml_constructors[node.tag](self._constructor, node)

    def _bad_tag(self, node: yaml.Node, loc: Loc) -> SpecError:
        return SpecError(
            f"unsupported YAML tag {node.tag!r}: specs hold only maps, lists, strings, numbers and booleans",
            _pos(self.file, node.start_mark),
            loc,
        )


def _refuse_aliases(text: str, file: str) -> None:
    """Raise at the first anchor (``&a``) or alias (``*a``), before anything is expanded."""
    if "&" not in text and "*" not in text:
        return  # no event can carry one: skip the scan (most specs)
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise SpecError(NO_ALIASES, _pos(file, event.start_mark))


def parse_text(text: str, file: str) -> Document:
    """Parse YAML text (one document) into a :class:`Document`; errors carry positions."""
    register_source(file, text)
    try:
        _refuse_aliases(text, file)
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        position = _pos(file, mark) if mark is not None else Position(file, 1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError(f"invalid YAML: {problem}", position) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}", Position(file, 1, 1)) from None
    if node is None:
        return Document(file, None, SourceMap({(): Position(file, 1, 1)}))
    builder = _Builder(file)
    data = builder.build(node, ())
    return Document(file, data, builder.positions)


def load_file(path: str | Path, display: str | None = None) -> Document:
    """Read and parse one YAML file. ``display`` is the name used in errors."""
    name = display or str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"not UTF-8 text: {exc.reason}", Position(name, 1, 1)) from None
    except OSError as exc:
        raise SpecError(f"cannot read file: {exc.strerror}", Position(name, 1, 1)) from None
    return parse_text(text, name)
