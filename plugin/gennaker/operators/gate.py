"""The stage gate every stage operator runs first: ``when``, ``onFailure`` and the execution window.

The semantics follow Spinnaker's, mapped onto Airflow states so the grid shows
what happened:

=================  ============================================================
``when`` false     the stage is *skipped*; stages after it still run
halt               the stage *fails*; stages after it are *upstream_failed*; any
                   stage of another branch that has not started yet is *skipped*
                   ("pipeline halted"); the run fails
haltBranch         the error is logged, the stage is *skipped*, so are the stages
                   after it ("branch halted"); other branches go on; the run
                   succeeds if they do (Spinnaker's STOPPED)
failAfterBranches  the stage *fails*; stages after it are *upstream_failed*;
                   other branches finish; then the run fails
ignore             the error is logged, the stage is *skipped*, stages after it
                   run (Spinnaker's FAILED_CONTINUE)
=================  ============================================================

Non-root stages use the trigger rule ``none_failed`` (so a skipped parent does
not stop them); the gate then tells a ``when``-skip (go on) from a halted branch
(stop) by the outcome each skipped stage records in XCom.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar

from airflow.sdk.exceptions import (
    AirflowRescheduleException,
    AirflowSkipException,
    AirflowTaskTerminated,
    DagRunTriggerException,
    DownstreamTasksSkipped,
    TaskAwaitingInput,
    TaskDeferred,
)

from gennaker.operators.expressions import evaluate, is_true
from gennaker.operators.windows import next_window_start

log = logging.getLogger(__name__)

OUTCOME_KEY = "gennaker.outcome"
# Outcomes a skipped stage records; the first two stop the stages after it.
BRANCH_HALTED = "branch_halted"
PIPELINE_HALTED = "pipeline_halted"
SUPERSEDED = "superseded"
FAILED_IGNORED = "failed_ignored"
WHEN_FALSE = "when_false"
_STOPPING = {BRANCH_HALTED, PIPELINE_HALTED, SUPERSEDED}

# Exceptions that steer the task runner rather than report a failure.
_CONTROL_FLOW: tuple[type[BaseException], ...] = (
    TaskDeferred,
    TaskAwaitingInput,
    AirflowSkipException,
    AirflowRescheduleException,
    DagRunTriggerException,
    DownstreamTasksSkipped,
    AirflowTaskTerminated,
    KeyboardInterrupt,
    SystemExit,
)


@functools.cache
def _keywords(init: Callable[..., Any]) -> frozenset[str]:
    return frozenset(inspect.signature(init).parameters)


class StageOutputs(Mapping[str, Any]):
    """``stages.<id>.<key>`` in expressions: earlier stages' return values, pulled lazily."""

    def __init__(self, ti: Any, task_ids: Mapping[str, str]) -> None:
        self._ti = ti
        self._task_ids = task_ids
        self._cache: dict[str, Any] = {}

    def __getitem__(self, stage_id: str) -> Any:
        if stage_id not in self._task_ids:
            raise KeyError(f"no stage {stage_id!r} in this pipeline")
        if stage_id not in self._cache:
            value = self._ti.xcom_pull(task_ids=self._task_ids[stage_id])
            self._cache[stage_id] = _AttrDict(value) if isinstance(value, dict) else value
        return self._cache[stage_id]

    def __getattr__(self, stage_id: str) -> Any:
        try:
            return self[stage_id]
        except KeyError as exc:
            raise AttributeError(str(exc)) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._task_ids)

    def __len__(self) -> int:
        return len(self._task_ids)


class _AttrDict(dict[str, Any]):
    def __getattr__(self, key: str) -> Any:
        try:
            value = self[key]
        except KeyError:
            raise AttributeError(key) from None
        return _AttrDict(value) if isinstance(value, dict) else value


