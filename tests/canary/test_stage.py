"""The canary stage against an in-memory cloud: phases, intervals, early stop, manual judgment, every cleanup path.

Time is a fake clock (the stage's ``_utcnow``); every wait defers (``GENNAKER_INLINE_WAIT=0``) and the
harness resumes the task as Airflow would, with a fresh operator each time (a resumed task is parsed
anew), so all the state the stage keeps goes through its deferral kwargs and XCom.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import structlog
from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk.exceptions import TaskAwaitingInput, TaskDeferred
from fakecloud import FakeProvider

from gennaker.canary import plan_intervals
from gennaker.canary.report import REPORT_KEY, render_report
from gennaker.canary.sources import kayenta_config
from gennaker.cloud.model import (
    Health,
    Instance,
    LoadBalancer,
    MetricSeries,
    Operation,
    OperationKind,
    ServerGroupSpec,
)
from gennaker.cloud.naming import format_server_group_name
from gennaker.cloud.provider import IdempotencyKey, ProviderUnavailable
from gennaker.operators import base as sg
from gennaker.operators import canary as canary_mod
from gennaker.operators.canary import (
    CanaryCleanupOperator,
    CanaryFailed,
    CanaryInterrupted,
    CanaryOperator,
    CanaryReportLink,
    Window,
    plan_windows,
    role_clusters,
)
from gennaker.operators.server_group import PENDING_KEY

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
LIVE, NEW = "hello-prod-v001", "hello-prod-v002"
BASELINE, CANARY = "hello-prod-baseline-v000", "hello-prod-canary-v000"

# --------------------------------------------------------------------------- the fake cloud

MetricFn = Callable[[str, str, datetime], "float | None"]


def steady(values: dict[str, float], canary: dict[str, float] | None = None) -> MetricFn:
    """Every second: ``values[name]`` (``canary[name]`` for canary groups), with a small deterministic wobble."""

    def fn(group: str, name: str, at: datetime) -> float | None:
        base = (canary or {}).get(name, values[name]) if "-canary-" in group else values[name]
        return base * (1 + 0.05 * math.sin(at.timestamp() * 7.3 + len(group)))

    return fn


class CanaryCloud(FakeProvider):
    """Creates server groups (healthy at once), keeps load balancers and their weights, serves ``metric``."""

    def __init__(self, metric: MetricFn | None = None) -> None:
        super().__init__()
        self.lbs: dict[str, LoadBalancer] = {}
        self.metric = metric or steady({"error_rate": 0.0, "latency_p50": 2.0, "latency_p90": 5.0})
        self.metric_calls: list[tuple[str, tuple[str, ...], datetime, datetime, timedelta]] = []
        self.fail_metrics = False

    def add_lb(self, name: str, clusters: Sequence[str] = (), weights: dict[str, int] | None = None) -> None:
        self.lbs[name] = LoadBalancer(
            name=name,
            application="hello",
            account=self.account,
            region=self.region,
            clusters=tuple(clusters),
            weights=dict(weights or {}),
        )

    def create_server_group(self, spec: ServerGroupSpec, key: IdempotencyKey) -> Operation:
        self.calls.append(("create", spec.cluster, str(key)))
        if str(key) in self.op_by_key:
            return self.ops[self.op_by_key[str(key)]]
        taken = [g.sequence for g in self.groups.values() if g.cluster == spec.cluster and g.sequence is not None]
        taken += [int(n.rsplit("-v", 1)[1]) for n in self.destroyed if n.startswith(spec.cluster + "-v")]
        sequence = max(taken, default=-1) + 1
        name = format_server_group_name(spec.cluster, sequence)
        op, _ = self._claim(key, OperationKind.CREATE_SERVER_GROUP, {"server_group": name, "image_id": spec.image_id})
        self.acted.append(("create", name))
        group = spec.server_group(sequence, created=T0 + timedelta(minutes=len(self.groups) + 10))
        instances = tuple(
            Instance(id=f"{name}-i{i}", server_group=name, host="127.0.0.1", port=9100 + i, health=Health.UP)
            for i in range(spec.capacity.desired)
        )
        self.groups[name] = group.replace(created_by=key.created_by(), instances=instances)
        self.ops[op.id] = self._done(op, f"created {name}").replace(result={"server_group": name})
        return self.ops[op.id]

    @property
    def destroyed(self) -> list[str]:
        return [name for method, name in self.acted if method == "destroy"]

    def upsert_load_balancer(self, load_balancer: LoadBalancer, key: IdempotencyKey) -> Operation:
        self.calls.append(("upsert_lb", load_balancer.name, str(key)))
        op, created = self._claim(key, OperationKind.UPSERT_LOAD_BALANCER, {"load_balancer": load_balancer.name})
        if not created:
            return op
        self.acted.append(("upsert_lb", load_balancer.name))
        self.lbs[load_balancer.name] = load_balancer
        return self._done(op, f"upserted {load_balancer.name}")

    def list_load_balancers(self, *, application: str | None = None, region: str | None = None) -> list[LoadBalancer]:
        return list(self.lbs.values())

    def metrics(
        self,
        server_group: str,
        names: Sequence[str],
        start: datetime,
        end: datetime,
        step: timedelta,
        *,
        region: str | None = None,
    ) -> dict[str, MetricSeries]:
        self.metric_calls.append((server_group, tuple(names), start, end, step))
        if self.fail_metrics:
            raise ProviderUnavailable("the metrics store is not answering")
        seconds = step.total_seconds()
        count = math.ceil((end - start).total_seconds() / seconds)
        return {
            name: MetricSeries(
                name=name,
                server_group=server_group,
                start=start,
                step_seconds=seconds,
                values=tuple(
                    self.metric(server_group, name, start + timedelta(seconds=i * seconds)) for i in range(count)
                ),
            )
            for name in names
        }


# --------------------------------------------------------------------------- Airflow, faked


class FakeTI:
    """A task instance: XCom of every task of the run (JSON round trip, as Airflow stores it), task states."""

    dag_id = "hello.deploy-prod"
    run_id = "manual__2026-03-01"
    map_index = -1
    max_tries = 0

    def __init__(self, task_id: str = "canary", xcom: dict[tuple[str, str], Any] | None = None, **more: Any) -> None:
        self.task_id = task_id
        self.try_number = more.get("try_number", 1)
        self.id = uuid.uuid4()
        self.xcom = xcom if xcom is not None else {}
        self.states: dict[str, str] = more.get("states", {})

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcom[(self.task_id, key)] = json.loads(json.dumps(value))

    def xcom_pull(self, task_ids: str | None = None, key: str = "return_value", **_: Any) -> Any:
        return self.xcom.get((task_ids or self.task_id, key))

    def get_task_states(self, *, dag_id: str, task_ids: Sequence[str], run_ids: Sequence[str]) -> dict[str, Any]:
        return {self.run_id: {t: self.states.get(t) for t in task_ids}}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(canary_mod, "_utcnow", fake)
    monkeypatch.setenv("GENNAKER_INLINE_WAIT", "0")  # every wait defers: the harness plays the triggerer
    return fake


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> CanaryCloud:
    provider = CanaryCloud()
    monkeypatch.setattr(sg, "provider_for", lambda conn_id="local", region=None: provider)
    provider.add_lb("hello-prod", clusters=["hello-prod"])
    provider.add_group(LIVE, enabled=True, desired=2)
    provider.groups[LIVE] = provider.groups[LIVE].replace(
        image_id="img-old", load_balancers=("hello-prod",), health_check={"path": "/health"}
    )
    provider.add_group(NEW, enabled=False, desired=2)
    provider.groups[NEW] = provider.groups[NEW].replace(image_id="img-new", load_balancers=("hello-prod",))
    return provider


METRICS = [
    {"name": "error_rate", "query": "error_rate", "direction": "increase", "critical": True},
    {"name": "latency_p50", "query": "latency_p50", "direction": "increase"},
]
THREE = [*METRICS, {"name": "latency_p90", "query": "latency_p90", "direction": "increase"}]


def make(metrics: list[dict[str, Any]] = METRICS, **kwargs: Any) -> Callable[[], CanaryOperator]:
    """A factory of the stage's operator: Airflow makes a new one for every resume."""
    settings: dict[str, Any] = {
        "task_id": "canary",
        "stage_id": "canary",
        "application": "hello",
        "stack": "prod",
        "canary_config": kayenta_config(metrics, name="canary"),
        "queries": {m["name"]: m["query"] for m in metrics},
        "source_stage": "deploy",
        "lifetime": 120.0,
        "interval": 60.0,
        "traffic_percent": 10,
        **kwargs,
    }
    if settings.get("baseline"):
        settings.pop("source_stage")
    return lambda: CanaryOperator(**settings)


