"""The artifacts a local bake reads: fetched, staged, told apart by kind, checked, extracted.

The artifact is a local path, a ``file://`` or an ``http(s)://`` URL, optionally ending
in ``#sha256=<hex>`` (then a file with other bytes is refused). It is copied (or
downloaded, through :mod:`gennaker.safehttp`; errors shown redacted) into a staging
folder first and everything is checked on the copy: a wheel must be a sound zip with one
``.dist-info/METADATA`` whose name and version match the request; a ``.tar.gz`` on a
``python-X.Y`` base whose single top directory holds ``PKG-INFO`` is an sdist (same
checks), any other tarball is extracted; a tarball may not hold absolute paths, ``..``,
links out of the image, special files or a top-level ``manifest.json``; a jar's
``Main-Class`` is read from its manifest.
"""

from __future__ import annotations

import email.parser
import hashlib
import os
import posixpath
import re
import shutil
import stat
import tarfile
import urllib.error
import urllib.parse
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gennaker.cloud.local.image_store import MANIFEST
from gennaker.cloud.model import BakeRequest
from gennaker.errors import CloudError, InvalidRequest, NotFound, ProviderUnavailable
from gennaker.redact import redact_text
from gennaker.safehttp import open_url

ArtifactKind = Literal["wheel", "sdist", "tarball", "jar"]

_SHA256_FRAGMENT = re.compile(r"#sha256=([0-9a-fA-F]{64})$")
_TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


@dataclass(frozen=True)
class Artifact:
    """A staged copy of the request's artifact, checked."""

    path: Path
    source: str
    sha256: str
    size: int
    kind: ArtifactKind
    name: str | None = None
    """Wheel and sdist: the distribution name in its metadata."""
    version: str | None = None
    main_class: str | None = None
    """Jar: the manifest's Main-Class."""
    sdist_root: str | None = None
    requires: tuple[str, ...] = ()
    """Wheel: its Requires-Dist (installed without them, so checked after)."""

    def to_manifest(self) -> dict[str, Any]:
        """The manifest's ``artifact``: file name, kind, sha256, size and where it came from."""
        return {
            "file": self.path.name,
            "kind": self.kind,
            "sha256": self.sha256,
            "size": self.size,
            "source": self.source,
        }


def stage_artifact(reference: str | None, staging: Path) -> tuple[Path, str, str | None]:
    """Copy (or download) the artifact into ``staging``; returns its path, a printable source and an expected sha256."""
    if not reference or not reference.strip():
        raise InvalidRequest(
            "the bake request has no artifact",
            hint="give the bake stage an artifact: a path or URL of a wheel, tarball or jar "
            "(e.g. a trigger's or a build stage's output)",
        )
    reference = reference.strip()
    expected = None
    fragment = _SHA256_FRAGMENT.search(reference)
    if fragment:
        expected = fragment[1].lower()
        reference = reference[: fragment.start()]
    parts = urllib.parse.urlsplit(reference)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        netloc = host + (f":{parts.port}" if parts.port else "")  # shown without credentials or query
        source = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
        name = posixpath.basename(urllib.parse.unquote(parts.path)) or "artifact"
        target = staging / name
        try:
            # The URL's userinfo goes to its own host only, never along a redirect to another one.
            with open_url(reference, timeout=60) as response, open(target, "wb") as out:
                shutil.copyfileobj(response, out, 1 << 20)
        except urllib.error.HTTPError as error:
            if error.code in (401, 403, 404, 410):
                raise NotFound(
                    f"artifact {source} could not be downloaded: HTTP {error.code}",
                    hint="check the artifact URL (and that the build published it)",
                ) from None
            raise ProviderUnavailable(f"artifact {source} could not be downloaded: HTTP {error.code}") from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            detail = redact_text(str(getattr(error, "reason", error)))
            raise ProviderUnavailable(f"artifact {source} could not be downloaded: {detail}") from None
        return target, source, expected
    if parts.scheme == "file":
        path = Path(urllib.parse.unquote(parts.path))
    elif parts.scheme and len(parts.scheme) > 1:
        raise InvalidRequest(
            f"artifact {redact_text(reference)!r}: the local provider reads paths, file:// and http(s):// URLs only",
            hint="copy the artifact to a local path, or publish it over HTTP(S)",
        )
    else:
        path = Path(reference).expanduser()
    if not path.is_file():
        raise NotFound(
            f"artifact {path} does not exist" if not path.exists() else f"artifact {path} is not a file",
            hint="check the bake stage's artifact path; the build may not have produced it (or it was cleaned up)",
        )
    target = staging / path.name
    _copy_no_symlink(path, target)
    return target, str(path), expected


