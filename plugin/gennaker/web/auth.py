"""Who may read and act on an application, through Airflow's own auth manager; and no cross-site actions.

**Identity.** Airflow's API dependency ``get_user`` (``GetUserDep``): the JWT of an
``Authorization: Bearer`` header, else of the UI's ``_token`` cookie (already checked by
Airflow's ``JWTRefreshMiddleware``). No token: 401; a bad or expired one: Airflow's
answer (403 / 401).

**Permissions: an application's are those of its pipelines.** gennaker's DAG factory
names each pipeline's DAG ``<application>.<name>`` and tags it ``gennaker`` and
``<application>``. The caller may

- *read* an application if the auth manager lets them read (``GET``) at least one of its
  pipelines' DAGs;
- *act* on it (resize, enable, disable, roll back, destroy, terminate) if it lets them edit
  (``PUT``) at least one of them: whoever may change a pipeline that deploys the
  application may change what it deployed.

An application without a pipeline (server groups made by hand, or by a pipeline since
removed) falls back to the permission on *all* DAGs (``is_authorized_dag`` without
details): ``GET`` to read, ``PUT`` to act. The auth manager decides, so the simple auth
manager's roles (viewer reads; user, op and admin edit DAGs), FAB's per-DAG permissions
and Keycloak's policies all apply as they do to the DAGs themselves; teams too (a DAG's
team is passed along). The map from applications to DAGs is read from Airflow's database
and cached for a few seconds; the decisions are never cached.

**No cross-site actions.** :class:`CrossSiteGuard` refuses, before any route runs, a
state-changing request (``POST``, ``PUT``, ``PATCH``, ``DELETE``)

- whose body is not ``application/json`` (415): an HTML form cannot send that type
  cross-site without a CORS preflight, which nothing here grants;
- that carries the session cookie ``_token`` but no ``Authorization`` header, and whose
  ``Origin`` (else ``Referer``) is missing or is not this server's own origin (403). The
  cookies are read as Starlette reads them for Airflow (every ``Cookie`` header, Starlette's
  parser), so the guard sees the cookie whenever Airflow would authenticate with it.

A request with neither cookie nor bearer token goes on, to be answered 401 by the route.

A request with a bearer token is not checked for its origin: a browser never adds that
header by itself, so another site cannot make one.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Receive, Scope, Send

READ = "GET"
EDIT = "PUT"
PIPELINE_TAG = "gennaker"


# --------------------------------------------------------------------------- applications -> pipelines


@dataclass(frozen=True)
class Pipeline:
    """A gennaker pipeline's DAG and the team that owns it (multi-team Airflow), if any."""

    dag_id: str
    team: str | None = None


def application_of(dag_id: str, tags: Iterable[str]) -> str | None:
    """The application of a gennaker DAG: the longest tag ``t`` such that the dag_id is ``t.<name>``."""
    candidates = [tag for tag in tags if tag != PIPELINE_TAG and dag_id.startswith(f"{tag}.")]
    return max(candidates, key=len) if candidates else None


def read_pipelines() -> dict[str, tuple[Pipeline, ...]]:
    """application -> its pipelines, from Airflow's database (DAGs tagged ``gennaker``, not stale)."""
    from airflow.models.dag import DagModel, DagTag
    from airflow.utils.session import create_session
    from sqlalchemy import select

    gennaker_dags = select(DagTag.dag_id).where(DagTag.name == PIPELINE_TAG)
    with create_session() as session:
        rows = session.execute(
            select(DagTag.dag_id, DagTag.name)
            .join(DagModel, DagModel.dag_id == DagTag.dag_id)
            .where(DagTag.dag_id.in_(gennaker_dags), DagModel.is_stale.is_(False))
        ).all()
        tags: dict[str, list[str]] = {}
        for dag_id, tag in rows:
            tags.setdefault(str(dag_id), []).append(str(tag))
        teams = DagModel.get_dag_id_to_team_name_mapping(sorted(tags), session=session) if tags else {}
    found: dict[str, list[Pipeline]] = {}
    for dag_id, names in sorted(tags.items()):
        application = application_of(dag_id, names)
        if application is not None:
            found.setdefault(application, []).append(Pipeline(dag_id, teams.get(dag_id)))
    return {application: tuple(pipelines) for application, pipelines in found.items()}


class PipelineIndex:
    """:func:`read_pipelines`, read again when older than ``ttl`` seconds."""

    def __init__(self, ttl: float = 5.0, read: Any = read_pipelines) -> None:
        self.ttl = ttl
        self._read = read
        self._lock = threading.Lock()
        self._value: dict[str, tuple[Pipeline, ...]] | None = None
        self._at = 0.0

    def get(self) -> Mapping[str, tuple[Pipeline, ...]]:
        """application -> pipelines."""
        with self._lock:
            if self._value is None or time.monotonic() - self._at >= self.ttl:
                self._value, self._at = self._read(), time.monotonic()
            return self._value

    def clear(self) -> None:
        """Read the database again on the next call."""
        with self._lock:
            self._value = None