def upstream(ti: FakeTI, previous: str | None = LIVE) -> None:
    ti.xcom[("deploy", "return_value")] = {"serverGroup": NEW, "previousServerGroup": previous, "imageId": "img-new"}


class Run:
    """What one harness run saw."""

    def __init__(self) -> None:
        self.output: Any = None
        self.error: BaseException | None = None
        self.deferrals: list[TaskDeferred] = []
        self.asked: TaskAwaitingInput | None = None
        self.logs: list[str] = []
        self.operators: list[CanaryOperator] = []

    @property
    def text(self) -> str:
        return "\n".join(self.logs)


def run(
    factory: Callable[[], CanaryOperator],
    ti: FakeTI,
    clock: Clock,
    *,
    answer: dict[str, Any] | None = None,
    stop_after: int | None = None,
) -> Run:
    """Execute the stage and resume it after every deferral (moving the clock on), as Airflow would.

    ``answer``: the human-in-the-loop event for a marginal score; ``stop_after``: leave the task deferred
    after that many deferrals (a run marked failed while it waits).
    """
    seen = Run()
    context = {"ti": ti, "task_instance": ti}
    step: Callable[[CanaryOperator], Any] = lambda op: op.execute(context)  # noqa: E731
    with structlog.testing.capture_logs() as logs:
        try:
            for _ in range(100):
                op = factory()
                seen.operators.append(op)
                try:
                    seen.output = step(op)
                    return seen
                except TaskDeferred as deferred:
                    seen.deferrals.append(deferred)
                    if stop_after is not None and len(seen.deferrals) >= stop_after:
                        return seen
                    result = deferred.kwargs["result"]
                    event: Any = {"status": "succeeded"}
                    if isinstance(deferred.trigger, DateTimeTrigger):
                        window = Window.from_dict(result["windows"][result["next"]])
                        clock.now = max(clock.now, window.due + timedelta(seconds=3))
                        event = deferred.trigger.moment
                    kwargs = {**deferred.kwargs, "event": event}
                    name = deferred.method_name
                    step = lambda op, n=name, k=kwargs: op.resume_execution(n, k, context)  # noqa: E731
                except TaskAwaitingInput as waiting:
                    seen.asked = waiting
                    if answer is None:
                        return seen
                    kwargs = {**(waiting.kwargs or {}), "event": answer}
                    step = lambda op, k=kwargs: op.resume_execution("resume", k, context)  # noqa: E731
                    answer = None
            raise AssertionError("the stage never finished")
        except BaseException as error:  # the test looks at it
            seen.error = error
            return seen
        finally:
            seen.logs = [_line(entry) for entry in logs]


