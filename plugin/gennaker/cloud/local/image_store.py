"""The local image store: where image directories live, their manifests, ids, and how an instance starts.

An image is a directory ``<gennaker home>/local/images/<image id>/`` holding the baked app
and its ``manifest.json``; the :class:`~gennaker.cloud.model.Image` in the state store
points at it (``Image.manifest`` is the manifest plus ``path``). The image id is ``img-``
and 16 hex digits of a SHA-256 over the inputs hash, the account, the region and a rebake
number (:func:`image_id_for`). Directories are renamed into place whole and never written
after; one whose record never reached the state (a crash between the rename and the write)
is adopted by the next bake of its inputs (:func:`choose_image`). The format of the
manifest and how a bake fills it are told in :mod:`gennaker.cloud.local.images`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gennaker.cloud.local import privfiles
from gennaker.cloud.local.state import StateStore
from gennaker.cloud.model import BakeRequest, Image
from gennaker.errors import CloudError, InvalidRequest, NotFound
from gennaker.paths import gennaker_home

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
DEFAULT_HEALTH_CHECK_PATH = "/health"
STALE_STAGING_SECONDS = 24 * 3600.0


def images_root(home: Path | None = None) -> Path:
    """Where images live: ``<gennaker home>/local/images``."""
    return (home if home is not None else gennaker_home()) / "local" / "images"


def image_path(image: Image | str, home: Path | None = None) -> Path:
    """An image's directory: its manifest's ``path``, else ``<images root>/<id>``."""
    if isinstance(image, Image):
        recorded = image.manifest.get("path")
        if recorded:
            return Path(recorded)
        image = image.id
    return images_root(home) / image


def read_manifest(directory: Path) -> dict[str, Any]:
    """The ``manifest.json`` of an image directory; :class:`NotFound` if there is none."""
    try:
        data = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFound(
            f"no image at {directory} (no {MANIFEST})", hint="bake the image again; its directory was removed"
        ) from None
    except (OSError, ValueError) as error:
        raise CloudError(f"cannot read {directory / MANIFEST}: {error}", hint="bake the image again") from error
    if not isinstance(data, dict):
        raise CloudError(f"{directory / MANIFEST} is not a JSON object", hint="bake the image again")
    return data


# --------------------------------------------------------------------------- launching


@dataclass(frozen=True)
class LaunchSpec:
    """How to start one instance of an image: run ``argv`` in ``cwd`` with ``os.environ`` plus ``env``."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]
    health_check_path: str = DEFAULT_HEALTH_CHECK_PATH


