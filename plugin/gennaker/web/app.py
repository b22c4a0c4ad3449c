"""The Clusters API: a FastAPI app that Airflow's API server mounts at ``/gennaker`` (plugin ``fastapi_apps``).

Routes (all JSON, camelCase; the contract is ``docs/clusters-api.md`` and ``/gennaker/openapi.json``)::

    GET  /api/applications
    GET  /api/applications/{application}/clusters
    GET  /api/applications/{application}/clusters/{account}/{cluster}
    GET  /api/applications/{application}/clusters/{account}/{cluster}/history
    POST /api/applications/{application}/clusters/{account}/{cluster}/rollback
    GET  /api/applications/{application}/serverGroups/{account}/{region}/{serverGroup}
    POST /api/applications/{application}/serverGroups/{account}/{region}/{serverGroup}/resize
    POST /api/applications/{application}/serverGroups/{account}/{region}/{serverGroup}/enable
    POST /api/applications/{application}/serverGroups/{account}/{region}/{serverGroup}/disable
    POST /api/applications/{application}/serverGroups/{account}/{region}/{serverGroup}/destroy
    POST /api/applications/{application}/serverGroups/{account}/{region}/{serverGroup}/instances/{instanceId}/terminate
    GET  /api/applications/{application}/loadBalancers
    GET  /api/applications/{application}/firewalls
    GET  /api/applications/{application}/audit
    GET  /api/applications/{application}/operations/{account}/{operationId}

Authentication is Airflow's (``GetUserDep``: bearer token or the UI's ``_token`` cookie);
permissions and the cross-site rule are in :mod:`gennaker.web.auth`. Errors are JSON
``{"detail", "type", "hint"}`` with the status of :func:`gennaker.web.actions.status_for`.

Importing this module imports Airflow's API server code: the plugin imports it only when
the API server asks for its FastAPI apps.
"""

from __future__ import annotations

import logging
import pathlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import APIRouter, Body, Depends, FastAPI, Path, Query, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from gennaker import __version__
from gennaker.canary.report import canary_report_router
from gennaker.errors import CloudError
from gennaker.web import models as m
from gennaker.web.actionlock import ClusterLocked
from gennaker.web.actions import Target, status_for
from gennaker.web.auth import CrossSiteGuard, user_name
from gennaker.web.home import LocalStateUnavailable, check_home, unavailable_from
from gennaker.web.refusals import ACTION_ROUTES
from gennaker.web.service import ClustersService, Forbidden, Settings, Unsupported

log = logging.getLogger(__name__)

URL_PREFIX = "/gennaker"
STATIC_DIR = pathlib.Path(__file__).with_name("static")
"""The Clusters page's built bundle and icons (``/gennaker/static/...``; built by scripts/build-ui.sh)."""

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": m.ErrorResponse, "description": "no token (Airflow answers {'detail': 'Not authenticated'})"},
    403: {"model": m.ErrorResponse, "description": "not allowed, an invalid token, or a cross-site request"},
    404: {"model": m.ErrorResponse, "description": "no such application part, account or server group"},
    503: {"model": m.ErrorResponse, "description": "the cloud (or the local state) is not answering; retry"},
}
_ACTION_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    400: {"model": m.ErrorResponse, "description": "the provider refused the request as written"},
    409: {
        "model": m.ErrorResponse,
        "description": "a traffic guard, a pipeline holding the cluster's lock (ClusterLocked), or another conflict",
    },
    415: {"model": m.ErrorResponse, "description": "the body is not application/json"},
}

# Every string a caller sends is bounded (m.MAX_NAME): a longer one is a 422 before any work or lookup.
Application = Annotated[
    str, Path(max_length=m.MAX_NAME, description="the application (first part of app-stack-detail-v000)")
]
Account = Annotated[str, Path(max_length=m.MAX_NAME, description="'local' or a gennaker_local connection id")]
Region = Annotated[
    str, Path(max_length=m.MAX_NAME, description="the server group's region ('local' for the local provider)")
]
Cluster = Annotated[str, Path(max_length=m.MAX_NAME, description="app-stack-detail")]
ServerGroupName = Annotated[str, Path(alias="serverGroup", max_length=m.MAX_NAME, description="app-stack-detail-v000")]
InstanceId = Annotated[str, Path(alias="instanceId", max_length=m.MAX_NAME)]
OperationId = Annotated[str, Path(alias="operationId", max_length=m.MAX_NAME)]
Before = Annotated[int | None, Query(ge=0, le=m.MAX_CURSOR, description="only entries older than this (a nextBefore)")]