def _line(entry: dict[str, Any]) -> str:
    """A captured log entry as the task log shows it."""
    args = entry.get("positional_args")
    return str(entry.get("event", "")) % tuple(args) if args else str(entry.get("event", ""))


# --------------------------------------------------------------------------- windows


@pytest.mark.parametrize(
    ("lifetime", "interval", "warmup", "lookback", "offset"),
    [(30, 5, 0, 0, 0), (30, 5, 2, 0, 0), (60, 10, 0, 15, 0), (20, 7, 1, 5, 3), (10, 0, 0, 0, 0), (10, 30, 0, 0, 0)],
)
def test_windows_are_the_judges_plan_to_the_second(
    lifetime: int, interval: int, warmup: int, lookback: int, offset: int
) -> None:
    minute = timedelta(minutes=1)
    ours = plan_windows(
        T0,
        lifetime=lifetime * minute,
        interval=interval * minute,
        warmup=warmup * minute,
        lookback=lookback * minute or None,
        baseline_offset=offset * minute,
    )
    orca = plan_intervals(
        T0,
        lifetime=lifetime * minute,
        interval_mins=interval,
        begin_after_mins=warmup,
        lookback_mins=lookback,
        baseline_offset_mins=offset,
    ).windows
    assert [(w.control_start, w.control_end, w.experiment_start, w.experiment_end) for w in ours] == [
        (w.control_start, w.control_end, w.experiment_start, w.experiment_end) for w in orca
    ]


