"""The bake stage's artifact and version handling."""

from __future__ import annotations

from pathlib import Path

import pytest

from gennaker.operators.bake import artifacts_dir, resolve_artifact, version_from_name


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("hello_service-1.2.0-py3-none-any.whl", "1.2.0"),
        ("/builds/hello-2.0.0rc1.tar.gz", "2.0.0rc1"),
        ("https://ci.example/job/7/artifact/shop-api-3.4.5.jar", "3.4.5"),
        ("file:///tmp/tool-10.0.tgz#sha256=abc", "10.0"),
        ("hello.whl", None),
        ("README", None),
    ],
)
def test_version_from_the_artifact_name(name: str, version: str | None) -> None:
    assert version_from_name(name) == version


def test_relative_artifacts_come_from_the_artifact_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GENNAKER_ARTIFACTS", str(tmp_path / "arts"))
    assert artifacts_dir() == tmp_path / "arts"
    assert resolve_artifact("hello-1.0.whl") == str(tmp_path / "arts" / "hello-1.0.whl")
    assert resolve_artifact("/abs/hello-1.0.whl") == "/abs/hello-1.0.whl"
    assert resolve_artifact("https://x/y/hello-1.0.whl") == "https://x/y/hello-1.0.whl"
    monkeypatch.delenv("GENNAKER_ARTIFACTS")
    monkeypatch.setenv("GENNAKER_HOME", str(tmp_path / "home"))
    assert artifacts_dir() == tmp_path / "home" / "artifacts"
