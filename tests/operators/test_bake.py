"""The bake stage's artifact and version handling."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from fakecloud import FakeProvider

from gennaker.artifact_refs import ArtifactRefused, parse_rule
from gennaker.cloud.model import BakeRequest, Operation, OperationKind
from gennaker.cloud.provider import IdempotencyKey
from gennaker.operators import base as sg
from gennaker.operators.bake import BakeOperator, artifacts_dir, resolve_artifact, version_from_name
from gennaker.operators.server_group import CloudStageFailed


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
    assert resolve_artifact("hello-1.0.whl") == str((tmp_path / "arts" / "hello-1.0.whl").resolve())
    assert resolve_artifact("/abs/hello-1.0.whl", ["file:///abs/"]) == "/abs/hello-1.0.whl"
    assert resolve_artifact("https://x/y/hello-1.0.whl", ["https://x/y/"]) == "https://x/y/hello-1.0.whl"
    monkeypatch.delenv("GENNAKER_ARTIFACTS")
    monkeypatch.setenv("GENNAKER_HOME", str(tmp_path / "home"))
    assert artifacts_dir() == tmp_path / "home" / "artifacts"


# --------------------------------------------------------------------------- untrusted references

ALLOW = ["https://artifacts.example.com/builds/", "http://127.0.0.1:8700/"]


@pytest.fixture
def arts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    folder = tmp_path / "arts"
    (folder / "slow").mkdir(parents=True)
    (folder / "hello-1.0.whl").write_bytes(b"wheel")
    (tmp_path / "secret-1.0.whl").write_bytes(b"not yours")
    monkeypatch.setenv("GENNAKER_ARTIFACTS", str(folder))
    return folder


@pytest.mark.parametrize(
    ("reference", "says"),
    [
        ("../secret-1.0.whl", "'..' is not allowed"),
        ("slow/../../secret-1.0.whl", "'..' is not allowed"),
        ("~/hello-1.0.whl", "'~' is not expanded"),
        ("~root/hello-1.0.whl", "'~' is not expanded"),
        ("/etc/passwd", "no rule of the pipeline's artifacts.allow covers it"),
        ("file:///etc/passwd", "no rule of the pipeline's artifacts.allow covers it"),
        ("file://otherhost/x-1.0.whl", "names a local path"),
        ("https://artifacts.example.com.evil.io/builds/x-1.0.whl", "add one such as"),
        ("https://artifacts.example.com@evil.io/builds/x-1.0.whl", "not allowed"),
        ("http://artifacts.example.com/builds/x-1.0.whl", "not allowed"),  # scheme is part of the rule
        ("https://artifacts.example.com:8443/builds/x-1.0.whl", "not allowed"),  # so is the port
        ("https://artifacts.example.com/builds-evil/x-1.0.whl", "not allowed"),  # a path prefix is a folder
        ("https://artifacts.example.com/builds/../admin/x-1.0.whl", "'.' or '..' segments"),
        ("http://127.0.0.2:8700/x-1.0.whl", "not allowed"),
        ("ftp://artifacts.example.com/builds/x-1.0.whl", "scheme 'ftp' is not supported"),
        ("http://127.0.0.1:87OO/x-1.0.whl", "is not a valid URL"),
        ("https://[::1/x-1.0.whl", "is not a valid URL"),
    ],
)
def test_references_that_leave_where_they_belong_are_refused(arts: Path, reference: str, says: str) -> None:
    with pytest.raises(ArtifactRefused, match=re.escape(says)):
        resolve_artifact(reference, ALLOW)


def test_the_refusal_says_which_allow_list_to_extend_and_shows_no_credentials(arts: Path) -> None:
    with pytest.raises(ArtifactRefused) as info:
        resolve_artifact("https://bob:hunter22@evil.io/x-1.0.whl?X-Amz-Signature=abcdef123", ALLOW)
    message = str(info.value)
    assert "artifacts.allow (in the pipeline or a defaults.yaml)" in message
    assert "https://artifacts.example.com/builds/, http://127.0.0.1:8700/" in message
    assert "hunter22" not in message and "abcdef123" not in message
    assert "https://***@evil.io/x-1.0.whl?X-Amz-Signature=***" in message


@pytest.mark.parametrize(
    "reference",
    [
        "https://artifacts.example.com/builds/x-1.0.whl",
        "https://ARTIFACTS.example.com:443/builds/nightly/x-1.0.whl",
        "https://u:p@artifacts.example.com/builds/x-1.0.whl?X-Amz-Signature=abc",
        "http://127.0.0.1:8700/x-1.0.whl",
    ],
)
def test_allowed_urls_pass_unchanged(arts: Path, reference: str) -> None:
    assert resolve_artifact(reference, ALLOW) == reference


def test_a_symlink_inside_the_folder_that_leads_out_is_refused(arts: Path, tmp_path: Path) -> None:
    (arts / "innocent-1.0.whl").symlink_to(tmp_path / "secret-1.0.whl")
    (arts / "slow" / "outside").symlink_to(tmp_path)
    (arts / "alias-1.0.whl").symlink_to(arts / "hello-1.0.whl")
    for reference in ("innocent-1.0.whl", "slow/outside/secret-1.0.whl"):
        with pytest.raises(ArtifactRefused, match="leads outside the artifact folder") as info:
            resolve_artifact(reference)
        assert str(tmp_path) not in str(info.value)  # no host path beyond the artifact folder's name
    assert resolve_artifact("alias-1.0.whl") == str((arts / "hello-1.0.whl").resolve())  # inside: fine


def test_absolute_paths_need_a_file_rule(arts: Path, tmp_path: Path) -> None:
    builds = tmp_path / "builds"
    builds.mkdir()
    (builds / "x-1.0.whl").write_bytes(b"x")
    (builds / "escape-1.0.whl").symlink_to(tmp_path / "secret-1.0.whl")
    rule = [f"file://{builds}/"]
    assert resolve_artifact(str(builds / "x-1.0.whl"), rule) == str((builds / "x-1.0.whl").resolve())
    assert resolve_artifact(f"file://{builds}/x-1.0.whl", rule) == str((builds / "x-1.0.whl").resolve())
    with pytest.raises(ArtifactRefused, match="no rule"):
        resolve_artifact(str(builds / "x-1.0.whl"))
    with pytest.raises(ArtifactRefused, match="no rule"):
        resolve_artifact(str(builds / "escape-1.0.whl"), rule)  # the real path decides
    with pytest.raises(ArtifactRefused, match="no rule"):
        resolve_artifact(f"{builds}/../secret-1.0.whl", rule)


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        ("artifacts.example.com", "a rule is an https://, http:// or file:/// URL prefix"),
        ("https://", "names a host"),
        ("https://u:p@artifacts.example.com/", "no credentials, query or fragment"),
        ("https://artifacts.example.com/?a=b", "no credentials, query or fragment"),
        ("https://artifacts.example.com/a/../b/", "no '.' or '..' segments"),
        ("file:///", "defeats the artifact folder"),
        ("file://host/srv/", "names a local folder"),
        ("s3://bucket/", "a rule is an https://"),
    ],
)
def test_bad_allow_rules_are_spec_errors(rule: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_rule(rule)


# --------------------------------------------------------------------------- the operator


class FakeTI:
    dag_id, run_id, task_id, map_index, try_number, max_tries = "hello.deliver", "manual__1", "bake", -1, 1, 0

    def __init__(self) -> None:
        self.xcom: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[key] = value

    def xcom_pull(self, task_ids: str | None = None, key: str = "return_value", **_: Any) -> Any:
        return self.xcom.get(key)


class BakingProvider(FakeProvider):
    """Bakes at once and keeps the requests it got."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[BakeRequest] = []

    def bake(self, request: BakeRequest, key: IdempotencyKey) -> Operation:
        self.requests.append(request)
        op, _ = self._claim(key, OperationKind.BAKE, {})
        image = self.add_image(request.package, request.version, region=request.region)
        self.ops[op.id] = op.replace(result={"image_id": image.id}, started=image.created)
        return self._done(self.ops[op.id], "baked")