def test_windows_in_seconds() -> None:
    s = timedelta(seconds=1)
    growing = plan_windows(T0, lifetime=30 * s, interval=15 * s)
    assert [(w.experiment_start, w.experiment_end) for w in growing] == [(T0, T0 + 15 * s), (T0, T0 + 30 * s)]
    sliding = plan_windows(T0, lifetime=40 * s, interval=10 * s, warmup=5 * s, lookback=10 * s, baseline_offset=2 * s)
    assert [(w.experiment_start - T0, w.experiment_end - T0) for w in sliding] == [
        (5 * s, 15 * s),
        (15 * s, 25 * s),
        (25 * s, 35 * s),
        (35 * s, 45 * s),
    ]
    assert all(w.control_start == w.experiment_start - 2 * s for w in sliding)
    assert Window.from_dict(sliding[1].to_dict()) == sliding[1]
    assert role_clusters("hello", "prod", "") == ["hello-prod-baseline", "hello-prod-canary"]
    assert role_clusters("hello", "prod", "eu") == ["hello-prod-eu-baseline", "hello-prod-eu-canary"]


# --------------------------------------------------------------------------- a good canary


def test_a_good_canary_passes_and_cleans_up(cloud: CanaryCloud, clock: Clock) -> None:
    cloud.add_lb("hello-prod", clusters=["hello-prod"], weights={"other-v000": 5})
    ti = FakeTI()
    upstream(ti)
    seen = run(make(), ti, clock)
    assert seen.error is None, seen.text
    out = seen.output
    assert out["verdict"] == "Pass" and out["passed"] is True and out["score"] == 100.0
    assert out["scores"] == [100.0, 100.0] and out["intervals"] == 2 and out["stoppedAt"] is None
    assert out["metrics"] == {"error_rate": "Pass", "latency_p50": "Pass"}
    assert (out["baseline"], out["canary"]) == (BASELINE, CANARY)
    assert (out["baselineImage"], out["canaryImage"]) == ("img-old", "img-new")
    assert out["report"].endswith("/gennaker/canary/reports/hello.deploy-prod/manual__2026-03-01/canary")

    # Baseline and canary: their own clusters, out of service until healthy, the live group's load balancer.
    created = [name for method, name in cloud.acted if method == "create"]
    assert created == [BASELINE, CANARY]
    # 10% each while it ran, then both destroyed and the weights taken away again (another entry kept).
    weights = [key for method, lb, key in cloud.calls if method == "upsert_lb"]
    assert len(weights) == 2
    assert cloud.lbs["hello-prod"].weights == {"other-v000": 5}
    assert sorted(cloud.destroyed) == [BASELINE, CANARY]
    assert [m for m, n in cloud.acted if m == "enable"] == ["enable", "enable"]
    assert LIVE in cloud.groups and cloud.groups[LIVE].enabled

    # Two judgements, each deferred to the triggerer until its window had ended; growing windows.
    delays = [d for d in seen.deferrals if isinstance(d.trigger, DateTimeTrigger)]
    assert len(delays) == 2
    windows = {(start, end) for group, _, start, end, _ in cloud.metric_calls if group == CANARY}
    assert windows == {(T0, T0 + timedelta(seconds=60)), (T0, T0 + timedelta(seconds=120))}
    assert {step for *_, step in cloud.metric_calls} == {timedelta(seconds=1)}

    text = seen.text
    assert "interval 1/2: score 100 (pass 75, marginal 50): error_rate Pass, latency_p50 Pass" in text
    assert "traffic: 10% to baseline hello-prod-baseline-v000, 10% to canary hello-prod-canary-v000" in text
    assert "the rest (80%) stays on live hello-prod-v001" in text
    assert "canary passed: Final canary score 100.0 met or exceeded the pass score threshold." in text

    report = ti.xcom[("canary", REPORT_KEY)]
    assert report["status"] == "passed" and report["verdict"] == "Pass"
    assert [i["score"] for i in report["intervals"]] == [100.0, 100.0]
    assert set(report["last"]["series"]) == {"error_rate", "latency_p50"}
    assert len(report["last"]["series"]["latency_p50"]["control"]["values"]) == 120
    assert ti.xcom[("canary", CanaryReportLink().xcom_key)] == out["report"]
    html = render_report(report)
    assert "latency_p50" in html and "<svg" in html and "Pass" in html


