"""``bake``: an artifact on a base becomes an immutable image, one per region, in parallel.

The artifact comes from the stage (Jinja-templated, so ``{{ params.artifact }}`` or
``{{ dag_run.conf.artifact }}`` pass on what the pipeline was triggered with): a path,
a ``file://`` or an ``http(s)://`` URL. A relative path is looked up in the artifact
folder, ``$GENNAKER_ARTIFACTS`` (default ``<gennaker home>/artifacts``), where the demo
and local builds put theirs. The version defaults to the one in the artifact's file
name (``hello_service-1.2.0-py3-none-any.whl``, ``hello-1.2.0.tar.gz``,
``hello-1.2.0.jar``).

The reference is untrusted (whoever may trigger a run chose it): a relative path must stay
inside the artifact folder, and an absolute path, ``file://`` or ``http(s)://`` URL needs a
rule of the pipeline's ``artifacts.allow`` (:mod:`gennaker.artifact_refs`). Credentials in a
URL (userinfo, presigned query) go only to the fetch: logs and XCom show it redacted.

Same inputs, same image: unless ``rebake: true`` the provider returns the image it baked
before from the same artifact bytes, base and options, at once. Every region's bake is
its own idempotent call (``bake-<region>``), so a retried task finds the images its
first try made.

Outputs: ``imageId`` (the first region's), ``images`` (region -> image id), ``package``,
``version``, ``artifact``, ``reused`` (regions whose image already existed).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from gennaker.artifact_refs import ArtifactRefused, check_reference
from gennaker.operators.server_group import CloudStageFailed, CloudStageOperator
from gennaker.redact import redact_url, url_secrets

if TYPE_CHECKING:
    from gennaker.cloud.model import Operation

ARTIFACTS_ENV = "GENNAKER_ARTIFACTS"

# name-version[-...].whl / .tar.gz / .tgz / .tar / .jar / .zip
_VERSIONED = re.compile(
    r"^(?P<name>[A-Za-z0-9_.-]+?)-(?P<version>\d[A-Za-z0-9_.+!]*?)(?:-[^-]+-[^-]+-[^-]+)?"
    r"\.(?:whl|tar\.gz|tgz|tar|jar|zip)$"
)


def artifacts_dir() -> Path:
    """Where relative artifact paths are looked up."""
    if os.environ.get(ARTIFACTS_ENV):
        return Path(os.environ[ARTIFACTS_ENV]).expanduser()
    from gennaker.paths import gennaker_home

    return gennaker_home() / "artifacts"


def resolve_artifact(reference: str, allow: Sequence[str] = ()) -> str:
    """A real path inside :func:`artifacts_dir` or an allowed path/URL for the provider.

    Raises :class:`~gennaker.artifact_refs.ArtifactRefused` for a reference that leaves the
    artifact folder or that no rule of ``allow`` (the pipeline's ``artifacts.allow``) covers.
    """
    return check_reference(reference, allow, artifacts_dir())


def version_from_name(reference: str) -> str | None:
    """The version in an artifact's file name, if it has the usual ``name-version.ext`` form."""
    name = Path(urlparse(reference).path or reference).name.split("#", 1)[0]
    match = _VERSIONED.match(name)
    return match.group("version") if match else None


class BakeOperator(CloudStageOperator):
    """Bake an artifact into an image in each region asked for."""

    gennaker_stage_type = "bake"
    template_fields: Sequence[str] = ("account", "region", "package", "version", "artifact", "tags")

    def __init__(
        self,
        *,
        package: str,
        application: str | None = None,
        version: str | None = None,
        artifact: str | None = None,
        base_image: str = "python-3.11",
        base_label: str = "release",
        regions: Sequence[str] = (),
        rebake: bool = False,
        start_command: str | None = None,
        tags: Mapping[str, str] | None = None,
        artifact_allow: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.package = package
        self.application = application
        self.version = version
        self.artifact = artifact
        self.base_image = base_image
        self.base_label = base_label
        self.regions = list(regions)
        self.rebake = rebake
        self.start_command = start_command
        self.tags = dict(tags or {})
        self.artifact_allow = list(artifact_allow)

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        """Render, then register the artifact URL's secrets with Airflow's masker.

        Airflow stores and shows the rendered fields (the task's Rendered Template tab)
        and masks registered secrets there and in every log line, so a presigned URL or a
        password from the trigger is masked before anything shows the rendered artifact.
        """
        super().render_template_fields(context, jinja_env)
        from airflow.sdk.log import mask_secret

        for secret in url_secrets(str(self.artifact or "")):
            mask_secret(secret)

    def run_stage(self, context: Any) -> Any:
        from gennaker.cloud.model import BakeRequest

        artifact_ref = str(self.artifact or "").strip()
        if not artifact_ref:
            raise CloudStageFailed(
                f"stage {self.stage_id!r}: no artifact to bake: give the stage an artifact (a path or URL), e.g. "
                f"artifact: '{{{{ params.artifact }}}}' and a pipeline parameter 'artifact'"
            )
        try:
            artifact = resolve_artifact(artifact_ref, self.artifact_allow)
        except ArtifactRefused as error:
            raise CloudStageFailed(f"stage {self.stage_id!r}: {error}") from None
        shown = redact_url(artifact)  # the real URL (credentials, signature) goes to the fetch only
        version = str(self.version or "").strip() or version_from_name(artifact)
        if not version:
            raise CloudStageFailed(
                f"stage {self.stage_id!r}: cannot tell the version of {redact_url(artifact_ref)!r} from its name: "
                f"give the stage a version"
            )
        provider = self.get_provider()
        regions = self.regions or [self.region or provider.region]
        self.log.info(
            "baking %s %s from %s on %s in %s%s",
            self.package,
            version,
            shown,
            self.base_image,
            ", ".join(regions),
            " (rebake)" if self.rebake else "",
        )

        def bake(region: str) -> Operation:
            request = BakeRequest(
                package=self.package,
                version=version,
                artifact=artifact,
                application=self.application,
                base=self.base_image,
                base_label=self.base_label,  # type: ignore[arg-type]
                account=self.account,
                region=region,
                start_command=self.start_command,
                rebake=self.rebake,
                tags={str(k): str(v) for k, v in self.tags.items()},
            )
            with self.cloud_call(f"bake {self.package} {version} in {region}"):
                return provider.bake(request, self.key(context, f"bake-{region}"))

        if len(regions) == 1:
            ops = [bake(regions[0])]
        else:
            with ThreadPoolExecutor(max_workers=min(8, len(regions))) as pool:
                ops = list(pool.map(bake, regions))
        result = {
            "package": self.package,
            "version": version,
            "artifact": shown,
            "regions": regions,
            "operations": {region: op.id for region, op in zip(regions, ops, strict=True)},
        }
        self.wait_operations(context, ops, regions[0], method_name="baked", kwargs={"result": result})
        return self.baked(context, None, result)

    def baked(self, context: Any, event: Any = None, result: dict[str, Any] | None = None) -> Any:
        result = self.pending(context, result)
        if event is not None:
            self.check_event(event, f"baking {result.get('package')} {result.get('version')} did not finish")
        provider = self.get_provider()
        images: dict[str, str] = {}
        reused: list[str] = []
        for region, op_id in dict(result.pop("operations")).items():
            with self.cloud_call(f"read the bake in {region}"):
                op = provider.operation(op_id)
                if not op.succeeded:
                    raise CloudStageFailed(f"baking in {region} failed: {op.message}")
                image = provider.get_image(str(op.result["image_id"]), region=region)
            images[region] = image.id
            fresh = image.created >= op.started
            if not fresh:
                reused.append(region)
            self.log.info(
                "%s image %s (%s %s on %s) in %s",
                "baked" if fresh else "reused the existing",
                image.id,
                image.package,
                image.version,
                image.base,
                region,
            )
        first = images[result["regions"][0]]
        return {**result, "imageId": first, "images": images, "reused": reused}


__all__ = ["ARTIFACTS_ENV", "BakeOperator", "artifacts_dir", "resolve_artifact", "version_from_name"]