def get_service(request: Request, user: GetUserDep) -> ClustersService:
    """The worker's :class:`ClustersService` (built on first use), once the caller is known and the home usable.

    Every API route depends on it, so a broken ``$GENNAKER_HOME`` answers every route 503
    (:func:`gennaker.web.home.check_home`) to an authenticated caller, and the caller is kept
    for the audit row of a request that then fails validation (:func:`_invalid`).
    """
    request.state.gennaker_user = user
    check_home()
    state = request.app.state
    service = getattr(state, "service", None)
    if service is None:
        with _lock:
            service = getattr(state, "service", None)
            if service is None:
                service = state.service = ClustersService(Settings.from_airflow())
    assert isinstance(service, ClustersService)
    return service


_lock = threading.Lock()
Service = Annotated[ClustersService, Depends(get_service)]


def _json(content: bytes) -> Response:
    return Response(content=content, media_type="application/json")


router = APIRouter(prefix="/api", responses=_ERRORS)


# --------------------------------------------------------------------------- reads


@router.get("/applications", response_model=m.ApplicationsResponse, summary="Applications the caller may read")
def list_applications(user: GetUserDep, service: Service) -> Response:
    """Applications of every account (server groups, load balancers, firewalls) and of the gennaker pipelines."""
    return _json(service.applications(user))


@router.get(
    "/applications/{application}/clusters",
    response_model=m.ClustersResponse,
    summary="An application's clusters and server groups",
)
def list_clusters(application: Application, user: GetUserDep, service: Service) -> Response:
    """Every account's clusters of the application; server groups newest first, instances counted by health."""
    return _json(service.clusters(user, application))


@router.get(
    "/applications/{application}/clusters/{account}/{cluster}",
    response_model=m.ClusterResponse,
    summary="One cluster",
)
def get_cluster(
    application: Application, account: Account, cluster: Cluster, user: GetUserDep, service: Service
) -> Response:
    """One cluster of the application in one account."""
    return _json(service.cluster(user, application, account, cluster))


