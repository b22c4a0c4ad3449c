"""Where a server group's supervisor keeps its files, and how its loop behaves (``GENNAKER_LOCAL_*``).

``<home>/local/run/<account>/<region>/<group>.pid`` (its pid), ``.lock`` (serialises starts and stops),
``.alive`` (held locked by the running supervisor for its whole life, holding its pid), ``.reconcile.lock``
(passes never overlap), ``.stopped`` (stopped on purpose: no watchdog starts it again), ``<group>/`` (one
JSON record per instance process); logs in ``<home>/local/logs/<group>/``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gennaker.durations import parse_duration
from gennaker.errors import InvalidRequest

MODULE = "gennaker.cloud.local.supervisor"
MODULES = (MODULE, "gennaker.cloud.local_supervisor")
"""The supervisor's module, and its name before the local provider moved to ``cloud/local/``: an upgrade must
recognise (not orphan) the supervisors that are running."""
DESTROYING_TAG = "gennaker:destroying"
"""A server group tag: when set (any non-empty value) the supervisor stops and deletes its instances and exits."""


@dataclass(frozen=True)
class SupervisorOptions:
    """How the supervisor loop behaves; :meth:`from_env` reads ``GENNAKER_LOCAL_*``."""

    interval: float = 0.5
    restart_limit: int = 5
    restart_backoff: float = 0.5
    stop_grace: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SupervisorOptions:
        """Defaults, overridden by ``GENNAKER_LOCAL_SUPERVISOR_INTERVAL``, ``..._RESTART_LIMIT`` and so on."""
        env = os.environ if environ is None else environ
        names = {
            "interval": "GENNAKER_LOCAL_SUPERVISOR_INTERVAL",
            "restart_limit": "GENNAKER_LOCAL_RESTART_LIMIT",
            "restart_backoff": "GENNAKER_LOCAL_RESTART_BACKOFF",
            "stop_grace": "GENNAKER_LOCAL_STOP_GRACE",
        }
        values: dict[str, Any] = {}
        for attr, var in names.items():
            text = env.get(var, "").strip()
            if not text:
                continue
            try:
                values[attr] = int(text) if attr == "restart_limit" else parse_duration(text).total_seconds()
            except ValueError as error:
                raise InvalidRequest(f"{var}={text!r} is not valid: {error}") from error
        return cls(**values)

    def to_args(self) -> list[str]:
        """The command-line options that give these values."""
        return [
            f"--interval={self.interval}",
            f"--restart-limit={self.restart_limit}",
            f"--restart-backoff={self.restart_backoff}",
            f"--stop-grace={self.stop_grace}",
        ]


@dataclass(frozen=True)
class SupervisorPaths:
    """Where one server group's supervisor keeps its pid, locks, process records and logs."""

    home: Path
    account: str
    region: str
    name: str

    @classmethod
    def of(cls, home: str | os.PathLike[str], account: str, region: str, name: str) -> SupervisorPaths:
        for what, value in (("account", account), ("region", region), ("server group", name)):
            if not value or value in (".", "..") or "/" in value or "\0" in value:
                raise InvalidRequest(f"{what} {value!r} cannot name a directory")
        return cls(Path(home).expanduser().absolute(), account, region, name)

    @property
    def run_dir(self) -> Path:
        return self.home / "local" / "run" / self.account / self.region

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def lock_file(self) -> Path:
        return self.run_dir / f"{self.name}.lock"

    @property
    def alive_file(self) -> Path:
        return self.run_dir / f"{self.name}.alive"

    @property
    def pass_lock(self) -> Path:
        return self.run_dir / f"{self.name}.reconcile.lock"

    @property
    def stopped_file(self) -> Path:
        """Present after :func:`stop`: a watchdog leaves the group's supervisor stopped (the next start removes it)."""
        return self.run_dir / f"{self.name}.stopped"

    @property
    def records_dir(self) -> Path:
        return self.run_dir / self.name

    @property
    def log_dir(self) -> Path:
        return self.home / "local" / "logs" / self.name

    @property
    def supervisor_log(self) -> Path:
        return self.log_dir / "supervisor.log"

    def instance_log(self, instance_id: str) -> Path:
        return self.log_dir / f"{instance_id}.log"

    def record_file(self, instance_id: str) -> Path:
        return self.records_dir / f"{instance_id}.json"


__all__ = ["DESTROYING_TAG", "MODULE", "MODULES", "SupervisorOptions", "SupervisorPaths"]