@pytest.fixture
def baking(monkeypatch: pytest.MonkeyPatch) -> BakingProvider:
    provider = BakingProvider()
    monkeypatch.setattr(sg, "provider_for", lambda conn_id="local", region=None: provider)
    return provider


def bake_operator(artifact: str, allow: list[str] | None = None) -> BakeOperator:
    return BakeOperator(task_id="bake", stage_id="bake", package="hello", artifact=artifact, artifact_allow=allow or [])


def test_the_stage_refuses_a_reference_naming_the_stage(arts: Path, baking: BakingProvider) -> None:
    with pytest.raises(CloudStageFailed, match=r"stage 'bake': artifact '../secret-1.0.whl': '..' is not allowed"):
        bake_operator("../secret-1.0.whl").run_stage({"ti": FakeTI()})
    assert baking.requests == []  # refused before anything is fetched


def test_credentials_reach_the_fetch_only(arts: Path, baking: BakingProvider, caplog: pytest.LogCaptureFixture) -> None:
    url = "http://bob:hunter22@127.0.0.1:8700/hello-1.0.whl?X-Amz-Credential=AKIAXYZ&X-Amz-Signature=f00dfeed&v=2"
    caplog.set_level(logging.INFO)
    result = bake_operator(url, ALLOW).run_stage({"ti": FakeTI()})
    assert [r.artifact for r in baking.requests] == [url]  # the fetch gets the real URL
    assert result["artifact"] == "http://***@127.0.0.1:8700/hello-1.0.whl?X-Amz-Credential=***&X-Amz-Signature=***&v=2"
    shown = caplog.text + json.dumps(result)
    for secret in ("bob", "hunter22", "AKIAXYZ", "f00dfeed"):
        assert secret not in shown
    assert result["version"] == "1.0"