@router.get(
    "/applications/{application}/clusters/{account}/{cluster}/history",
    response_model=m.HistoryResponse,
    summary="A cluster's deployment history",
    responses={501: {"model": m.ErrorResponse, "description": "the account's provider keeps no history here"}},
)
def cluster_history(
    application: Application,
    account: Account,
    cluster: Cluster,
    user: GetUserDep,
    service: Service,
    before: Before = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> m.HistoryResponse:
    """Which pipeline run (or which user of this page) created, resized, enabled, disabled or destroyed which group."""
    return service.history(user, application, account, cluster, before=before, limit=limit)


@router.get(
    "/applications/{application}/serverGroups/{account}/{region}/{serverGroup}",
    response_model=m.ServerGroupResponse,
    summary="One server group with its instances",
)
def get_server_group(
    application: Application,
    account: Account,
    region: Region,
    server_group: ServerGroupName,
    user: GetUserDep,
    service: Service,
) -> Response:
    """A server group, its instances (health, since when), its load balancers and firewalls."""
    return _json(service.server_group(user, application, account, region, server_group))


@router.get(
    "/applications/{application}/loadBalancers",
    response_model=m.LoadBalancersResponse,
    summary="An application's load balancers",
)
def list_load_balancers(application: Application, user: GetUserDep, service: Service) -> Response:
    """Load balancers of the application, with the server groups each serves."""
    return _json(service.load_balancers(user, application))


@router.get(
    "/applications/{application}/firewalls", response_model=m.FirewallsResponse, summary="An application's firewalls"
)
def list_firewalls(application: Application, user: GetUserDep, service: Service) -> Response:
    """Firewalls of the application, with their rules and the server groups that use them."""
    return _json(service.firewalls(user, application))


@router.get(
    "/applications/{application}/audit",
    response_model=m.AuditResponse,
    summary="The audit trail of this page's actions",
)
def list_audit(
    application: Application,
    user: GetUserDep,
    service: Service,
    cluster: Annotated[str | None, Query(max_length=m.MAX_NAME)] = None,
    server_group: Annotated[str | None, Query(alias="serverGroup", max_length=m.MAX_NAME)] = None,
    before: Before = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> m.AuditResponse:
    """Who did what, when, and how it ended; newest first."""
    return service.audit_entries(
        user, application, cluster=cluster, server_group=server_group, before=before, limit=limit
    )


@router.get(
    "/applications/{application}/operations/{account}/{operationId}",
    response_model=m.OperationView,
    summary="Poll an operation",
)
def get_operation(
    application: Application, account: Account, operation_id: OperationId, user: GetUserDep, service: Service
) -> m.OperationView:
    """The current state of an operation an action returned (poll until ``done``)."""
    return service.operation(user, application, account, operation_id)


# --------------------------------------------------------------------------- actions

_SERVER_GROUP = "/applications/{application}/serverGroups/{account}/{region}/{serverGroup}"


def _action(path: str, summary: str) -> Callable[[Callable[..., m.ActionResponse]], Callable[..., m.ActionResponse]]:
    """An action route: POST, 202 Accepted with an :class:`ActionResponse`."""
    return router.post(
        path, status_code=202, response_model=m.ActionResponse, responses=_ACTION_ERRORS, summary=summary
    )


def _group(application: str, account: str, region: str, server_group: str) -> Target:
    return Target(application=application, account=account, region=region, server_group=server_group)


@_action(f"{_SERVER_GROUP}/resize", "Resize a server group")
def resize(
    application: Application,
    account: Account,
    region: Region,
    server_group: ServerGroupName,
    body: Annotated[m.ResizeRequest, Body()],
    user: GetUserDep,
    service: Service,
) -> m.ActionResponse:
    """Set min, max and desired (the resizeServerGroup stage; a guarded cluster's last serving group keeps > 0)."""
    return service.resize(user, _group(application, account, region, server_group), body)


@_action(f"{_SERVER_GROUP}/enable", "Enable a server group")
def enable(
    application: Application,
    account: Account,
    region: Region,
    server_group: ServerGroupName,
    body: Annotated[m.ActionRequest, Body()],
    user: GetUserDep,
    service: Service,
) -> m.ActionResponse:
    """Put it in service: its load balancers send it traffic (the enableServerGroup stage)."""
    return service.enable(user, _group(application, account, region, server_group), body)


@_action(f"{_SERVER_GROUP}/disable", "Disable a server group")
def disable(
    application: Application,
    account: Account,
    region: Region,
    server_group: ServerGroupName,
    body: Annotated[m.ActionRequest, Body()],
    user: GetUserDep,
    service: Service,
) -> m.ActionResponse:
    """Take it out of service; its instances keep running (the disableServerGroup stage; traffic guards apply)."""
    return service.disable(user, _group(application, account, region, server_group), body)


@_action(f"{_SERVER_GROUP}/destroy", "Destroy a server group")
def destroy(
    application: Application,
    account: Account,
    region: Region,
    server_group: ServerGroupName,
    body: Annotated[m.ActionRequest, Body()],
    user: GetUserDep,
    service: Service,
) -> m.ActionResponse:
    """Disable it, then delete it and its instances (the destroyServerGroup stage; traffic guards apply)."""
    return service.destroy(user, _group(application, account, region, server_group), body)


@_action(f"{_SERVER_GROUP}/instances/{{instanceId}}/terminate", "Terminate an instance")
def terminate_instance(
    application: Application,
    account: Account,
    region: Region,
    server_group: ServerGroupName,
    instance_id: InstanceId,
    body: Annotated[m.TerminateRequest, Body()],
    user: GetUserDep,
    service: Service,
) -> m.ActionResponse:
    """Terminate one instance: the group replaces it, or shrinks by one with ``decrement``."""
    target = Target(application, account, region, server_group=server_group, instance_id=instance_id)
    return service.terminate(user, target, body)


@_action("/applications/{application}/clusters/{account}/{cluster}/rollback", "Roll a cluster back")
def rollback(
    application: Application,
    account: Account,
    cluster: Cluster,
    body: Annotated[m.RollbackRequest, Body()],
    user: GetUserDep,
    service: Service,
) -> m.ActionResponse:
    """Re-enable the previous server group (grown to the current one's size), wait until it is healthy, then disable
    the newer ones: the rollback stage. If it is not healthy within ``timeoutSeconds``, nothing is disabled."""
    return service.rollback(user, Target(application, account, body.region, cluster=cluster), body)


# --------------------------------------------------------------------------- errors and the app


def _error(status: int, detail: str, kind: str, hint: str = "") -> JSONResponse:
    return JSONResponse(status_code=status, content={"detail": detail, "type": kind, "hint": hint})


def _cloud_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, CloudError)
    response = _error(status_for(error), error.message, type(error).__name__, error.hint)
    if error.retryable:
        response.headers["Retry-After"] = "5"
    return response


def _forbidden(request: Request, error: Exception) -> JSONResponse:
    return _error(403, str(error), "Forbidden", "ask for edit access to one of the application's pipelines (DAGs)")


def _unsupported(request: Request, error: Exception) -> JSONResponse:
    return _error(501, str(error), "Unsupported")


def _locked(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ClusterLocked)
    return _error(409, error.detail, "ClusterLocked", error.hint)


def _unavailable(request: Request, error: Exception) -> JSONResponse:
    if not isinstance(error, LocalStateUnavailable):  # an SQLite or file error in a route: no path in the answer
        error = unavailable_from(error)
    response = _error(503, error.detail, "LocalStateUnavailable", error.hint)
    response.headers["Retry-After"] = "30"
    return response


async def _invalid(request: Request, error: Exception) -> Response:
    """FastAPI's 422, and for an action an audit row of the refused attempt (without what was sent)."""
    assert isinstance(error, RequestValidationError)
    action = ACTION_ROUTES.get(getattr(request.scope.get("route"), "name", ""))
    user = getattr(request.state, "gennaker_user", None)
    service = getattr(request.app.state, "service", None)
    if action is not None and user is not None and isinstance(service, ClustersService):
        params = request.path_params
        target = Target(
            application=str(params.get("application", "")),
            account=str(params.get("account", "")),
            region=params.get("region"),
            cluster=params.get("cluster"),
            server_group=params.get("serverGroup"),
            instance_id=params.get("instanceId"),
        )
        kinds = sorted({str(e.get("type", "invalid")) for e in error.errors()})[:5]  # error kinds, not the values
        message = f"the request does not validate ({', '.join(kinds)})"
        try:
            await run_in_threadpool(service.runner.refused, user_name(user), action, target, "REFUSED", 422, message)
        except Exception:  # the 422 must still reach the caller
            log.exception("recording a refused %s failed", action)
    return await request_validation_exception_handler(request, error)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    service = getattr(app.state, "service", None)
    if service is not None:
        service.close()


def create_app(service: ClustersService | None = None) -> FastAPI:
    """A new Clusters API app (``service``: a ready one, else built from Airflow's configuration on first use)."""
    app = FastAPI(
        title="gennaker Clusters API",
        version=__version__,
        description="Applications, clusters, server groups, instances, load balancers and firewalls of gennaker's "
        "cloud accounts, and actions on them, guarded by Airflow's auth manager. See docs/clusters-api.md.",
        lifespan=_lifespan,
        # FastAPI's /docs and /redoc pages load Swagger UI and ReDoc from a CDN (cdn.jsdelivr.net), and neither
        # FastAPI nor Airflow ships those assets: no third-party script here, so no pages. /openapi.json stays.
        docs_url=None,
        redoc_url=None,
    )
    if service is not None:
        app.state.service = service
    app.include_router(router)
    app.include_router(canary_report_router())  # GET /canary/reports/...: the canary stage's report pages
    app.mount("/static", StaticFiles(directory=STATIC_DIR, check_dir=False), name="static")  # the Clusters page
    app.add_exception_handler(CloudError, _cloud_error)
    app.add_exception_handler(Forbidden, _forbidden)
    app.add_exception_handler(Unsupported, _unsupported)
    app.add_exception_handler(ClusterLocked, _locked)
    app.add_exception_handler(RequestValidationError, _invalid)
    # The state files' errors (not every OSError: a provider's refused connection is no broken home).
    for unusable in (LocalStateUnavailable, sqlite3.Error, PermissionError, FileNotFoundError, NotADirectoryError):
        app.add_exception_handler(unusable, _unavailable)
    app.add_middleware(CrossSiteGuard)
    return app


_app: FastAPI | None = None


def get_app() -> FastAPI:
    """The app the plugin mounts (one per process)."""
    global _app
    with _lock:
        if _app is None:
            _app = create_app()
        return _app


__all__ = ["STATIC_DIR", "URL_PREFIX", "create_app", "get_app", "get_service"]