def _copy_no_symlink(path: Path, target: Path) -> None:
    """Copy the file at ``path``, refusing a symlink there at the moment it is opened.

    The bake stage checked that the (real) path stays where the pipeline allows; opening
    with O_NOFOLLOW means a symlink swapped in since cannot lead the copy elsewhere.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as error:
        if path.is_symlink():
            raise InvalidRequest(
                f"artifact {path} is a symlink", hint="give the artifact's real path (symlinks are not followed)"
            ) from None
        raise CloudError(f"cannot read artifact {path}: {error}", hint="check the file's permissions") from error
    with os.fdopen(fd, "rb") as source:
        if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
            raise NotFound(f"artifact {path} is not a file", hint="check the bake stage's artifact path")
        try:
            with open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
        except OSError as error:
            raise CloudError(f"cannot copy artifact {path}: {error}", hint="check the staging folder") from error


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _kind(path: Path, python_base: bool) -> ArtifactKind:
    name = path.name.lower()
    if name.endswith(".whl"):
        return "wheel"
    if name.endswith(".jar"):
        return "jar"
    if name.endswith(_TARBALL_SUFFIXES):
        return "tarball"  # an sdist is told apart by its contents (see _check_tarball)
    sdist = ", or an sdist .tar.gz" if python_base else ""
    raise InvalidRequest(
        f"artifact {path.name}: unknown kind of artifact",
        hint=f"the local provider bakes a wheel (.whl{sdist}), a tarball (.tar.gz, .tgz, .tar) with a start "
        "command, or a jar (.jar)",
    )


def _check_zip(path: Path, what: str) -> zipfile.ZipFile:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise InvalidRequest(
            f"artifact {path.name} is not a valid {what} (not a zip archive: {error})",
            hint="the file is corrupt or not a " + what + "; build it again and check the upload/download",
        ) from None
    try:
        bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as error:
        archive.close()
        raise InvalidRequest(
            f"artifact {path.name} is a corrupt {what}: {error}", hint="build it again and check the upload/download"
        ) from None
    if bad is not None:
        archive.close()
        raise InvalidRequest(
            f"artifact {path.name} is a corrupt {what} (bad checksum of {bad})",
            hint="build it again and check the upload/download",
        )
    return archive


def _metadata(text: str) -> tuple[str | None, str | None, tuple[str, ...]]:
    message = email.parser.Parser().parsestr(text, headersonly=True)
    return message.get("Name"), message.get("Version"), tuple(message.get_all("Requires-Dist") or ())


def _check_wheel(path: Path) -> tuple[str, str, tuple[str, ...]]:
    with _check_zip(path, "wheel") as archive:
        metadata = [name for name in archive.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", name) is not None]
        if len(metadata) != 1:
            raise InvalidRequest(
                f"artifact {path.name} is not a wheel (it has {len(metadata)} .dist-info/METADATA files, not 1)",
                hint="build it with python -m build --wheel (or pip wheel)",
            )
        name, version, requires = _metadata(archive.read(metadata[0]).decode("utf-8", "replace"))
    if not name or not version:
        raise InvalidRequest(f"artifact {path.name}: its METADATA names no Name or Version", hint="build it again")
    return name, version, requires


def _check_jar(path: Path) -> str | None:
    with _check_zip(path, "jar") as archive:
        try:
            text = archive.read("META-INF/MANIFEST.MF").decode("utf-8", "replace")
        except KeyError:
            return None
    joined = re.sub(r"\r?\n ", "", text)  # manifest lines continue with a leading space
    found = re.search(r"^Main-Class:\s*(\S+)\s*$", joined, re.MULTILINE)
    return found[1] if found else None


def _safe_name(name: str) -> str | None:
    """The member's normalized relative path, or None if it is absolute or climbs out with ``..``."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return None
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        return None
    return posixpath.normpath(name.replace("\\", "/"))


