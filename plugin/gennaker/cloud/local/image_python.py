"""Python images: a fresh virtualenv of the base's interpreter with the wheel (or sdist) installed.

``pip install --no-index --no-deps`` of the staged artifact alone, then ``pip check`` if
it declares requirements (an image is self-contained), then a check that ``python -m
<module>`` can run when the start command is the default. An sdist only bakes if pip can
build it offline: its build backend must be among the interpreter's bundled wheels or in
``<gennaker home>/local/wheelhouse``. pip itself is never installed into an image: the
interpreter's bundled pip wheel is unpacked once into ``images/.tools`` (or
``$GENNAKER_BAKE_TOOLS``) and run from there (ensurepip if there is none). Every run gets
the minimal environment of :mod:`~gennaker.cloud.local.procenv`, never the caller's.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import subprocess
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path

from gennaker.cloud.local import privfiles, procenv, processes
from gennaker.cloud.local.image_artifacts import Artifact
from gennaker.cloud.local.image_runtimes import Runtime
from gennaker.errors import CloudError, InvalidRequest

log = logging.getLogger(__name__)

PYTHON_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
"""The ``env`` of a Python image's manifest: unbuffered output, no bytecode written into the image."""
TOOLS_ENV = "GENNAKER_BAKE_TOOLS"
"""Environment variable: a directory for the unpacked pip, shared by several homes (default: per home)."""


def install_python(
    work: Path, final: Path, *, runtime: Runtime, artifact: Artifact, module: str | None, tools: Path
) -> None:
    """A venv of the base's Python in ``work/venv`` with the artifact installed, paths pointing at ``final``.

    ``module``: the one the default start command runs (``python -m``), checked to be
    importable; None when the request gave its own start command.
    """
    assert runtime.executable is not None
    venv = work / "venv"
    pip_package = _pip_package(runtime, tools)
    create = [runtime.executable, "-m", "venv", *(["--without-pip"] if pip_package else []), str(venv)]
    run(create, "creating the virtualenv", timeout=300, hint=f"check that {runtime.executable} has a working venv")
    python = str(venv / "bin" / "python")
    pip = [python, str(pip_package)] if pip_package else [python, "-m", "pip"]
    install = [*pip, "install", "--no-index", "--no-deps", "--no-cache-dir"]
    if artifact.kind == "sdist":  # build isolation, fed from the bundled wheels and the wheelhouse only
        wheelhouse = final.parent.parent / "wheelhouse"
        folders = [*runtime.bundled_wheels, *([str(wheelhouse)] if wheelhouse.is_dir() else [])]
        install += [arg for folder in folders for arg in ("--find-links", folder)]
    run(
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
        run(
            [*pip, "check"],
            "checking the installed dependencies",
            timeout=300,
            hint="the local provider installs the artifact alone (--no-deps): bake a self-contained artifact "
            "(no install requirements, or a tarball with its dependencies vendored)",
        )
    if module is not None:
        run(
            [python, "-c", _MODULE_CHECK, module],
            f"looking for the module {module}",
            timeout=120,
            hint=f"python -m {module} must run: name the package after its module, or give a start command "
            "(e.g. venv/bin/python -m mymodule, or venv/bin/my-console-script)",
        )
    _relocate(venv, work, final)


def tools_dir(root: Path) -> Path:
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


def clean_env() -> dict[str, str]:
    """The environment of the bake's Python and pip runs: minimal, never the caller's (see :mod:`procenv`).

    An sdist's build backend runs here: it must not find Airflow's secrets or the caller's.
    """
    return procenv.build_env()


def run(argv: Sequence[str], what: str, *, timeout: float, hint: str) -> None:
    """Run one step of a bake (no shell, :func:`clean_env`); a failure is InvalidRequest with its last lines."""
    log.debug("running %s", shlex.join(argv))
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, env=clean_env(), stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise CloudError(f"{what} took longer than {timeout:.0f}s", hint=hint) from None
    except OSError as error:
        raise InvalidRequest(f"{what} failed: {error}", hint=hint) from None
    if done.returncode != 0:
        output = processes.tail("\n".join(part for part in (done.stdout, done.stderr) if part.strip()), 15)
        raise InvalidRequest(f"{what} failed (exit {done.returncode}): {output}", hint=hint)


__all__ = ["PYTHON_ENV", "TOOLS_ENV", "clean_env", "install_python", "run", "tools_dir"]
