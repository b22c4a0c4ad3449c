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
"""

from __future__ import annotations

import contextlib
import email.parser
import hashlib
import json
import logging
import os
import posixpath
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import uuid
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gennaker.cloud.local import privfiles, procenv, processes
from gennaker.cloud.local.state import StateStore
from gennaker.cloud.model import BakeRequest, Image, utcnow
from gennaker.errors import CloudError, InvalidRequest, NotFound, ProviderUnavailable
from gennaker.paths import gennaker_home
from gennaker.redact import redact_text
from gennaker.safehttp import open_url

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
DEFAULT_HEALTH_CHECK_PATH = "/health"
BAKE_TAG_PREFIX = "bake."
"""Tags with this prefix are bake options and part of the inputs hash (``bake.health_check_path``)."""
LOCK_TIMEOUT_SECONDS = 900.0
STALE_STAGING_SECONDS = 24 * 3600.0
PYTHON_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
TOOLS_ENV = "GENNAKER_BAKE_TOOLS"
"""Environment variable: a directory for the unpacked pip, shared by several homes (default: per home)."""

ArtifactKind = Literal["wheel", "sdist", "tarball", "jar"]

_PYTHON_BASE = re.compile(r"^python-?(\d+)\.(\d+)$")
_JAVA_BASE = re.compile(r"^(?:jre|jdk|java)-?(\d+)$")
_SHA256_FRAGMENT = re.compile(r"#sha256=([0-9a-fA-F]{64})$")
_TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_BASES_HINT = "use python-X.Y (a wheel), jre-N (a jar) or none (a tarball with a start command)"


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


# --------------------------------------------------------------------------- bases and runtimes


@dataclass(frozen=True)
class Runtime:
    """What a base resolved to on this machine."""

    kind: Literal["python", "java", "none"]
    version: str = ""
    implementation: str = ""
    executable: str | None = None
    bundled_wheels: tuple[str, ...] = ()
    """Python: directories holding the interpreter's bundled pip (and setuptools) wheels."""

    def label(self) -> str:
        """``CPython 3.11.7``, ``java 17.0.15`` or ``none``: the runtime part of the inputs hash."""
        if self.kind == "none":
            return "none"
        return f"{self.implementation or self.kind} {self.version}"

    def to_manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        if self.kind != "none":
            data.update(version=self.version, implementation=self.implementation, executable=self.executable)
        return data


def resolve_base(base: str) -> Runtime:
    """Find the runtime a base names on this machine (``python-3.11``, ``jre-17``, ``none``).

    Raises :class:`InvalidRequest` for an unknown base or a runtime that is not installed.
    """
    text = base.strip().lower()
    if text in ("none", ""):
        return Runtime("none")
    match = _PYTHON_BASE.match(text)
    if match:
        return _python_runtime(int(match[1]), int(match[2]), base)
    match = _JAVA_BASE.match(text)
    if match:
        return _java_runtime(int(match[1]), base)
    raise InvalidRequest(f"unknown base {base!r} for a local image", hint=_BASES_HINT)


_PROBE = r"""
import json, os, sys, platform
try:
    import ensurepip
    ensure = os.path.dirname(ensurepip.__file__)
except ImportError:
    ensure = None
try:
    import venv  # noqa
    has_venv = True
except ImportError:
    has_venv = False
print(json.dumps({
    "version": platform.python_version(),
    "major_minor": list(sys.version_info[:2]),
    "implementation": platform.python_implementation(),
    "executable": getattr(sys, "_base_executable", None) or sys.executable,
    "ensurepip": ensure,
    "venv": has_venv,
}))
"""