def test_keys_carry_the_try_so_a_retry_starts_over(cloud: CanaryCloud, clock: Clock) -> None:
    ti = FakeTI(try_number=2)
    upstream(ti)
    seen = run(make(), ti, clock)
    assert seen.error is None, seen.text
    keys = [key for method, _, key in cloud.calls if method == "create"]
    assert keys and all(key.endswith("@try2") for key in keys)


# --------------------------------------------------------------------------- bad canaries


def test_a_bad_canary_fails_at_the_first_interval_and_cleans_up(cloud: CanaryCloud, clock: Clock) -> None:
    cloud.metric = steady({"error_rate": 0.0, "latency_p50": 2.0}, canary={"error_rate": 0.2, "latency_p50": 80.0})
    ti = FakeTI()
    upstream(ti)
    seen = run(make(lifetime=180.0), ti, clock)
    assert isinstance(seen.error, CanaryFailed), seen.text
    assert "Final canary score 0.0 is not above the marginal score threshold" in str(seen.error)
    out = ti.xcom[("canary", "return_value")]
    assert out["verdict"] == "Fail" and out["passed"] is False
    assert out["scores"] == [0.0] and out["stoppedAt"] == 1 and out["intervals"] == 3
    assert out["metrics"] == {"error_rate": "High", "latency_p50": "High"}
    assert sorted(cloud.destroyed) == [BASELINE, CANARY]
    assert cloud.lbs["hello-prod"].weights == {}
    assert len([d for d in seen.deferrals if isinstance(d.trigger, DateTimeTrigger)]) == 1  # stopped early
    assert "interval 1/3: score 0 (pass 75, marginal 50): error_rate High, latency_p50 High" in seen.text
    assert "stopping the canary after interval 1 of 3" in seen.text
    report = ti.xcom[("canary", REPORT_KEY)]
    assert report["status"] == "failed" and report["verdict"] == "Fail"


def test_a_marginal_canary_fails_by_default(cloud: CanaryCloud, clock: Clock) -> None:
    cloud.metric = steady({"error_rate": 0.0, "latency_p50": 2.0, "latency_p90": 5.0}, canary={"latency_p90": 9.0})
    ti = FakeTI()
    upstream(ti)
    seen = run(make(THREE, lifetime=60.0), ti, clock)
    assert isinstance(seen.error, CanaryFailed)
    out = ti.xcom[("canary", "return_value")]
    assert out["verdict"] == "Marginal" and out["score"] == pytest.approx(66.67)
    assert "below the pass score threshold" in str(seen.error)
    assert sorted(cloud.destroyed) == [BASELINE, CANARY]


@pytest.mark.parametrize(("choice", "passes"), [("continue", True), ("stop", False)])
def test_a_marginal_canary_can_ask_a_person(
    cloud: CanaryCloud, clock: Clock, monkeypatch: pytest.MonkeyPatch, choice: str, passes: bool
) -> None:
    from airflow.sdk.execution_time import hitl

    asked: list[dict[str, Any]] = []
    monkeypatch.setattr(hitl, "upsert_hitl_detail", lambda **kw: asked.append(kw))
    cloud.metric = steady({"error_rate": 0.0, "latency_p50": 2.0, "latency_p90": 5.0}, canary={"latency_p90": 9.0})
    ti = FakeTI()
    upstream(ti)
    answer = {"chosen_options": [choice], "responded_by_user": {"id": "1", "name": "ada"}}
    seen = run(make(THREE, lifetime=60.0, marginal="judge"), ti, clock, answer=answer)
    assert seen.asked is not None and seen.asked.method_name == "resume"
    (question,) = asked
    assert question["options"] == ["continue", "stop"] and question["ti_id"] == ti.id
    assert "scored **66.67**" in question["body"] and "latency_p90: High" in question["body"]
    # Cleaned up before asking: nothing runs while a person thinks about it.
    assert sorted(cloud.destroyed) == [BASELINE, CANARY]
    out = seen.output if passes else ti.xcom[("canary", "return_value")]
    assert (out["judgment"], out["judgedBy"], out["verdict"], out["passed"]) == (choice, "ada", "Marginal", passes)
    if passes:
        assert seen.error is None
    else:
        assert isinstance(seen.error, CanaryFailed) and "ada chose 'stop'" in str(seen.error)


