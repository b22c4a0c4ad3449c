"""The bases of local images: what ``python-3.11``, ``jre-17`` or ``none`` resolve to on this machine.

A base names a runtime that must be installed where the bake runs (the local provider
runs its images on the same machine): ``python-X.Y`` an interpreter of that version with
its ``venv`` module (and, if bundled, the pip and setuptools wheels bakes install with),
``jre-N`` / ``jdk-N`` / ``java-N`` a Java N or newer, ``none`` nothing. The runtime actually
found (``CPython 3.11.7``) is part of an image's inputs hash: a new interpreter is a new base.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Literal

from gennaker.cloud.local import procenv, processes
from gennaker.errors import InvalidRequest

_PYTHON_BASE = re.compile(r"^python-?(\d+)\.(\d+)$")
_JAVA_BASE = re.compile(r"^(?:jre|jdk|java)-?(\d+)$")
_BASES_HINT = "use python-X.Y (a wheel), jre-N (a jar) or none (a tarball with a start command)"


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
        """The manifest's ``runtime``: its kind, then (unless ``none``) version, implementation, executable."""
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
                # the environment of every bake's Python run: minimal, never the caller's (see procenv)
                [candidate, "-I", "-c", _PROBE],
                capture_output=True,
                text=True,
                timeout=60,
                env=procenv.build_env(),
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


__all__ = ["Runtime", "resolve_base"]
