"""The environments of the processes the local provider starts: explicit and minimal, never the caller's.

Why: every process the local provider starts runs as the same OS user as Airflow's
workers, so an instance can read its supervisor's ``/proc/<ppid>/environ``. A supervisor
that inherited a task's environment would hand it the API server's JWT secret, the
Fernet key and every ``AIRFLOW_CONN_*``. So nothing is inherited wholesale; each
environment is built from named parts:

- **base** (every process): ``PATH``, ``HOME``, ``LANG``, ``LC_ALL``, ``TZ`` and ``TMPDIR``
  when set, and the names an operator lists in ``GENNAKER_LOCAL_PASS_ENV`` (comma or
  space separated, e.g. ``JAVA_HOME,SSL_CERT_FILE``; names starting with ``AIRFLOW_`` are
  refused);
- **supervisors and proxies** (:func:`service_env`): the base, gennaker's settings they
  read (``GENNAKER_HOME``, ``GENNAKER_LOCAL_*``, ``GENNAKER_RETENTION_*``,
  ``GENNAKER_LB_METRICS_RETENTION_*``) and ``PYTHONPATH`` = the folder gennaker is
  imported from (Airflow may load it as a plugin, from a folder the interpreter would
  not search);
- **instances** (:func:`instance_env`): the base of the supervisor, then the image
  manifest's ``env``, then the server group's ``environment``; the supervisor adds
  ``PORT``, ``HOST``, ``GENNAKER_INSTANCE_ID`` and ``GENNAKER_SERVER_GROUP``;
- **bakes' pip and Python runs** (:func:`build_env`): the base and pip settings of our
  own (no user or site pip configuration, no version check, no prompts).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from gennaker.errors import InvalidRequest

BASE_NAMES = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
PASS_ENV = "GENNAKER_LOCAL_PASS_ENV"
SETTING_NAMES = ("GENNAKER_HOME",)
SETTING_PREFIXES = ("GENNAKER_LOCAL_", "GENNAKER_RETENTION_", "GENNAKER_LB_METRICS_RETENTION_")
REFUSED_PREFIX = "AIRFLOW_"
"""Airflow's settings and secrets (``AIRFLOW__*``, ``AIRFLOW_CONN_*``, ``AIRFLOW_VAR_*``) never pass."""
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
_NOT_FOR_BUILDS = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONPYCACHEPREFIX", "VIRTUAL_ENV")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def passed_names(environ: Mapping[str, str] | None = None) -> list[str]:
    """The names listed in ``GENNAKER_LOCAL_PASS_ENV``; InvalidRequest naming a bad or refused one."""
    env = os.environ if environ is None else environ
    names = [name for name in re.split(r"[\s,]+", env.get(PASS_ENV, "")) if name]
    for name in names:
        if not _NAME.match(name):
            raise InvalidRequest(
                f"{PASS_ENV} names {name!r}, which is not an environment variable name",
                hint="list variable names separated by commas, e.g. JAVA_HOME,SSL_CERT_FILE",
            )
        if name.upper().startswith(REFUSED_PREFIX):
            raise InvalidRequest(
                f"{PASS_ENV} names {name}: Airflow's settings and secrets are never passed to the local "
                "provider's processes",
                hint=f"remove {name} from {PASS_ENV}; give an instance what it needs in the deploy's environment",
            )
    return names


def base_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """PATH, HOME, LANG, LC_ALL, TZ, TMPDIR (when set) and the ``GENNAKER_LOCAL_PASS_ENV`` names."""
    env = os.environ if environ is None else environ
    out = {name: env[name] for name in (*BASE_NAMES, *passed_names(env)) if name in env}
    out.setdefault("PATH", DEFAULT_PATH)  # a program without PATH finds nothing (execvp's own default differs)
    return out


def service_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a supervisor or load balancer proxy: the base, gennaker's settings, PYTHONPATH."""
    env = os.environ if environ is None else environ
    out = base_env(env)
    out.update(
        {name: value for name, value in env.items() if name in SETTING_NAMES or name.startswith(SETTING_PREFIXES)}
    )
    root = str(Path(__file__).resolve().parents[2])  # the folder holding the gennaker package
    extra = [part for part in out.get("PYTHONPATH", "").split(os.pathsep) if part and part != root]
    out["PYTHONPATH"] = os.pathsep.join([root, *extra])  # extra: only if an operator passes PYTHONPATH
    return out


def instance_env(
    manifest_env: Mapping[str, object] | None,
    group_env: Mapping[str, str] | None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """An instance's environment before its own names: the base, the manifest's ``env``, the group's ``environment``."""
    out = base_env(environ)
    out.update({str(key): str(value) for key, value in dict(manifest_env or {}).items()})
    out.update(group_env or {})
    return out


def build_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a bake's Python and pip runs (which run the artifact's build backend)."""
    out = {
        name: value
        for name, value in base_env(environ).items()
        if name not in _NOT_FOR_BUILDS and not name.startswith("PIP_")  # even if an operator passes them
    }
    out.update(
        PIP_CONFIG_FILE=os.devnull,
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_INPUT="1",
        PIP_NO_WARN_SCRIPT_LOCATION="1",
        PYTHONNOUSERSITE="1",
    )
    return out


__all__ = ["PASS_ENV", "base_env", "build_env", "instance_env", "passed_names", "service_env"]
