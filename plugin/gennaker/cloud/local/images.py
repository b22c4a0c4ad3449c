"""Baking for the local provider: an artifact on a base becomes an immutable image directory.

An image is a directory ``<gennaker home>/local/images/<image id>/`` holding the baked
app and its ``manifest.json``; the :class:`~gennaker.cloud.model.Image` in the state
store points at it (``Image.manifest`` is the manifest plus ``path``). What goes in:

================  ==============  ============================================================
artifact          base            image directory
================  ==============  ============================================================
wheel (``.whl``)  ``python-X.Y``  ``venv/``: a fresh virtualenv of Python X.Y with the wheel
or sdist                          installed (``pip install --no-index --no-deps``); start
                                  command ``venv/bin/python -m <package, - as _>``
``.tar.gz``,      any (``none``)  the tarball's files, extracted safely; the start command
``.tgz``, ``.tar``                must be given (split with :func:`shlex.split`)
``.jar``          ``jre-N``       the jar; start command ``java -jar <jar>`` (Java N or newer
                                  must be installed)
================  ==============  ============================================================

The artifact is a local path, a ``file://`` or an ``http(s)://`` URL, optionally ending
in ``#sha256=<hex>`` (then a file with other bytes is refused). It is copied (or
downloaded) first and everything is checked on the copy: a wheel must be a sound zip
with one ``.dist-info/METADATA`` whose name and version match the request; a
``.tar.gz`` on a ``python-X.Y`` base whose single top directory holds ``PKG-INFO`` is an
sdist (same checks), any other tarball is extracted; a tarball may not hold absolute
paths, ``..``, links out of the image, special files or a top-level ``manifest.json``.

The request's ``start_command`` replaces the default. An sdist only bakes if pip can
build it offline: its build backend must be among the interpreter's bundled wheels or in
``<gennaker home>/local/wheelhouse`` (bundled setuptools is often too old to build
wheels alone). Bake wheels. pip itself is never installed into an image: the
interpreter's bundled pip wheel is unpacked once into ``images/.tools`` (or
``$GENNAKER_BAKE_TOOLS``) and run from there (ensurepip if there is none).

``manifest.json`` (``format`` 1): ``id``, ``name``, ``package``, ``version``,
``application``, ``account``, ``region``, ``base``, ``runtime`` (``kind`` python / java /
none, ``version``, ``implementation``, ``executable``), ``inputs_hash``, ``rebake``,
``created`` (ISO 8601, UTC), ``artifact`` (``file``, ``kind`` wheel / sdist / tarball /
jar, ``sha256``, ``size``, ``source``), ``start_command`` (argv list), ``env`` (Python
images: ``PYTHONUNBUFFERED=1``, ``PYTHONDONTWRITEBYTECODE=1`` so the image stays as baked),
``health_check`` (``{"path": "/health"}``; the tag ``bake.health_check_path`` changes it)
and ``tags``. Nothing writes to an image directory after it is renamed into place.

Every image is started the same way (see :func:`launch_spec`): ``start_command`` as an
argv list, with the image directory as the working directory (a relative program such
as ``venv/bin/python`` is relative to it), a minimal environment (PATH, HOME, LANG...:
:mod:`~gennaker.cloud.local.procenv`, never the caller's) plus the manifest's
``env``, the server group's environment, and ``PORT``, ``HOST`` (127.0.0.1),
``GENNAKER_INSTANCE_ID``, ``GENNAKER_SERVER_GROUP`` and ``GENNAKER_IMAGE_ID``. The
instance must serve its health check (``manifest["health_check"]["path"]``, default
``/health``) on ``$HOST:$PORT``.

**Same inputs, same image.** ``inputs_hash`` is a SHA-256 over the artifact's SHA-256
(its bytes, not its path), the package, version, base, the runtime actually found for
the base (e.g. ``CPython 3.11.7``: a new interpreter is a new base), the start command,
the health check path and the request's ``bake.*`` tags (bake options; other tags only
label the image). The image id is ``img-`` and 16 hex digits of a SHA-256 over the inputs
hash, the account, the region and a rebake number: images are per account and region
(the state keys them by id), and a bake whose inputs hash already has an image in the
account and region returns it (the newest) without baking. ``rebake=True`` always bakes
a fresh image: it takes the next free rebake number (1, 2, ...; recorded in the manifest
as ``rebake``), so the new image has a new id and the same inputs hash, and later plain
bakes of those inputs return it (the newest).

**Atomic and shared.** A bake builds into ``.tmp-*`` next to the final directory and
renames it into place once its manifest is written, so a crash never leaves a directory
that looks complete (leftovers of a crashed bake are removed by the next bake of the same
inputs). Bakes of the same inputs, from any number of processes, hold an exclusive
``flock`` on ``images/.lock-<key>`` while they check for an image and make one: they
end with one image. A directory whose record never reached the store (a crash between
the rename and the write) is adopted by the next bake of its inputs.

The pieces: :mod:`~gennaker.cloud.local.image_runtimes` (bases),
:mod:`~gennaker.cloud.local.image_artifacts` (fetching, checking and extracting artifacts),
:mod:`~gennaker.cloud.local.image_python` (virtualenvs, the bake's pip) and
:mod:`~gennaker.cloud.local.image_store` (image directories, manifests, ids, launching).
This module bakes with them, and is their public face.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gennaker.cloud.local import privfiles, processes
from gennaker.cloud.local.image_artifacts import (
    Artifact,
    ArtifactKind,
    extract_tarball,
    inspect_artifact,
    stage_artifact,
)
from gennaker.cloud.local.image_python import PYTHON_ENV, TOOLS_ENV, install_python, tools_dir
from gennaker.cloud.local.image_runtimes import Runtime, resolve_base
from gennaker.cloud.local.image_store import (
    DEFAULT_HEALTH_CHECK_PATH,
    MANIFEST,
    MANIFEST_FORMAT,
    STALE_STAGING_SECONDS,
    LaunchSpec,
    choose_image,
    fsync_dir,
    image_from_manifest,
    image_id_for,
    image_path,
    images_root,
    launch_spec,
    read_manifest,
    slot_key,
    sweep,
    write_json,
)
from gennaker.cloud.local.state import StateStore
from gennaker.cloud.model import BakeRequest, Image, utcnow
from gennaker.errors import CloudError, InvalidRequest

log = logging.getLogger(__name__)

BAKE_TAG_PREFIX = "bake."
"""Tags with this prefix are bake options and part of the inputs hash (``bake.health_check_path``)."""
LOCK_TIMEOUT_SECONDS = 900.0


# --------------------------------------------------------------------------- start commands and hashing


def _start_command(request: BakeRequest, artifact: Artifact, runtime: Runtime) -> list[str]:
    if request.start_command is not None:
        try:
            argv = shlex.split(request.start_command)
        except ValueError as error:
            raise InvalidRequest(
                f"start command {request.start_command!r} cannot be split: {error}",
                hint="quote it as a POSIX shell would (it is split with shlex, not run by a shell)",
            ) from None
        if not argv:
            raise InvalidRequest("the start command is empty", hint="give the command that starts the app")
        return argv
    if artifact.kind in ("wheel", "sdist"):
        return ["venv/bin/python", "-m", request.package.replace("-", "_")]
    if artifact.kind == "jar":
        if artifact.main_class is None:
            raise InvalidRequest(
                f"artifact {artifact.path.name} has no Main-Class in META-INF/MANIFEST.MF, so java -jar cannot run it",
                hint=f"give a start command, e.g. java -cp {artifact.path.name} com.example.Main",
            )
        return ["java", "-jar", artifact.path.name]
    raise InvalidRequest(
        f"a tarball ({artifact.path.name}) needs a start command",
        hint="give the bake stage a start_command, relative to the extracted files, e.g. ./bin/server "
        "or python3 app/server.py; it runs with PORT and HOST set",
    )


def _inputs_hash(
    request: BakeRequest, artifact: Artifact, runtime: Runtime, argv: Sequence[str], health_path: str
) -> str:
    inputs = {
        "format": MANIFEST_FORMAT,
        "artifact": {"sha256": artifact.sha256, "kind": artifact.kind},
        "package": request.package,
        "version": request.version,
        "base": request.base,
        "runtime": runtime.label(),
        "start_command": list(argv),
        "health_check_path": health_path,
        "bake_tags": {key: value for key, value in sorted(request.tags.items()) if key.startswith(BAKE_TAG_PREFIX)},
    }
    text = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- baking


@dataclass
class _Plan:
    request: BakeRequest
    artifact: Artifact
    runtime: Runtime
    argv: list[str]
    health_path: str
    inputs_hash: str
    env: dict[str, str] = field(default_factory=dict)


def bake(store: StateStore, request: BakeRequest, *, home: Path | None = None) -> Image:
    """Bake ``request`` into an image directory and record it; returns the image (an existing one if baked before).

    Synchronous (the provider runs it as an operation). Raises :class:`InvalidRequest`
    for a bad request or artifact (missing start command, unknown base, corrupt or
    mismatched artifact, missing interpreter), :class:`NotFound` for a missing
    artifact, :class:`ProviderUnavailable` when the lock or a download times out.
    """
    root = privfiles.private_dir(images_root(home))  # 0700: only our user lists or reads the images
    sweep(root)
    runtime = resolve_base(request.base)
    staging = root / f".stage-{uuid.uuid4().hex[:12]}"
    staging.mkdir(mode=0o700)
    try:
        path, source, expected = stage_artifact(request.artifact, staging)
        artifact = inspect_artifact(path, source, expected, request, python_base=runtime.kind == "python")
        _check_fits(artifact, runtime, request.base)
        argv = _start_command(request, artifact, runtime)
        health_path = request.tags.get(f"{BAKE_TAG_PREFIX}health_check_path") or DEFAULT_HEALTH_CHECK_PATH
        if not health_path.startswith("/"):
            raise InvalidRequest(f"health check path {health_path!r} must start with /")
        plan = _Plan(
            request=request,
            artifact=artifact,
            runtime=runtime,
            argv=argv,
            health_path=health_path,
            inputs_hash=_inputs_hash(request, artifact, runtime, argv, health_path),
            env=dict(PYTHON_ENV) if artifact.kind in ("wheel", "sdist") else {},
        )
        key = slot_key(plan.inputs_hash, request.account, request.region)
        lock = root / f".lock-{key[:32]}"
        with processes.flock(
            lock,
            timeout=LOCK_TIMEOUT_SECONDS,
            message=f"another bake of the same inputs has held {lock} for over {LOCK_TIMEOUT_SECONDS:.0f}s",
            hint="wait for it to finish (or end the stuck process), then retry",
            poll=0.1,
        ):
            for stale in root.glob(f".tmp-{key[:16]}-*"):  # a crashed bake of these inputs (we hold the lock)
                shutil.rmtree(stale, ignore_errors=True)
            existing, image_id, rebake = choose_image(store, root, request, plan.inputs_hash)
            if existing is not None:
                log.info("image %s already has these inputs (%s); not baking again", existing.id, plan.inputs_hash)
                return existing
            return _build(store, root, plan, key, image_id, rebake)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _check_fits(artifact: Artifact, runtime: Runtime, base: str) -> None:
    if artifact.kind in ("wheel", "sdist") and runtime.kind != "python":
        raise InvalidRequest(
            f"a Python {artifact.kind} ({artifact.path.name}) needs a python-X.Y base, not {base!r}",
            hint="set the bake stage's base_image to e.g. python-3.11",
        )
    if artifact.kind == "jar" and runtime.kind != "java":
        raise InvalidRequest(
            f"a jar ({artifact.path.name}) needs a jre-N base, not {base!r}",
            hint="set the bake stage's base_image to e.g. jre-17",
        )


def _build(store: StateStore, root: Path, plan: _Plan, key: str, image_id: str, rebake: int) -> Image:
    request, artifact, runtime = plan.request, plan.artifact, plan.runtime
    final = root / image_id
    work = root / f".tmp-{key[:16]}-{uuid.uuid4().hex[:8]}"
    work.mkdir(mode=0o700)  # becomes the image directory
    started = time.monotonic()
    try:
        if artifact.kind in ("wheel", "sdist"):
            module = plan.argv[-1] if request.start_command is None else None  # the default start runs -m
            install_python(work, final, runtime=runtime, artifact=artifact, module=module, tools=tools_dir(root))
        elif artifact.kind == "jar":
            shutil.copyfile(artifact.path, work / artifact.path.name)
        else:
            extract_tarball(artifact.path, work)
        created = utcnow()
        manifest: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "id": image_id,
            "name": f"{request.package}-{request.version}-{request.base}" + (f"-r{rebake}" if rebake else ""),
            "package": request.package,
            "version": request.version,
            "application": request.application,
            "account": request.account,
            "region": request.region,
            "base": request.base,
            "runtime": runtime.to_manifest(),
            "inputs_hash": plan.inputs_hash,
            "rebake": rebake,
            "created": created.isoformat(),
            "artifact": artifact.to_manifest(),
            "start_command": plan.argv,
            "env": plan.env,
            "health_check": {"path": plan.health_path},
            "tags": dict(request.tags),
        }
        write_json(work / MANIFEST, manifest)
        fsync_dir(work)
        os.rename(work, final)  # atomic: the image appears whole, or not at all
        fsync_dir(root)
    except OSError as error:
        shutil.rmtree(work, ignore_errors=True)
        raise CloudError(
            f"baking {image_id} in {root} failed: {error}", hint=f"check free space and permissions of {root}"
        ) from error
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    image = image_from_manifest(manifest, final)
    store.put_image(image)
    store.record_event(
        "image.baked",
        image.id,
        f"baked {request.package} {request.version} on {request.base} ({artifact.kind} {artifact.path.name}) "
        f"in {time.monotonic() - started:.1f}s",
        account=request.account,
        data={"inputs_hash": plan.inputs_hash, "rebake": rebake, "path": str(final)},
    )
    log.info("baked image %s (%s %s on %s) at %s", image.id, request.package, request.version, request.base, final)
    return image


__all__ = [
    "BAKE_TAG_PREFIX",
    "DEFAULT_HEALTH_CHECK_PATH",
    "LOCK_TIMEOUT_SECONDS",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "PYTHON_ENV",
    "STALE_STAGING_SECONDS",
    "TOOLS_ENV",
    "ArtifactKind",
    "LaunchSpec",
    "Runtime",
    "bake",
    "image_id_for",
    "image_path",
    "images_root",
    "launch_spec",
    "read_manifest",
    "resolve_base",
]