def launch_spec(
    image: Image,
    *,
    port: int,
    instance_id: str,
    server_group: str,
    host: str = "127.0.0.1",
    environment: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> LaunchSpec:
    """The command, directory and environment of one instance of ``image``.

    ``env`` is what to add to the parent's environment: the manifest's ``env``, then
    ``environment`` (the server group's), then ``PORT``, ``HOST``,
    ``GENNAKER_INSTANCE_ID``, ``GENNAKER_SERVER_GROUP`` and ``GENNAKER_IMAGE_ID``. A
    relative program with a ``/`` (``venv/bin/python``) is made absolute in the image
    directory; a bare name (``java``) is left to ``PATH``.
    """
    directory = image_path(image, home)
    manifest = read_manifest(directory)
    argv = [str(part) for part in manifest.get("start_command") or []]
    if not argv:
        raise InvalidRequest(f"image {image.id} has no start command in {directory / MANIFEST}")
    if "/" in argv[0] and not os.path.isabs(argv[0]):
        argv[0] = str(directory / argv[0])
    env = {str(name): str(value) for name, value in (manifest.get("env") or {}).items()}
    env.update(environment or {})
    env.update(
        {
            "PORT": str(port),
            "HOST": host,
            "GENNAKER_INSTANCE_ID": instance_id,
            "GENNAKER_SERVER_GROUP": server_group,
            "GENNAKER_IMAGE_ID": image.id,
        }
    )
    health = manifest.get("health_check") or {}
    return LaunchSpec(argv, directory, env, str(health.get("path") or DEFAULT_HEALTH_CHECK_PATH))


# --------------------------------------------------------------------------- ids and records


def slot_key(inputs_hash: str, account: str, region: str) -> str:
    """The key of one inputs hash in one account and region: bakes of it share a lock and staging names."""
    return hashlib.sha256(f"{inputs_hash}\0{account}\0{region}".encode()).hexdigest()


def image_id_for(inputs_hash: str, account: str, region: str, rebake: int = 0) -> str:
    """``img-`` + 16 hex digits of SHA-256(inputs hash, account, region, rebake number)."""
    digest = hashlib.sha256(f"{inputs_hash}\0{account}\0{region}\0{rebake}".encode()).hexdigest()
    return f"img-{digest[:16]}"


def choose_image(
    store: StateStore, root: Path, request: BakeRequest, inputs_hash: str
) -> tuple[Image | None, str, int]:
    """The existing image to return, or the id and rebake number of the one to build (under the lock)."""
    recorded = store.find_images(account=request.account, region=request.region, inputs_hash=inputs_hash)
    intact = [image for image in recorded if (root / image.id / MANIFEST).is_file()]
    if intact and not request.rebake:
        return intact[0], "", 0
    taken = {image.id for image in intact}
    rebake = 0
    while True:
        image_id = image_id_for(inputs_hash, request.account, request.region, rebake)
        final = root / image_id
        if image_id not in taken:
            if (final / MANIFEST).is_file():
                adopted = _adopt(store, final, request, inputs_hash)
                if adopted is not None and not request.rebake:
                    return adopted, "", 0
            elif final.exists():  # not made by a bake (those appear whole): not trusted
                shutil.rmtree(final)
                return None, image_id, rebake
            else:
                return None, image_id, rebake
        rebake += 1


def _adopt(store: StateStore, directory: Path, request: BakeRequest, inputs_hash: str) -> Image | None:
    """Record an image whose directory was made but whose record was lost (a crash in between)."""
    try:
        manifest = read_manifest(directory)
        image = image_from_manifest(manifest, directory)
    except (CloudError, ValueError) as error:
        log.warning("not adopting %s: %s", directory, error)
        return None
    if (image.inputs_hash, image.account, image.region) != (inputs_hash, request.account, request.region):
        return None
    log.warning("adopting image %s, baked but not recorded (a bake was interrupted)", image.id)
    store.put_image(image)
    return image


def image_from_manifest(manifest: Mapping[str, Any], directory: Path) -> Image:
    """The state's record of the image in ``directory`` (``Image.manifest`` is the manifest plus ``path``)."""
    return Image(
        id=manifest["id"],
        name=manifest["name"],
        package=manifest["package"],
        version=manifest["version"],
        application=manifest.get("application"),
        base=manifest["base"],
        region=manifest["region"],
        account=manifest["account"],
        inputs_hash=manifest["inputs_hash"],
        created=manifest["created"],
        tags=manifest.get("tags") or {},
        manifest={**manifest, "path": str(directory)},
    )


# --------------------------------------------------------------------------- files


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as a private (0600) JSON file, on disk before this returns (a manifest is renamed next)."""
    with open(path, "w", encoding="utf-8", opener=privfiles.open_private) as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (a new file, a rename) durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def sweep(root: Path) -> None:
    """Remove staging and build directories that crashed bakes left behind more than a day ago."""
    cutoff = time.time() - STALE_STAGING_SECONDS
    for pattern in (".stage-*", ".tmp-*"):
        for path in root.glob(pattern):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    shutil.rmtree(path, ignore_errors=True)


__all__ = [
    "DEFAULT_HEALTH_CHECK_PATH",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "STALE_STAGING_SECONDS",
    "LaunchSpec",
    "choose_image",
    "fsync_dir",
    "image_from_manifest",
    "image_id_for",
    "image_path",
    "images_root",
    "launch_spec",
    "read_manifest",
    "slot_key",
    "sweep",
    "write_json",
]