def _check_tarball(path: Path) -> tuple[str | None, str | None, str | None]:
    """Refuse unsafe members; returns the sdist's (name, version, top directory) if it is one."""
    try:
        with tarfile.open(path) as archive:
            members = archive.getmembers()
            bad: list[str] = []
            names: set[str] = set()
            for member in members:
                clean = _safe_name(member.name)
                if clean is None:
                    bad.append(f"{member.name} (absolute or '..' path)")
                    continue
                names.add(clean)
                if member.issym():
                    target = member.linkname
                    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(clean), target))
                    if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
                        bad.append(f"{member.name} (symlink out of the image: {target})")
                elif member.islnk():
                    if _safe_name(member.linkname) is None:
                        bad.append(f"{member.name} (hard link out of the image: {member.linkname})")
                elif not (member.isfile() or member.isdir()):
                    bad.append(f"{member.name} (a device, FIFO or other special file)")
                if clean == MANIFEST:
                    bad.append(f"{member.name} ({MANIFEST} at the top is the image's own manifest)")
            if bad:
                shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
                raise InvalidRequest(
                    f"artifact {path.name} has unsafe members: {shown}",
                    hint="build the tarball with relative paths inside its own tree (e.g. tar -C build -czf app.tgz .)",
                )
            tops = {name.split("/", 1)[0] for name in names if name != "."}
            if len(tops) == 1:
                top = tops.pop()
                if f"{top}/PKG-INFO" in names:
                    info = archive.extractfile(f"{top}/PKG-INFO")
                    if info is not None:
                        name, version, _ = _metadata(info.read().decode("utf-8", "replace"))
                        return name, version, top
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise InvalidRequest(
            f"artifact {path.name} is not a valid tarball: {error}",
            hint="the file is corrupt or not a tar archive; build it again and check the upload/download",
        ) from None
    return None, None, None


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _same_version(left: str, right: str) -> bool:
    if left == right:
        return True
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:  # pragma: no cover - packaging comes with pip/setuptools/Airflow
        return False
    try:
        return Version(left) == Version(right)
    except InvalidVersion:
        return False


def inspect_artifact(
    path: Path, source: str, expected: str | None, request: BakeRequest, python_base: bool
) -> Artifact:
    """Check the staged artifact (digest, kind, soundness, name and version against ``request``) and describe it."""
    size = path.stat().st_size
    digest = _sha256(path)
    if expected is not None and digest != expected:
        raise InvalidRequest(
            f"artifact {source} has sha256 {digest}, not the expected {expected}",
            hint="the file changed or was corrupted after the build; build or download it again",
        )
    if size == 0:
        raise InvalidRequest(f"artifact {source} is empty", hint="build it again; the build may have failed")
    kind = _kind(path, python_base)
    name = version = main_class = top = None
    requires: tuple[str, ...] = ()
    if kind == "wheel":
        name, version, requires = _check_wheel(path)
    elif kind == "jar":
        main_class = _check_jar(path)
    else:
        sdist_name, sdist_version, sdist_top = _check_tarball(path)
        if python_base and sdist_name and sdist_version:
            kind, name, version, top = "sdist", sdist_name, sdist_version, sdist_top
    if name is not None and version is not None:
        if _canonical(name) != _canonical(request.package):
            raise InvalidRequest(
                f"artifact {path.name} is the package {name!r}, not {request.package!r}",
                hint=f"set the bake stage's package to {name!r}, or bake the right artifact",
            )
        if not _same_version(version, request.version):
            raise InvalidRequest(
                f"artifact {path.name} is version {version}, not {request.version}",
                hint=f"set the bake stage's version to {version!r} (or leave it to the artifact), "
                "or bake the right artifact",
            )
    return Artifact(path, source, digest, size, kind, name, version, main_class, top, requires)


# --------------------------------------------------------------------------- tarballs


def extract_tarball(path: Path, target: Path) -> None:
    """Extract a tarball checked by :func:`_check_tarball`; tarfile's ``data`` filter is a second guard."""
    try:
        with tarfile.open(path) as archive:
            if hasattr(tarfile, "data_filter"):
                archive.extractall(target, filter="data")
            else:  # pragma: no cover - Python < 3.11.4; members were checked already
                archive.extractall(target)
    except tarfile.TarError as error:  # FilterError included
        raise InvalidRequest(
            f"artifact {path.name} cannot be extracted safely: {error}",
            hint="build the tarball with relative paths inside its own tree (e.g. tar -C build -czf app.tgz .)",
        ) from None


__all__ = ["Artifact", "ArtifactKind", "extract_tarball", "inspect_artifact", "stage_artifact"]