# --------------------------------------------------------------------------- cleanup on every path


def test_a_failing_metric_source_fails_the_canary_and_cleans_up(cloud: CanaryCloud, clock: Clock) -> None:
    cloud.fail_metrics = True
    ti = FakeTI()
    upstream(ti)
    seen = run(make(), ti, clock)
    assert isinstance(seen.error, CanaryFailed)
    assert "interval 1/2: cannot read error_rate of" in str(seen.error)
    assert "cleaned up: destroying hello-prod-baseline-v000, hello-prod-canary-v000" in str(seen.error)
    assert sorted(cloud.destroyed) == [BASELINE, CANARY]
    assert cloud.lbs["hello-prod"].weights == {}
    assert ti.xcom[("canary", REPORT_KEY)]["status"] == "failed"


def test_a_killed_canary_cleans_up(cloud: CanaryCloud, clock: Clock) -> None:
    ti = FakeTI()
    upstream(ti)
    cloud.metric = steady({"error_rate": 0.0, "latency_p50": 2.0})
    op = make()()
    with pytest.raises(TaskDeferred):
        op.execute({"ti": ti, "task_instance": ti})  # deferred until the first interval ends
    assert set(cloud.groups) >= {BASELINE, CANARY}
    assert cloud.lbs["hello-prod"].weights == {BASELINE: 10, CANARY: 10}
    op.on_kill()
    assert sorted(cloud.destroyed) == [BASELINE, CANARY]
    assert cloud.lbs["hello-prod"].weights == {}


