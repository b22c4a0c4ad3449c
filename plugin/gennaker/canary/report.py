"""The canary report: what a person reads to see why a canary passed or failed.

**Where it lives.** The canary stage keeps its report as JSON in the task's XCom
(key :data:`REPORT_KEY`, ``gennaker.canary.report``), updated after every judgement and
when the stage ends. XCom lives in Airflow's database, so the API server reads it whatever
executor ran the task (Local, Celery, Kubernetes), and it goes when the run is deleted.
Series are thinned to at most :data:`CHART_POINTS` points per metric for the chart; the
statistics come from the judge, which saw every point.

**How to get there.** The task's extra link "Canary report" in the Airflow UI
(:class:`gennaker.operators.canary.CanaryReportLink`) opens
``<api base_url>/gennaker/canary/reports/<dag_id>/<run_id>/<task_id>`` (:func:`report_url`),
served by :func:`canary_report_router`, a FastAPI ``APIRouter`` that gennaker's app
(mounted at ``/gennaker`` in Airflow's API server) includes::

    GET /canary/reports/{dag_id}/{run_id}/{task_id}        the report as an HTML page
    GET /canary/reports/{dag_id}/{run_id}/{task_id}/json   the report data as stored

Both take ``?map_index=`` for a mapped task. Authentication is Airflow's (a bearer token,
or the UI's ``_token`` cookie: Airflow's ``get_user``); the caller must be allowed to read
the DAG's XComs (``is_authorized_dag(GET, XCOM)``), else 403.

**The page** (plain HTML with inline SVG, no scripts): the verdict and final score against
the thresholds, the server groups compared and the traffic share, the score of every
interval judged, and per metric its classification and reason, the baseline's and the
canary's summary statistics (count, mean, standard deviation, min, max), the effect size
and confidence interval, and a chart of both series of the last judgement. While the canary
runs, the page reloads itself every 15 seconds.

Importing this module is cheap (no FastAPI, no Airflow): the router is built by
:func:`canary_report_router`, and ``router`` (this module's attribute) builds it on first use.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from gennaker.redact import redact_text

__all__ = [
    "CHART_POINTS",
    "REPORT_KEY",
    "canary_report_router",
    "read_report",
    "render_report",
    "report_path",
    "report_url",
    "thin",
]

REPORT_KEY = "gennaker.canary.report"
"""The XCom key of the report data."""
URL_PREFIX = "/gennaker"
"""Where gennaker's FastAPI app is mounted in Airflow's API server."""
ROUTER_PREFIX = "/canary"
CHART_POINTS = 300

Reader = Callable[[str, str, str, int], "dict[str, Any] | None"]


# --------------------------------------------------------------------------- links


def report_path(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> str:
    """The report's path under the API server's root."""
    path = (
        f"{URL_PREFIX}{ROUTER_PREFIX}/reports/"
        f"{quote(dag_id, safe='')}/{quote(run_id, safe='')}/{quote(task_id, safe='')}"
    )
    return path + (f"?map_index={map_index}" if map_index is not None and map_index >= 0 else "")


def report_url(dag_id: str, run_id: str, task_id: str, map_index: int = -1, base_url: str | None = None) -> str:
    """The report's URL: Airflow's ``[api] base_url`` (if set) and :func:`report_path`."""
    if base_url is None:
        try:
            from airflow.configuration import conf

            base_url = conf.get("api", "base_url", fallback="") or ""
        except Exception:
            base_url = ""
    return base_url.rstrip("/") + report_path(dag_id, run_id, task_id, map_index)


# --------------------------------------------------------------------------- data


def thin(values: Sequence[float | None], limit: int = CHART_POINTS) -> tuple[list[float | None], int]:
    """At most ``limit`` points (means of consecutive runs; None where a run has no data) and the run length."""
    n = len(values)
    if n <= limit:
        return [_clean(v) for v in values], 1
    size = math.ceil(n / limit)
    out: list[float | None] = []
    for i in range(0, n, size):
        chunk = [v for v in (_clean(x) for x in values[i : i + size]) if v is not None]
        out.append(sum(chunk) / len(chunk) if chunk else None)
    return out, size


def _clean(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) or math.isinf(number) else number


def read_report(dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, Any] | None:
    """The stored report of a task (from Airflow's database), or None if there is none."""
    import json

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(
            XComModel.get_many(key=REPORT_KEY, run_id=run_id, dag_ids=dag_id, task_ids=task_id, map_indexes=map_index)
        ).first()
        if row is None:
            return None
        value = XComModel.deserialize_value(row)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------- HTML

_COLORS = {"baseline": "#1f77b4", "canary": "#ff7f0e"}
_LABEL_CLASS = {
    "Pass": "pass",
    "High": "fail",
    "Low": "fail",
    "NodataFailMetric": "fail",
    "Nodata": "muted",
    "Error": "muted",
    "Fail": "fail",
    "Marginal": "marginal",
    "running": "muted",
}
_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem;color:#222;max-width:1000px}
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:1.6rem 0 .4rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.4rem 0}td,th{border:1px solid #ddd;padding:.25rem .5rem;text-align:left}
th{background:#f6f6f6;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:.1rem .5rem;border-radius:.3rem;font-weight:600;color:#fff}
.pass{background:#2e7d32}.fail{background:#c62828}.marginal{background:#ef6c00}.muted{background:#757575}
.note{color:#555}.warn{color:#8a5300}svg{background:#fcfcfc;border:1px solid #eee}
.legend span{display:inline-block;width:1rem;height:.25rem;vertical-align:middle;margin:0 .3rem 0 .8rem}
"""


def _e(value: Any) -> str:
    # Every URL on the page loses its credentials, whatever wrote it into the report (an old run's XCom too).
    return html.escape(redact_text("" if value is None else str(value)))


def _badge(label: Any) -> str:
    text = str(label or "running")
    return f'<span class="badge {_LABEL_CLASS.get(text, "muted")}">{_e(text)}</span>'


def _num(value: Any, digits: int = 4) -> str:
    number = _clean(value)
    if number is None:
        return "&ndash;"
    if number == int(number) and abs(number) < 1e15:
        return str(int(number))
    return f"{number:.{digits}g}"


def render_report(report: Mapping[str, Any]) -> str:
    """The report as a self-contained HTML page."""
    status = report.get("status") or "running"
    verdict = report.get("verdict") or ("running" if status == "running" else status)
    thresholds = report.get("thresholds") or {}
    title = f"Canary {report.get('stage', '')}: {verdict}"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{_e(title)}</title>",
        "<meta http-equiv='refresh' content='15'>" if status == "running" else "",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Canary <code>{_e(report.get('stage'))}</code> {_badge(verdict)}</h1>",
        f"<p class='note'>{_e(report.get('dagId'))} &middot; run {_e(report.get('runId'))}"
        f" &middot; task {_e(report.get('taskId'))}</p>",
    ]
    score = report.get("score")
    if score is not None:
        parts.append(
            f"<p>Final score <b>{_num(score)}</b> (pass {_num(thresholds.get('pass'))}, "
            f"marginal {_num(thresholds.get('marginal'))}). {_e(report.get('message'))}</p>"
        )
    elif status == "running":
        parts.append("<p>The canary is running; this page reloads every 15 seconds.</p>")
    if report.get("error"):
        parts.append(f"<p class='warn'>{_e(report['error'])}</p>")
    parts.append(_setup(report))
    parts.append(_intervals(report))
    parts.append(_metrics(report))
    warnings = list(report.get("warnings") or [])
    if warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li class='warn'>{_e(w)}</li>" for w in warnings) + "</ul>")
    parts.append(
        "<p class='note'>Judge: Kayenta's NetflixACAJudge (Mann-Whitney, 98% confidence, tolerance 0.25). "
        "A score at or below marginal fails; the last interval's score decides.</p></body></html>"
    )
    return "\n".join(p for p in parts if p)


def _setup(report: Mapping[str, Any]) -> str:
    rows = []
    for role in ("baseline", "canary"):
        group = report.get(role) or {}
        if not group:
            continue
        rows.append(
            f"<tr><th>{role}</th><td><code>{_e(group.get('serverGroup'))}</code></td>"
            f"<td>{_e(group.get('image') or '')}</td><td>{_e(group.get('note') or '')}</td></tr>"
        )
    if not rows:
        return ""
    facts = []
    if report.get("live"):
        facts.append(f"live server group <code>{_e(report['live'])}</code>")
    if report.get("trafficPercent"):
        facts.append(f"{_e(report['trafficPercent'])}% of the live traffic to each")
    if report.get("source"):
        facts.append(f"metrics from {_e(report['source'])}")
    if report.get("startedAt"):
        facts.append(f"started {_e(report['startedAt'])}")
    plan = report.get("plan") or {}
    if plan:
        facts.append(
            f"lifetime {_e(plan.get('lifetime'))}, interval {_e(plan.get('interval'))}, "
            f"warm-up {_e(plan.get('warmup'))}, {_e(plan.get('lookback'))} window"
        )
    return (
        "<h2>Server groups</h2><table><tr><th></th><th>server group</th><th>image</th><th></th></tr>"
        + "".join(rows)
        + "</table>"
        + (f"<p class='note'>{'; '.join(facts)}.</p>" if facts else "")
    )


def _intervals(report: Mapping[str, Any]) -> str:
    intervals = list(report.get("intervals") or [])
    planned = report.get("planned")
    if not intervals:
        return f"<h2>Intervals</h2><p class='note'>No interval judged yet (of {_e(planned)}).</p>" if planned else ""
    names = [str(n) for n in (intervals[-1].get("metrics") or {})]
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    rows = []
    for item in intervals:
        labels = item.get("metrics") or {}
        rows.append(
            f"<tr><td class='num'>{_e(item.get('index'))}</td><td>{_e(item.get('window'))}</td>"
            f"<td class='num'>{_num(item.get('score'))}</td><td>{_badge(item.get('classification'))}</td>"
            + "".join(f"<td>{_badge(labels.get(n))}</td>" for n in names)
            + "</tr>"
        )
    return (
        f"<h2>Intervals ({len(intervals)} of {_e(planned)} judged)</h2><table><tr><th>#</th><th>window</th>"
        f"<th>score</th><th>result</th>{head}</tr>" + "".join(rows) + "</table>"
    )


def _metrics(report: Mapping[str, Any]) -> str:
    last = report.get("last") or {}
    results = list(last.get("results") or [])
    if not results:
        return ""
    series = last.get("series") or {}
    out = ["<h2>Metrics (last judgement)</h2>"]
    for result in results:
        name = str(result.get("name"))
        meta = result.get("resultMetadata") or {}
        control = (result.get("controlMetadata") or {}).get("stats") or {}
        experiment = (result.get("experimentMetadata") or {}).get("stats") or {}
        flags = [f"direction {result.get('direction')}"]
        if result.get("critical"):
            flags.append("critical")
        if result.get("muted"):
            flags.append("muted")
        out.append(f"<h3>{_e(name)} {_badge(result.get('classification'))}</h3>")
        query = (report.get("queries") or {}).get(name)
        if query:
            out.append(f"<p class='note'>query <code>{_e(query)}</code>; {_e(', '.join(flags))}</p>")
        if result.get("classificationReason"):
            out.append(f"<p>{_e(result['classificationReason'])}</p>")
        stat_rows = "".join(
            f"<tr><th>{role}</th>"
            + "".join(f"<td class='num'>{_num(stats.get(k))}</td>" for k in ("count", "mean", "std", "min", "max"))
            + "</tr>"
            for role, stats in (("baseline", control), ("canary", experiment))
        )
        out.append(
            "<table><tr><th></th><th>count</th><th>mean</th><th>std dev</th><th>min</th><th>max</th></tr>"
            + stat_rows
            + "</table>"
        )
        out.append(
            f"<p class='note'>effect size ({_e(meta.get('effectSizeMeasure'))}) {_num(meta.get('effectSize'))}; "
            f"canary &minus; baseline: estimate {_num(meta.get('estimate'))}, 98% CI "
            f"[{_num(meta.get('ciLower'))}, {_num(meta.get('ciUpper'))}]</p>"
        )
        pair = series.get(name) or {}
        out.append(chart(pair.get("control") or {}, pair.get("experiment") or {}, name))
    return "\n".join(out)


def chart(control: Mapping[str, Any], experiment: Mapping[str, Any], name: str = "") -> str:
    """An inline SVG line chart of both series, over seconds since each one's window start."""
    width, height, left, right, top, bottom = 760, 200, 60, 10, 10, 28
    lines = {
        "baseline": (float(control.get("step") or 1.0), list(control.get("values") or [])),
        "canary": (float(experiment.get("step") or 1.0), list(experiment.get("values") or [])),
    }
    points = [(i * step, v) for step, values in lines.values() for i, v in enumerate(values) if _clean(v) is not None]
    if not points:
        return "<p class='note'>No data points to chart.</p>"
    span = max(max(t for t, _ in points), 1.0)
    low = min(float(v) for _, v in points if v is not None)
    high = max(float(v) for _, v in points if v is not None)
    if high == low:
        high, low = high + (abs(high) or 1.0) * 0.5, low - (abs(low) or 1.0) * 0.5
    plot_w, plot_h = width - left - right, height - top - bottom

    def x(t: float) -> float:
        return left + plot_w * t / span

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - low) / (high - low))

    svg = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{_e(name)}: baseline and canary">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#999"/>',
        f'<text x="{left - 4}" y="{top + 10}" font-size="11" text-anchor="end">{_num(high)}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" font-size="11" text-anchor="end">{_num(low)}</text>',
        f'<text x="{left}" y="{height - 8}" font-size="11">0 s</text>',
        f'<text x="{left + plot_w}" y="{height - 8}" font-size="11" text-anchor="end">{_num(span)} s</text>',
    ]
    for role, (step, values) in lines.items():
        segments: list[list[str]] = [[]]
        for i, value in enumerate(values):
            number = _clean(value)
            if number is None:
                if segments[-1]:
                    segments.append([])
                continue
            segments[-1].append(f"{x(i * step):.1f},{y(number):.1f}")
        for segment in segments:
            if len(segment) == 1:
                cx, cy = segment[0].split(",")
                svg.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{_COLORS[role]}"/>')
            elif segment:
                svg.append(
                    f'<polyline fill="none" stroke="{_COLORS[role]}" stroke-width="1.5" points="{" ".join(segment)}"/>'
                )
    svg.append("</svg>")
    legend = "".join(f"<span style='background:{color}'></span>{role}" for role, color in _COLORS.items())
    return "".join(svg) + f"<div class='legend note'>{legend}</div>"


# --------------------------------------------------------------------------- the router


def canary_report_router(reader: Reader | None = None) -> Any:
    """The FastAPI ``APIRouter`` serving reports under ``/canary`` (see the module docstring).

    ``reader(dag_id, run_id, task_id, map_index)`` returns the stored report (default:
    :func:`read_report`); tests pass their own.
    """
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi import APIRouter, Depends, HTTPException, Query
    from fastapi.responses import HTMLResponse, JSONResponse

    read = reader or read_report
    caller = Depends(get_user)  # Airflow's: a bearer token, or the UI's _token cookie
    # Pages for people, not part of the Clusters API's contract (docs/clusters-api.md): left out of its OpenAPI.
    router = APIRouter(prefix=ROUTER_PREFIX, tags=["canary"], include_in_schema=False)

    def load(user: Any, dag_id: str, run_id: str, task_id: str, map_index: int) -> dict[str, Any]:
        if not _may_read(user, dag_id):
            raise HTTPException(403, f"you may not read the XComs of DAG {dag_id!r}, so not its canary reports")
        found = read(dag_id, run_id, task_id, map_index)
        if found is None:
            raise HTTPException(
                404, f"no canary report for task {task_id!r} of run {run_id!r} of {dag_id!r} (not started yet?)"
            )
        return found

    # Annotations are strings here (PEP 563) that FastAPI resolves in this module's globals: so only
    # builtins and Any, with the dependencies as defaults.
    @router.get(
        "/reports/{dag_id}/{run_id}/{task_id}",
        response_class=HTMLResponse,
        response_model=None,
        summary="A canary stage's report (HTML)",
    )
    def report_page(dag_id: str, run_id: str, task_id: str, user: Any = caller, map_index: int = Query(-1)) -> Any:
        return HTMLResponse(render_report(load(user, dag_id, run_id, task_id, map_index)))

    @router.get(
        "/reports/{dag_id}/{run_id}/{task_id}/json",
        response_model=None,
        summary="A canary stage's report data (JSON)",
    )
    def report_data(dag_id: str, run_id: str, task_id: str, user: Any = caller, map_index: int = Query(-1)) -> Any:
        return JSONResponse(load(user, dag_id, run_id, task_id, map_index))

    return router


def _may_read(user: Any, dag_id: str) -> bool:
    """Airflow's own check of ``GET`` on the DAG's XComs (``requires_access_dag``), the DAG's team included."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
    from airflow.models.dag import DagModel

    # As airflow.api_fastapi.core_api.security.requires_access_dag: a multi-team auth manager decides by the team.
    details = DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id))
    return bool(
        get_auth_manager().is_authorized_dag(
            method="GET", access_entity=DagAccessEntity.XCOM, details=details, user=user
        )
    )


def __getattr__(name: str) -> Any:
    if name == "router":
        built = canary_report_router()
        globals()["router"] = built
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
