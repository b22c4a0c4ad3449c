"""Spec errors that point at a file, a line and a field.

One renderer serves the CLI, CI and the import errors shown in Airflow's UI::

    dags/pipelines/hello/deploy.yaml:41:7 stages[2].capacity.min: must be >= 0
       41 |       min: -1
          |       ^

Hierarchy::

    GennakerError
     +-- SpecError           one problem at one place in one file
     +-- SpecErrors          several SpecError (all problems of one or more files)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

Loc = tuple[str | int, ...]


class GennakerError(Exception):
    """Base of every error gennaker raises on purpose."""


def format_loc(loc: Loc) -> str:
    """``("stages", 2, "capacity", "min")`` -> ``stages[2].capacity.min``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


class Position(NamedTuple):
    """A place in a source file; line and column count from 1 (a tuple: cheap to make per node)."""

    file: str
    line: int
    column: int


class SpecError(GennakerError):
    """One problem in a pipeline spec, with where it is."""

    def __init__(self, message: str, position: Position | None = None, loc: Loc = ()) -> None:
        super().__init__(message)
        self.message = message
        self.position = position
        self.loc = loc

    @property
    def file(self) -> str | None:
        return self.position.file if self.position else None

    def headline(self) -> str:
        """``file:line:col field: message`` (the first line of :meth:`render`)."""
        where = ""
        if self.position is not None:
            where = f"{self.position.file}:{self.position.line}:{self.position.column} "
        field = f"{format_loc(self.loc)}: " if self.loc else ""
        return f"{where}{field}{self.message}"

    def render(self) -> str:
        """The headline, then the offending line with a caret under the column."""
        lines = [self.headline()]
        snippet = _snippet(self.position)
        if snippet:
            lines.extend(snippet)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.headline()


class SpecErrors(GennakerError):
    """Every problem found in one or more spec files."""

    def __init__(self, errors: Sequence[SpecError]) -> None:
        self.errors = sorted(errors, key=_sort_key)
        super().__init__(self.render())

    def render(self) -> str:
        return "\n\n".join(e.render() for e in self.errors)

    def __str__(self) -> str:
        return self.render()

    @classmethod
    def collect(cls, errors: Iterable[SpecError]) -> None:
        """Raise the errors as one, if there are any."""
        errs = list(errors)
        if errs:
            raise cls(errs)


def _sort_key(e: SpecError) -> tuple[str, int, int, str]:
    if e.position is None:
        return ("", 0, 0, e.message)
    return (e.position.file, e.position.line, e.position.column, e.message)


_sources: dict[str, list[str]] = {}


def register_source(name: str, text: str) -> None:
    """Remember a file's text under the name its errors use, for the snippet."""
    _sources[name] = text.splitlines()


def _snippet(position: Position | None) -> list[str]:
    if position is None:
        return []
    lines = _sources.get(position.file)
    if lines is None:
        try:
            lines = Path(position.file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return []
    if not 1 <= position.line <= len(lines):
        return []
    text = lines[position.line - 1]
    gutter = f"{position.line:>5} | "
    caret = " " * (len(gutter) - 2) + "| " + " " * max(position.column - 1, 0) + "^"
    return [gutter + text, caret]