class Authorizer:
    """Decides, through Airflow's auth manager, whether a user may read or act on an application."""

    def __init__(self, pipelines: PipelineIndex) -> None:
        self.pipelines = pipelines

    def allowed(self, user: Any, application: str, method: str, auth_manager: Any | None = None) -> bool:
        """May ``user`` do ``method`` (``GET`` read, ``PUT`` act) on the application's clusters?"""
        from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

        manager = auth_manager if auth_manager is not None else _auth_manager()
        pipelines = self.pipelines.get().get(application, ())
        if not pipelines:
            return bool(manager.is_authorized_dag(method=method, user=user))
        return any(
            manager.is_authorized_dag(method=method, user=user, details=DagDetails(id=p.dag_id, team_name=p.team))
            for p in pipelines
        )


def _auth_manager() -> Any:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager()


def user_name(user: Any) -> str:
    """How the audit trail names a user."""
    for getter in ("get_name", "get_id"):
        try:
            value = getattr(user, getter)()
        except Exception:
            continue
        if value:
            return str(value)
    return "unknown"


# --------------------------------------------------------------------------- cross-site requests


UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SESSION_COOKIE = "_token"
"""The Airflow UI's session cookie (``airflow.api_fastapi.auth.managers.base_auth_manager.COOKIE_NAME_JWT_TOKEN``)."""


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        return None
    default = {"http": 80, "https": 443}.get(parts.scheme)
    port = parts.port if parts.port is not None else default
    return f"{parts.scheme}://{parts.hostname.lower()}:{port}"


def own_origins(scope: Scope, headers: Mapping[str, str] | Headers) -> set[str]:
    """The origins this server answers as: its ``Host`` header, and ``[api] base_url``."""
    found: set[str] = set()
    scheme = str(scope.get("scheme") or "http")
    host = headers.get("host")
    if host:
        origin = _origin(f"{scheme}://{host}")
        if origin:
            found.add(origin)
    try:
        from airflow.configuration import conf

        base_url = conf.get("api", "base_url", fallback="") or ""
    except Exception:
        base_url = ""
    if base_url:
        origin = _origin(base_url)
        if origin:
            found.add(origin)
    return found


def session_cookies(headers: Headers) -> dict[str, str]:
    """The request's cookies exactly as Starlette's ``Request.cookies`` (and so Airflow's ``get_user``) reads them.

    Every ``Cookie`` header counts, parsed by Starlette's own parser: a guard that read only
    one header, or parsed differently, could miss the session cookie that Airflow then uses.
    """
    cookies: dict[str, str] = {}
    for header in headers.getlist("cookie"):
        cookies.update(cookie_parser(header))
    return cookies


def cross_site_refusal(scope: Scope) -> tuple[int, str] | None:
    """Why a state-changing request is refused (status, detail), or None if it may go on."""
    if scope.get("type") != "http" or scope.get("method") not in UNSAFE_METHODS:
        return None
    headers = Headers(scope=scope)
    bearer = headers.get("authorization", "").lower().startswith("bearer ")
    cookie = SESSION_COOKIE in session_cookies(headers)
    if not bearer and not cookie:
        return None  # no credentials at all: the route answers 401
    media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        return 415, "actions take a JSON body: send Content-Type: application/json (an empty action body is {})"
    if bearer:
        return None  # a browser never adds this header by itself: no other site can make this request
    claimed = headers.get("origin")
    if claimed is None or claimed == "null":
        claimed = headers.get("referer") or None
    if claimed is None:
        return 403, (
            "cross-site request refused: a request authenticated by the session cookie must carry an Origin or "
            "Referer header of this server (browsers add it), or authenticate with Authorization: Bearer"
        )
    origin = _origin(claimed)
    if origin is None or origin not in own_origins(scope, headers):
        return 403, f"cross-site request refused: origin {claimed!r} is not this server"
    return None


class CrossSiteGuard:
    """ASGI middleware: :func:`cross_site_refusal` for every request of the app it wraps."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = cross_site_refusal(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, detail = refusal
        body = json.dumps({"detail": detail, "type": "CrossSiteRequest", "hint": ""}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


__all__ = [
    "EDIT",
    "READ",
    "Authorizer",
    "CrossSiteGuard",
    "Pipeline",
    "PipelineIndex",
    "application_of",
    "cross_site_refusal",
    "read_pipelines",
    "user_name",
]