def test_the_cleanup_task_destroys_what_a_stopped_canary_left(
    cloud: CanaryCloud, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(canary_mod, "RESWEEP_SECONDS", 0.0)
    ti = FakeTI()
    upstream(ti)
    seen = run(make(), ti, clock, stop_after=1)  # marked failed while deferred: it never resumes
    assert not seen.error and len(seen.deferrals) == 1
    # A group of the same clusters made by another run stays.
    cloud.add_group("hello-prod-canary-v007", enabled=True, desired=1)
    assert cloud.lbs["hello-prod"].weights == {BASELINE: 10, CANARY: 10}
    assert ti.xcom[("canary", PENDING_KEY)]["created"] == [BASELINE, CANARY]

    cleanup = CanaryCleanupOperator(
        task_id="canary.cleanup",
        stage_id="canary.cleanup",
        canary_task_id="canary",
        application="hello",
        clusters=role_clusters("hello", "prod", ""),
    )
    cti = FakeTI("canary.cleanup", xcom=ti.xcom, states={"canary": "failed"})
    with structlog.testing.capture_logs() as logs, pytest.raises(CanaryInterrupted) as failed:
        cleanup.execute({"ti": cti, "task_instance": cti})
    assert str(failed.value) == (
        "canary 'canary' ended failed before it finished (stopped while it ran or waited); destroyed "
        "hello-prod-baseline-v000, hello-prod-canary-v000 and took their load balancer weights away"
    )
    assert cti.xcom[("canary.cleanup", "return_value")] == {"canaryState": "failed", "destroyed": [BASELINE, CANARY]}
    assert sorted(cloud.destroyed) == [BASELINE, CANARY]
    assert "hello-prod-canary-v007" in cloud.groups
    assert cloud.lbs["hello-prod"].weights == {}
    text = "\n".join(_line(e) for e in logs)
    assert "destroying hello-prod-baseline-v000 (made by canary 'canary' of this run)" in text
    assert "canary 'canary' (failed) had left hello-prod-baseline-v000, hello-prod-canary-v000 behind" in text
    # Run again (a cleared task): nothing is left, and it still says the canary was stopped.
    acted = list(cloud.acted)
    with pytest.raises(CanaryInterrupted, match="it had left nothing behind"):
        cleanup.execute({"ti": cti, "task_instance": cti})
    assert cloud.acted == acted


def test_the_cleanup_task_fails_the_run_of_a_canary_stopped_while_asking(
    cloud: CanaryCloud, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.sdk.execution_time import hitl

    monkeypatch.setattr(canary_mod, "RESWEEP_SECONDS", 0.0)
    monkeypatch.setattr(hitl, "upsert_hitl_detail", lambda **kw: None)
    cloud.metric = steady({"error_rate": 0.0, "latency_p50": 2.0, "latency_p90": 5.0}, canary={"latency_p90": 9.0})
    ti = FakeTI()
    upstream(ti)
    seen = run(make(THREE, lifetime=60.0, marginal="judge"), ti, clock)  # nobody answers: the run is marked failed
    assert seen.asked is not None and sorted(cloud.destroyed) == [BASELINE, CANARY]
    cleanup = CanaryCleanupOperator(
        task_id="canary.cleanup",
        stage_id="canary.cleanup",
        canary_task_id="canary",
        application="hello",
        clusters=role_clusters("hello", "prod", ""),
    )
    cti = FakeTI("canary.cleanup", xcom=ti.xcom, states={"canary": "failed"})
    with pytest.raises(CanaryInterrupted, match=r"ended failed before it finished .*; it had left nothing behind"):
        cleanup.execute({"ti": cti, "task_instance": cti})
    # A canary that failed by itself (its score) has finished: the cleanup finds nothing and succeeds.
    bad = FakeTI("canary.cleanup", xcom={("canary", REPORT_KEY): {"status": "failed"}}, states={"canary": "failed"})
    assert cleanup.execute({"ti": bad, "task_instance": bad}) == {"canaryState": "failed", "destroyed": []}


def test_the_cleanup_task_after_a_good_canary_finds_nothing(cloud: CanaryCloud, clock: Clock) -> None:
    ti = FakeTI()
    upstream(ti)
    assert run(make(), ti, clock).error is None
    acted = list(cloud.acted)
    cleanup = CanaryCleanupOperator(
        task_id="canary.cleanup",
        stage_id="canary.cleanup",
        canary_task_id="canary",
        application="hello",
        clusters=role_clusters("hello", "prod", ""),
    )
    cti = FakeTI("canary.cleanup", xcom=ti.xcom, states={"canary": "success"})
    assert cleanup.execute({"ti": cti, "task_instance": cti}) == {"canaryState": "success", "destroyed": []}
    assert cloud.acted == acted


# --------------------------------------------------------------------------- refusals before anything is made


def test_no_live_version_means_no_canary(cloud: CanaryCloud, clock: Clock) -> None:
    ti = FakeTI()
    upstream(ti, previous=None)
    seen = run(make(), ti, clock)
    assert isinstance(seen.error, CanaryFailed)
    assert "nothing to compare with: hello-prod-v002 is the first server group of hello-prod" in str(seen.error)
    assert not [m for m, _ in cloud.acted if m == "create"]


def test_a_query_the_source_does_not_have_fails_before_deploying(cloud: CanaryCloud, clock: Clock) -> None:
    ti = FakeTI()
    upstream(ti)
    seen = run(make([{"name": "cpu", "query": "cpu_usage"}]), ti, clock)
    assert isinstance(seen.error, CanaryFailed)
    assert "metric 'cpu': the local metric source has no series 'cpu_usage'" in str(seen.error)
    assert cloud.acted == []


def test_existing_server_groups_are_analysed_without_deploying(cloud: CanaryCloud, clock: Clock) -> None:
    cloud.metric = steady({"error_rate": 0.0, "latency_p50": 2.0})
    ti = FakeTI()
    seen = run(make(baseline=LIVE, canary=NEW, lifetime=60.0), ti, clock)
    assert seen.error is None, seen.text
    assert seen.output["baseline"] == LIVE and seen.output["canary"] == NEW and seen.output["verdict"] == "Pass"
    assert cloud.acted == []  # nothing made, moved or destroyed
    assert {g for g, *_ in cloud.metric_calls} == {LIVE, NEW}


def test_too_few_points_are_warned_about(cloud: CanaryCloud, clock: Clock) -> None:
    ti = FakeTI()
    upstream(ti)
    seen = run(make(lifetime=30.0, interval=15.0), ti, clock)
    assert seen.error is None
    assert "fewer than 50 baseline points for error_rate (15), latency_p50 (15)" in seen.text
    assert any("fewer than 50" in w for w in ti.xcom[("canary", REPORT_KEY)]["warnings"])