def _python_runtime(major: int, minor: int, base: str) -> Runtime:
    candidates: list[str] = []
    if sys.version_info[:2] == (major, minor) and sys.executable:
        candidates.append(sys.executable)
    found = shutil.which(f"python{major}.{minor}")
    if found and found not in candidates:
        candidates.append(found)
    problems: list[str] = []
    for candidate in candidates:
        try:
            done = subprocess.run(
                [candidate, "-I", "-c", _PROBE], capture_output=True, text=True, timeout=60, env=_clean_env()
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            problems.append(f"{candidate}: {error}")
            continue
        if done.returncode != 0:
            problems.append(f"{candidate}: {processes.tail(done.stderr or done.stdout, 2)}")
            continue
        info = json.loads(done.stdout)
        if tuple(info["major_minor"]) != (major, minor):
            problems.append(f"{candidate} is Python {info['version']}")
            continue
        if not info["venv"]:
            problems.append(f"{candidate} has no venv module")
            continue
        wheel_dirs = [info["ensurepip"], os.path.join(info["ensurepip"], "_bundled")] if info["ensurepip"] else []
        wheel_dirs.append("/usr/share/python-wheels")  # Debian's home for them
        return Runtime(
            "python",
            version=info["version"],
            implementation=info["implementation"],
            executable=info["executable"],
            bundled_wheels=tuple(path for path in wheel_dirs if os.path.isdir(path)),
        )
    looked = f"python{major}.{minor} on PATH" + (f" ({'; '.join(problems)})" if problems else ": not found")
    current = f"{sys.version_info[0]}.{sys.version_info[1]}"
    raise InvalidRequest(
        f"base {base} needs a Python {major}.{minor} interpreter, and there is none usable (looked for {looked})",
        hint=f"install Python {major}.{minor} with its venv module (e.g. apt install python{major}.{minor}-venv, "
        f"or pyenv) on every machine that bakes, or bake on a base this machine has, e.g. python-{current}",
    )


def _java_runtime(major: int, base: str) -> Runtime:
    java_home = os.environ.get("JAVA_HOME")
    java = None
    if java_home and os.access(os.path.join(java_home, "bin", "java"), os.X_OK):
        java = os.path.join(java_home, "bin", "java")
    java = java or shutil.which("java")
    hint = (
        f"install a Java {major} (or newer) runtime, e.g. apt install openjdk-{major}-jre-headless, "
        "and put java on PATH or set JAVA_HOME"
    )
    if java is None:
        raise InvalidRequest(f"base {base} needs java, and there is none on PATH (nor in JAVA_HOME)", hint=hint)
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise InvalidRequest(f"base {base}: {java} -version failed: {error}", hint=hint) from error
    output = done.stderr + done.stdout
    found = re.search(r'version "([^"]+)"', output)
    if done.returncode != 0 or not found:
        raise InvalidRequest(f"base {base}: cannot tell the version of {java}: {processes.tail(output, 2)}", hint=hint)
    version = found[1]
    numbers = [int(number) for number in re.findall(r"\d+", version)[:2]] or [0]
    have = numbers[1] if numbers[0] == 1 and len(numbers) > 1 else numbers[0]  # 1.8.0_392 is Java 8
    if have < major:
        raise InvalidRequest(f"base {base} needs Java {major} or newer; {java} is Java {version}", hint=hint)
    implementation = "openjdk" if "openjdk" in output.lower() else "java"
    return Runtime("java", version=version, implementation=implementation, executable=java)


# --------------------------------------------------------------------------- artifacts


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
        return {
            "file": self.path.name,
            "kind": self.kind,
            "sha256": self.sha256,
            "size": self.size,
            "source": self.source,
        }


def _stage_artifact(reference: str | None, staging: Path) -> tuple[Path, str, str | None]:
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


def _inspect(path: Path, source: str, expected: str | None, request: BakeRequest, python_base: bool) -> Artifact:
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


def _slot_key(inputs_hash: str, account: str, region: str) -> str:
    return hashlib.sha256(f"{inputs_hash}\0{account}\0{region}".encode()).hexdigest()


def image_id_for(inputs_hash: str, account: str, region: str, rebake: int = 0) -> str:
    """``img-`` + 16 hex digits of SHA-256(inputs hash, account, region, rebake number)."""
    digest = hashlib.sha256(f"{inputs_hash}\0{account}\0{region}\0{rebake}".encode()).hexdigest()
    return f"img-{digest[:16]}"


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
    _sweep(root)
    runtime = resolve_base(request.base)
    staging = root / f".stage-{uuid.uuid4().hex[:12]}"
    staging.mkdir(mode=0o700)
    try:
        path, source, expected = _stage_artifact(request.artifact, staging)
        artifact = _inspect(path, source, expected, request, python_base=runtime.kind == "python")
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
        key = _slot_key(plan.inputs_hash, request.account, request.region)
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
            existing, image_id, rebake = _choose(store, root, plan)
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


def _choose(store: StateStore, root: Path, plan: _Plan) -> tuple[Image | None, str, int]:
    """The existing image to return, or the id and rebake number of the one to build (under the lock)."""
    request = plan.request
    recorded = store.find_images(account=request.account, region=request.region, inputs_hash=plan.inputs_hash)
    intact = [image for image in recorded if (root / image.id / MANIFEST).is_file()]
    if intact and not request.rebake:
        return intact[0], "", 0
    taken = {image.id for image in intact}
    rebake = 0
    while True:
        image_id = image_id_for(plan.inputs_hash, request.account, request.region, rebake)
        final = root / image_id
        if image_id not in taken:
            if (final / MANIFEST).is_file():
                adopted = _adopt(store, final, plan)
                if adopted is not None and not request.rebake:
                    return adopted, "", 0
            elif final.exists():  # not made by a bake (those appear whole): not trusted
                shutil.rmtree(final)
                return None, image_id, rebake
            else:
                return None, image_id, rebake
        rebake += 1


def _adopt(store: StateStore, directory: Path, plan: _Plan) -> Image | None:
    """Record an image whose directory was made but whose record was lost (a crash in between)."""
    try:
        manifest = read_manifest(directory)
        image = _image(manifest, directory)
    except (CloudError, ValueError) as error:
        log.warning("not adopting %s: %s", directory, error)
        return None
    request = plan.request
    if (image.inputs_hash, image.account, image.region) != (plan.inputs_hash, request.account, request.region):
        return None
    log.warning("adopting image %s, baked but not recorded (a bake was interrupted)", image.id)
    store.put_image(image)
    return image


def _build(store: StateStore, root: Path, plan: _Plan, key: str, image_id: str, rebake: int) -> Image:
    request, artifact, runtime = plan.request, plan.artifact, plan.runtime
    final = root / image_id
    work = root / f".tmp-{key[:16]}-{uuid.uuid4().hex[:8]}"
    work.mkdir(mode=0o700)  # becomes the image directory
    started = time.monotonic()
    try:
        if artifact.kind in ("wheel", "sdist"):
            _install_python(work, final, plan, _tools_dir(root))
        elif artifact.kind == "jar":
            shutil.copyfile(artifact.path, work / artifact.path.name)
        else:
            _extract(artifact.path, work)
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
        _write_json(work / MANIFEST, manifest)
        _fsync_dir(work)
        os.rename(work, final)  # atomic: the image appears whole, or not at all
        _fsync_dir(root)
    except OSError as error:
        shutil.rmtree(work, ignore_errors=True)
        raise CloudError(
            f"baking {image_id} in {root} failed: {error}", hint=f"check free space and permissions of {root}"
        ) from error
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    image = _image(manifest, final)
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


def _image(manifest: Mapping[str, Any], directory: Path) -> Image:
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


# --------------------------------------------------------------------------- python images


def _install_python(work: Path, final: Path, plan: _Plan, tools: Path) -> None:
    """A venv of the base's Python in ``work/venv`` with the artifact installed, paths pointing at ``final``."""
    runtime, artifact = plan.runtime, plan.artifact
    assert runtime.executable is not None
    venv = work / "venv"
    pip_package = _pip_package(runtime, tools)
    create = [runtime.executable, "-m", "venv", *(["--without-pip"] if pip_package else []), str(venv)]
    _run(create, "creating the virtualenv", timeout=300, hint=f"check that {runtime.executable} has a working venv")
    python = str(venv / "bin" / "python")
    pip = [python, str(pip_package)] if pip_package else [python, "-m", "pip"]
    install = [*pip, "install", "--no-index", "--no-deps", "--no-cache-dir"]
    if artifact.kind == "sdist":  # build isolation, fed from the bundled wheels and the wheelhouse only
        wheelhouse = final.parent.parent / "wheelhouse"
        folders = [*runtime.bundled_wheels, *([str(wheelhouse)] if wheelhouse.is_dir() else [])]
        install += [arg for folder in folders for arg in ("--find-links", folder)]
    _run(
        [*install, str(artifact.path)],
        f"installing {artifact.path.name}",
        timeout=900,
        hint="bake a wheel (python -m build --wheel, or scripts/build-hello.sh): an sdist must be built first, "
        f"offline, from the interpreter's bundled wheels and {final.parent.parent / 'wheelhouse'} (put its build "
        "backend's wheels there, e.g. setuptools>=70.1 or setuptools and wheel)"
        if artifact.kind == "sdist"
        else "check that the wheel is built for this Python and platform",
    )
    if artifact.kind == "sdist" or artifact.requires:
        _run(
            [*pip, "check"],
            "checking the installed dependencies",
            timeout=300,
            hint="the local provider installs the artifact alone (--no-deps): bake a self-contained artifact "
            "(no install requirements, or a tarball with its dependencies vendored)",
        )
    if plan.request.start_command is None:
        module = plan.argv[-1]
        _run(
            [python, "-c", _MODULE_CHECK, module],
            f"looking for the module {module}",
            timeout=120,
            hint=f"python -m {module} must run: name the package after its module, or give a start command "
            "(e.g. venv/bin/python -m mymodule, or venv/bin/my-console-script)",
        )
    _relocate(venv, work, final)


def _tools_dir(root: Path) -> Path:
    """Where bakes unpack pip: ``$GENNAKER_BAKE_TOOLS``, else ``<images root>/.tools`` (a cache; safe to delete)."""
    configured = os.environ.get(TOOLS_ENV, "").strip()
    return Path(configured).expanduser() if configured else root / ".tools"


def _pip_package(runtime: Runtime, tools: Path) -> Path | None:
    """pip, unpacked once from the newest wheel bundled with the interpreter, to run as ``python <dir>/pip``.

    No pip goes into the image and nothing is downloaded; unpacked (not run from the zip)
    so its bytecode is cached, which makes each bake seconds faster. None: use ensurepip.
    """
    best: tuple[tuple[int, ...], Path] | None = None
    for folder in runtime.bundled_wheels:
        for wheel in Path(folder).glob("pip-*-py3-none-any.whl"):
            found = re.match(r"pip-([\d.]+)-", wheel.name)
            if found:
                version = tuple(int(part) for part in found[1].split(".") if part.isdigit())
                if best is None or version > best[0]:
                    best = (version, wheel)
    if best is None:
        return None
    wheel = best[1]
    target = tools / wheel.name.removesuffix(".whl")
    if not (target / "pip" / "__main__.py").is_file():
        privfiles.private_dir(tools)
        unpacking = tools / f".tmp-{uuid.uuid4().hex[:8]}"
        try:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(unpacking)
            os.rename(unpacking, target)
        except OSError:
            if not (target / "pip" / "__main__.py").is_file():  # not just another bake that won the race
                shutil.rmtree(unpacking, ignore_errors=True)
                return None
        except zipfile.BadZipFile:
            shutil.rmtree(unpacking, ignore_errors=True)
            return None
        shutil.rmtree(unpacking, ignore_errors=True)
    return target / "pip"


_MODULE_CHECK = """
import importlib.util, sys
name = sys.argv[1]
spec = importlib.util.find_spec(name)
if spec is None:
    sys.exit(f"the artifact installs no module {name}")
if spec.submodule_search_locations is not None and importlib.util.find_spec(name + ".__main__") is None:
    sys.exit(f"{name} is a package without __main__.py, so python -m {name} cannot run it")
"""


def _relocate(venv: Path, work: Path, final: Path) -> None:
    """Point the venv's scripts (shebangs) and pyvenv.cfg at the final directory instead of the build one."""
    old, new = str(work).encode(), str(final).encode()
    paths = [venv / "pyvenv.cfg", *sorted((venv / "bin").iterdir())]
    for path in paths:
        if path.is_symlink() or not path.is_file():
            continue
        data = path.read_bytes()
        if old in data and b"\0" not in data[:8192]:
            mode = path.stat().st_mode
            path.write_bytes(data.replace(old, new))
            path.chmod(mode)


def _clean_env() -> dict[str, str]:
    """The environment of the bake's Python and pip runs: minimal, never the caller's (see :mod:`procenv`).

    An sdist's build backend runs here: it must not find Airflow's secrets or the caller's.
    """
    return procenv.build_env()


def _run(argv: Sequence[str], what: str, *, timeout: float, hint: str) -> None:
    log.debug("running %s", shlex.join(argv))
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, env=_clean_env(), stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise CloudError(f"{what} took longer than {timeout:.0f}s", hint=hint) from None
    except OSError as error:
        raise InvalidRequest(f"{what} failed: {error}", hint=hint) from None
    if done.returncode != 0:
        output = processes.tail("\n".join(part for part in (done.stdout, done.stderr) if part.strip()), 15)
        raise InvalidRequest(f"{what} failed (exit {done.returncode}): {output}", hint=hint)


# --------------------------------------------------------------------------- tarballs


def _extract(path: Path, target: Path) -> None:
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


# --------------------------------------------------------------------------- files and locks


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with open(path, "w", encoding="utf-8", opener=privfiles.open_private) as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _sweep(root: Path) -> None:
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