class StageMixin:
    """Mixed into every stage operator, before the Airflow operator class.

    Subclasses implement :meth:`run_stage` (or inherit the wrapped operator's
    ``execute``); Airflow calls :meth:`execute`, which runs the gate first.
    """

    gennaker_stage_type: ClassVar[str] = ""

    def __init__(
        self,
        *,
        stage_id: str,
        when: str | bool | None = None,
        on_failure: str = "halt",
        execution_window: dict[str, Any] | None = None,
        stage_task_ids: Mapping[str, str] | None = None,
        halting_task_ids: list[str] | None = None,
        keep_waiting: bool = True,
        **kwargs: Any,
    ) -> None:
        # The subclass's __init__ is already wrapped by Airflow's apply_defaults, which merged the
        # DAG's default_args and params into kwargs; calling the next class's unwrapped __init__
        # skips a second merge (a deep copy of the DAG's params per task: a third of the parse time).
        next_init = super().__init__
        unwrapped = getattr(next_init, "__wrapped__", None)
        if unwrapped is not None and "default_args" in kwargs:
            # What the skipped wrapper would do: fill the next __init__'s own keywords from default_args.
            for name, value in (kwargs["default_args"] or {}).items():
                if name not in kwargs and name in _keywords(unwrapped):
                    kwargs[name] = value
            unwrapped(self, **kwargs)
        else:
            next_init(**kwargs)
        self.stage_id = stage_id
        self.when = when
        self.on_failure = on_failure
        self.execution_window = execution_window
        self.stage_task_ids = dict(stage_task_ids or {})
        self.halting_task_ids = list(halting_task_ids or [])
        self.keep_waiting = keep_waiting

    # ------------------------------------------------------------------ entry points

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        context["stages"] = StageOutputs(context["ti"], self.stage_task_ids)
        super().render_template_fields(context, jinja_env)  # type: ignore[misc]

    def execute(self, context: Any) -> Any:
        self._gate(context)
        return self._guarded(context, self.run_stage)

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any) -> Any:
        if next_method == "_window_opened":
            return self.execute(context)
        parent = super().resume_execution  # type: ignore[misc]
        return self._guarded(context, lambda ctx: parent(next_method, next_kwargs, ctx))

    def run_stage(self, context: Any) -> Any:
        """The stage's work; by default the wrapped Airflow operator's ``execute``."""
        return super().execute(context)  # type: ignore[misc]

    def _window_opened(self, context: Any, event: Any = None) -> Any:  # pragma: no cover - via resume
        return self.execute(context)

    # ------------------------------------------------------------------ the gate

    def _gate(self, context: Any) -> None:
        ti = context["ti"]
        upstream = sorted(self.upstream_task_ids)  # type: ignore[attr-defined]
        watch = sorted(set(upstream) | set(self.halting_task_ids))
        states: dict[str, Any] = {}
        if watch:
            found = ti.get_task_states(dag_id=ti.dag_id, task_ids=watch, run_ids=[ti.run_id])
            states = found.get(ti.run_id, {}) if isinstance(found, dict) else {}
        halted_by = [t for t in self.halting_task_ids if t != ti.task_id and self._halted(ti, t, states.get(t))]
        if halted_by:
            self._skip(context, PIPELINE_HALTED, f"pipeline halted: stage {halted_by[0]!r} failed")
        for parent in upstream:
            if states.get(parent) != "skipped":
                continue
            outcome = ti.xcom_pull(task_ids=parent, key=OUTCOME_KEY)
            if outcome in _STOPPING:
                self._skip(context, outcome, f"not run: {parent!r} was skipped ({outcome.replace('_', ' ')})")
        if not upstream and not self.keep_waiting:
            waiting = ti.get_dr_count(dag_id=ti.dag_id, states=["queued"])
            if waiting:
                self._skip(
                    context,
                    SUPERSEDED,
                    f"superseded: {waiting} newer run(s) are waiting (concurrency.keepWaiting is false)",
                )
        if self.when is not None and self.when != "":
            result = self._evaluate(self.when, context)
            if not is_true(result):
                self._skip(context, WHEN_FALSE, f"skipped: 'when' is false ({self.when!r} -> {result!r})")
        if self.execution_window:
            now = datetime.now(timezone.utc)
            opens = next_window_start(self.execution_window, now)
            if opens > now:
                log_ = getattr(self, "log", log)
                log_.info("outside the execution window; waiting until %s", opens.isoformat())
                from airflow.providers.standard.triggers.temporal import DateTimeTrigger

                self.defer(  # type: ignore[attr-defined]
                    trigger=DateTimeTrigger(moment=opens),
                    method_name="_window_opened",
                )

    @staticmethod
    def _halted(ti: Any, task_id: str, state: Any) -> bool:
        # Airflow records a failed state only once the task's process has exited, seconds later; until then
        # the stage still reads "running", and its "pipeline halted" outcome (see _guarded) tells.
        if state == "failed":
            return True
        return state == "running" and ti.xcom_pull(task_ids=task_id, key=OUTCOME_KEY) == PIPELINE_HALTED

    def _evaluate(self, expression: str | bool, context: Any) -> Any:
        if isinstance(expression, bool):
            return expression
        return evaluate(self, expression, context)

    def _skip(self, context: Any, outcome: str, message: str) -> None:
        getattr(self, "log", log).info(message)
        context["ti"].xcom_push(key=OUTCOME_KEY, value=outcome)
        raise AirflowSkipException(message)

    # ------------------------------------------------------------------ onFailure

    def _guarded(self, context: Any, fn: Callable[[Any], Any]) -> Any:
        try:
            return fn(context)
        except _CONTROL_FLOW:
            raise
        except BaseException as exc:
            mode = self.on_failure
            if mode in ("ignore", "haltBranch") and self._last_try(context):
                outcome = FAILED_IGNORED if mode == "ignore" else BRANCH_HALTED
                what = "carrying on" if mode == "ignore" else "halting this branch"
                getattr(self, "log", log).error(
                    "stage %r failed: %s; %s (onFailure: %s)", self.stage_id, exc, what, mode, exc_info=True
                )
                context["ti"].xcom_push(key=OUTCOME_KEY, value=outcome)
                raise AirflowSkipException(f"stage failed, {what} (onFailure: {mode}): {exc}") from exc
            if mode == "halt" and self._last_try(context):
                # Stages of other branches that start before Airflow has recorded the failure must see it now.
                context["ti"].xcom_push(key=OUTCOME_KEY, value=PIPELINE_HALTED)
            raise

    def _last_try(self, context: Any) -> bool:
        ti = context["ti"]
        retries = getattr(self, "retries", 0) or 0
        return not (retries and ti.try_number <= ti.max_tries)


def utc_in(delta: timedelta) -> datetime:
    """Now (UTC) plus ``delta``."""
    return datetime.now(timezone.utc) + delta
