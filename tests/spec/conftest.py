"""Helpers for spec tests: write YAML into a temporary folder and load it from there."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from gennaker.errors import SpecErrors
from gennaker.spec.loader import LoadedSpec, load_spec


@pytest.fixture
def write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], Path]:
    """``write("pipelines/a.yaml", text)``: a dedented file below tmp_path (also the cwd, so names are short)."""
    monkeypatch.chdir(tmp_path)

    def _write(rel: str, text: str) -> Path:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def load(tmp_path: Path, write: Callable[[str, str], Path]) -> Callable[..., LoadedSpec]:
    """``load(text)``: write ``spec.yaml`` and load it (root = tmp_path)."""

    def _load(text: str, name: str = "spec.yaml") -> LoadedSpec:
        return load_spec(write(name, text), root=tmp_path)

    return _load


@pytest.fixture
def errors(load: Callable[..., LoadedSpec]) -> Callable[..., list[str]]:
    """``errors(text)``: the headlines of every error of a spec that must not load."""

    def _errors(text: str, name: str = "spec.yaml") -> list[str]:
        with pytest.raises(SpecErrors) as info:
            load(text, name)
        return [e.headline() for e in info.value.errors]

    return _errors
