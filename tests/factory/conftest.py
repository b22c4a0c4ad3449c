"""Helpers for DAG-generation tests: a pipelines folder in tmp_path, built by the real factory."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from gennaker.factory import FactoryResult, build_all


@pytest.fixture
def pipelines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``pipelines/`` folder; the cwd is its parent, so specs are named ``pipelines/<file>``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GENNAKER_PIPELINES", raising=False)
    monkeypatch.delenv("_AIRFLOW_PARSING_CONTEXT_DAG_ID", raising=False)
    monkeypatch.delenv("_AIRFLOW_PARSING_CONTEXT_TASK_ID", raising=False)
    folder = tmp_path / "pipelines"
    folder.mkdir()
    return folder


@pytest.fixture
def write(pipelines: Path) -> Callable[[str, str], Path]:
    def _write(rel: str, text: str) -> Path:
        path = pipelines / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
        return path

    return _write


@pytest.fixture
def build(pipelines: Path) -> Callable[[], FactoryResult]:
    def _build() -> FactoryResult:
        return build_all(pipelines, base=pipelines.parent)

    return _build