def test_the_rendered_artifact_secrets_are_registered_with_airflows_masker(monkeypatch: pytest.MonkeyPatch) -> None:
    masked: list[str] = []
    monkeypatch.setattr("airflow.sdk.log.mask_secret", lambda secret, name=None: masked.append(secret))
    operator = bake_operator("{{ params.url }}", ALLOW)
    context = {"ti": FakeTI(), "params": {"url": "https://bob:hunter22@artifacts.example.com/builds/x.whl?sig=s3cr3t"}}
    operator.render_template_fields(context)
    assert {"hunter22", "bob:hunter22", "s3cr3t"} <= set(masked)


# --------------------------------------------------------------------------- the spec's artifacts.allow


def test_allow_rules_come_from_the_spec_or_a_defaults_file_and_reach_the_operator(tmp_path: Path) -> None:
    from gennaker.factory import build_all

    root = tmp_path / "pipelines"
    (root / "team").mkdir(parents=True)
    (root / "defaults.yaml").write_text("artifacts: {allow: ['https://artifacts.example.com/builds/']}\n")
    stage = "stages: [{id: bake, type: bake, package: hello, artifact: '{{ params.artifact }}'}]\n"
    (root / "team" / "a.yaml").write_text("application: hello\nname: a\n" + stage)
    (root / "team" / "b.yaml").write_text(
        "application: hello\nname: b\nartifacts: {allow: ['file:///srv/builds/']}\n" + stage
    )
    result = build_all(root)
    assert result.errors == {}
    dags = result.dags
    assert dags["hello.a"].task_dict["bake"].artifact_allow == ["https://artifacts.example.com/builds/"]
    assert dags["hello.b"].task_dict["bake"].artifact_allow == ["file:///srv/builds/"]


def test_a_bad_allow_rule_is_an_error_at_its_line(tmp_path: Path) -> None:
    from gennaker.errors import SpecErrors
    from gennaker.spec.loader import load_spec

    spec = tmp_path / "p.yaml"
    spec.write_text(
        "application: hello\nname: p\nartifacts:\n  allow:\n    - https://artifacts.example.com/\n"
        "    - https://u:p@evil.io/\nstages: [{id: w, type: wait, duration: 1s}]\n"
    )
    with pytest.raises(SpecErrors) as info:
        load_spec(spec, root=tmp_path)
    first = str(info.value).splitlines()[0]
    assert first.endswith(
        "p.yaml:6:7 artifacts.allow[1]: 'https://***@evil.io/': a rule names no credentials, query or fragment"
    )
