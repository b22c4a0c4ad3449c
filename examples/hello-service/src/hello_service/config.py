"""What one instance runs as: its version, behaviour and identity, read once at start-up.

- version: the installed distribution's (``importlib.metadata``), else ``_version.py``;
- behaviour: ``behaviour.json`` (package data, written per release by
  ``scripts/build-hello.sh``), each key overridable by an environment variable:
  ``HELLO_LATENCY_MS``, ``HELLO_ERROR_RATE``, ``HELLO_STARTUP_SECONDS``;
- identity: ``GENNAKER_INSTANCE_ID`` and ``GENNAKER_SERVER_GROUP`` (set by gennaker's
  local supervisor), ``HOST`` (default 127.0.0.1) and ``PORT`` (required).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata, resources

DISTRIBUTION = "hello-service"


def package_version() -> str:
    """The version of the installed distribution, else the one in ``_version.py`` (a source checkout)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        from hello_service._version import __version__

        return __version__


@dataclass(frozen=True)
class Behaviour:
    """How a release behaves: the knobs that make a good or a bad release."""

    latency_ms: float = 0.0
    """Added to every request to ``/`` and ``/version``."""
    error_rate: float = 0.0
    """Fraction (0..1) of requests to ``/`` and ``/version`` answered 500."""
    startup_seconds: float = 0.0
    """``/health`` answers 503 until this long after start."""

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> Behaviour:
        """The packaged ``behaviour.json``, then the ``HELLO_*`` environment variables over it."""
        env = os.environ if environ is None else environ
        try:
            text = resources.files("hello_service").joinpath("behaviour.json").read_text(encoding="utf-8")
            packaged = json.loads(text)
        except FileNotFoundError:
            packaged = {}
        if not isinstance(packaged, dict):
            raise ValueError("behaviour.json must hold a JSON object")
        values = {
            "latency_ms": _number(env.get("HELLO_LATENCY_MS"), packaged.get("latency_ms", 0), "HELLO_LATENCY_MS"),
            "error_rate": _number(env.get("HELLO_ERROR_RATE"), packaged.get("error_rate", 0), "HELLO_ERROR_RATE"),
            "startup_seconds": _number(
                env.get("HELLO_STARTUP_SECONDS"), packaged.get("startup_seconds", 0), "HELLO_STARTUP_SECONDS"
            ),
        }
        behaviour = cls(**values)
        behaviour.check()
        return behaviour

    def check(self) -> None:
        """Raise ``ValueError`` for values out of range."""
        if self.latency_ms < 0:
            raise ValueError(f"latency must be >= 0 ms (got {self.latency_ms})")
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error rate must be between 0 and 1 (got {self.error_rate})")
        if self.startup_seconds < 0:
            raise ValueError(f"start-up delay must be >= 0 s (got {self.startup_seconds})")


def _number(override: str | None, packaged: object, name: str) -> float:
    raw = packaged if override is None or override.strip() == "" else override
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number (got {raw!r})") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite (got {raw!r})")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything one instance needs, from the environment."""

    host: str
    port: int
    version: str
    instance: str
    server_group: str
    behaviour: Behaviour
    access_log: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings; ``ValueError`` says which variable is missing or wrong."""
        env = os.environ if environ is None else environ
        raw_port = env.get("PORT", "").strip()
        if not raw_port:
            raise ValueError("PORT is required (the port to listen on, e.g. PORT=8080; 0 picks a free one)")
        try:
            port = int(raw_port)
        except ValueError:
            raise ValueError(f"PORT must be a number (got {raw_port!r})") from None
        if not 0 <= port <= 65535:
            raise ValueError(f"PORT must be between 0 and 65535 (got {port})")
        return cls(
            host=env.get("HOST", "").strip() or "127.0.0.1",
            port=port,
            version=package_version(),
            instance=env.get("GENNAKER_INSTANCE_ID", "").strip() or f"pid-{os.getpid()}",
            server_group=env.get("GENNAKER_SERVER_GROUP", "").strip(),
            behaviour=Behaviour.load(env),
            access_log=env.get("HELLO_ACCESS_LOG", "1").strip().lower() not in {"0", "false", "no", "off"},
        )
