"""Every error gennaker raises on purpose: one tree.

Each error says what happened; the ones a user can act on also say what to do
(:attr:`CloudError.hint`). Spec errors point at a file, a line and a field, with one
renderer for the CLI, CI and the import errors shown in Airflow's UI::

    dags/pipelines/hello/deploy.yaml:41:7 stages[2].capacity.min: must be >= 0
       41 |       min: -1
          |       ^

The tree::

    GennakerError
     +-- SpecError                   one problem at one place in one file
     +-- SpecErrors                  several SpecError (all problems of one or more files)
     +-- CloudError                  anything a provider raises on purpose (has a hint)
          +-- InvalidRequest         the request is wrong; fix it, do not retry   (also ValueError)
          |    +-- InvalidName       not an app-stack-detail-v000 name
          |    +-- AccountNotSupported   a connection gennaker cannot use (yet)
          |    |    +-- ProviderNotInstalled  its provider's extra is not installed
          |    +-- MetricSourceUnavailable   a metric source a spec names cannot run here
          |    +-- ListenerPortInUse a local load balancer's port is taken by another program
          |    +-- IdempotencyConflict   one key reused for a different operation
          +-- NotFound               no such image / server group / ...          (also LookupError)
          |    +-- AccountNotFound   the stage's account names no Airflow connection
          +-- AlreadyExists          the name is taken
          |    +-- SequenceExhausted all 1000 server group names of a cluster exist
          +-- TrafficGuardViolation  would take the last serving group of a guarded cluster out
          +-- QuotaExceeded          an account limit (instances, groups, addresses) is reached
          |    +-- CapacityLimitExceeded  above the limit for one server group or the account
          +-- ProviderUnavailable    the cloud did not answer or throttled us; retryable
          +-- OperationFailed        a polled Operation ended FAILED
          +-- NotSupported           an optional provider method this provider does not offer
          +-- SharedStateUnavailable the shared tables (locks, audit) cannot be used; run `gennaker db migrate`
     +-- ArtifactRefused             an artifact reference a trigger sent is not allowed    (also ValueError)
     +-- ExpressionError             a `when`/precondition expression could not be evaluated (also ValueError)
     +-- CanaryError                 the canary could not be judged
          +-- CanaryConfigProblem    a canary stage's metrics cannot be run as written      (also ValueError)
          +-- CanaryJudgeError       invalid canary config, thresholds or metric data       (also ValueError)
          +-- MannWhitneyError       the statistic cannot be computed (all tied, empty)     (also ValueError)
          +-- MetricSourceError      a metric query could not be answered
     +-- WebError                    what the Clusters API answers with an HTTP status (has a hint)
          +-- Forbidden              403: the caller may not do this to the application
          +-- ClusterLocked          409: a pipeline (or another action) holds the cluster's lock
          +-- Unsupported            501: the account's provider cannot answer this
          +-- LocalStateUnavailable  503: the gennaker home or its state cannot be used

A provider turns its cloud's own errors (botocore ``ClientError`` codes, Google API
``HttpError`` reasons, a local process that would not start) into the ``CloudError``
classes, so stages, triggers and the web UI handle one set. Only
:class:`ProviderUnavailable` is :attr:`~CloudError.retryable`: the others fail the same way
on every attempt, so an Airflow retry would only delay the news.

A stage's own outcome is an Airflow exception, so Airflow fails (and retries, or not) the
task as it should: ``CloudStageFailed`` (``AirflowFailException``: no retry) and its
subclasses, ``ServerGroupUnhealthy`` (``AirflowException``: retried), ``JudgmentStopped``,
``PreconditionFailed``. They live with the operators (this module imports no Airflow) and
are ``GennakerError`` too, so one ``except GennakerError`` sees every error of ours.

This module imports nothing of gennaker: every layer (spec, cloud, operators, web) may raise
these without importing another layer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

Loc = tuple[str | int, ...]


class GennakerError(Exception):
    """Base of every error gennaker raises on purpose."""


def format_loc(loc: Loc) -> str:
    """``("stages", 2, "capacity", "min")`` -> ``stages[2].capacity.min``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "<root>"


class Position(NamedTuple):
    """A place in a source file; line and column count from 1 (a tuple: cheap to make per node)."""

    file: str
    line: int
    column: int


class SpecError(GennakerError):
    """One problem in a pipeline spec, with where it is."""

    def __init__(self, message: str, position: Position | None = None, loc: Loc = ()) -> None:
        super().__init__(message)
        self.message = message
        self.position = position
        self.loc = loc

    @property
    def file(self) -> str | None:
        return self.position.file if self.position else None

    def headline(self) -> str:
        """``file:line:col field: message`` (the first line of :meth:`render`)."""
        where = ""
        if self.position is not None:
            where = f"{self.position.file}:{self.position.line}:{self.position.column} "
        field = f"{format_loc(self.loc)}: " if self.loc else ""
        return f"{where}{field}{self.message}"

    def render(self) -> str:
        """The headline, then the offending line with a caret under the column."""
        lines = [self.headline()]
        snippet = _snippet(self.position)
        if snippet:
            lines.extend(snippet)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.headline()


class SpecErrors(GennakerError):
    """Every problem found in one or more spec files."""

    def __init__(self, errors: Sequence[SpecError]) -> None:
        self.errors = sorted(errors, key=_sort_key)
        super().__init__(self.render())

    def render(self) -> str:
        return "\n\n".join(e.render() for e in self.errors)

    def __str__(self) -> str:
        return self.render()

    @classmethod
    def collect(cls, errors: Iterable[SpecError]) -> None:
        """Raise the errors as one, if there are any."""
        errs = list(errors)
        if errs:
            raise cls(errs)


def _sort_key(e: SpecError) -> tuple[str, int, int, str]:
    if e.position is None:
        return ("", 0, 0, e.message)
    return (e.position.file, e.position.line, e.position.column, e.message)


_sources: dict[str, list[str]] = {}


def register_source(name: str, text: str) -> None:
    """Remember a file's text under the name its errors use, for the snippet."""
    _sources[name] = text.splitlines()


def _snippet(position: Position | None) -> list[str]:
    if position is None:
        return []
    lines = _sources.get(position.file)
    if lines is None:
        try:
            lines = Path(position.file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            return []
    if not 1 <= position.line <= len(lines):
        return []
    text = lines[position.line - 1]
    gutter = f"{position.line:>5} | "
    caret = " " * (len(gutter) - 2) + "| " + " " * max(position.column - 1, 0) + "^"
    return [gutter + text, caret]


if TYPE_CHECKING:
    from gennaker.cloud.model import Operation


class CloudError(GennakerError):
    """Base of every error a cloud provider raises on purpose.

    ``str(error)`` is the message, then what to do (the class's default hint unless
    the raiser gave a sharper one).
    """

    default_hint: ClassVar[str] = ""
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint

    def __str__(self) -> str:
        return f"{self.message}: {self.hint}" if self.hint else self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Errors cross process boundaries (multiprocessing, executors); rebuild from the
        # attributes, since subclasses' __init__ signatures differ from ``args``.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[CloudError], args: tuple[Any, ...], state: dict[str, Any]) -> CloudError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class InvalidRequest(CloudError, ValueError):
    """The request cannot succeed as written (bad capacity, bad name, unknown option)."""

    default_hint = "fix the pipeline spec or the call; retrying the same request fails the same way"


class InvalidName(InvalidRequest):
    """A name that does not follow the ``app-stack-detail-v000`` convention."""

    default_hint = "names follow Spinnaker's app-stack-detail-v000 convention"


class IdempotencyConflict(InvalidRequest):
    """An idempotency key already names an operation of another kind."""

    default_hint = "give each operation of a task its own key purpose (IdempotencyKey.purpose)"


class NotFound(CloudError, LookupError):
    """The image, server group, instance, load balancer, firewall or operation does not exist."""

    default_hint = "check the name, account and region; it may have been destroyed (list the cluster to see)"


class AlreadyExists(CloudError):
    """A resource with that name exists and the call would create another."""

    default_hint = "pick another name, or upsert/reuse the existing one"


class SequenceExhausted(AlreadyExists):
    """Every server group name ``-v000`` .. ``-v999`` of a cluster is in use."""

    default_hint = "destroy old server groups of the cluster to free their sequence numbers"


class TrafficGuardViolation(CloudError):
    """The call would leave a guarded cluster with no enabled server group taking traffic."""

    default_hint = "enable or deploy another server group of the cluster first, or remove the cluster's traffic guard"


class QuotaExceeded(CloudError):
    """An account limit (instances, server groups, addresses, ports) is reached."""

    default_hint = "free capacity (destroy or shrink old server groups) or raise the account's quota"


class ProviderUnavailable(CloudError):
    """The cloud did not answer, answered with a server error, or throttled the call."""

    default_hint = "the cloud or the network is having trouble; the task retries, or try again later"
    retryable = True


class OperationFailed(CloudError):
    """A long operation that was polled ended ``FAILED``; :attr:`operation` says why."""

    default_hint = "see the operation's message and the task log; fix the cause and run the stage again"

    def __init__(self, operation: Operation, *, hint: str | None = None) -> None:
        super().__init__(f"{operation.kind} {operation.id} failed: {operation.message}", hint=hint)
        self.operation = operation


class NotSupported(CloudError):
    """The provider does not offer this (an optional part of the interface, e.g. a cluster's history)."""

    default_hint = "this account's provider does not keep or expose it"


class SharedStateUnavailable(CloudError):
    """gennaker's shared tables (cluster locks, audit trail) cannot be used: no database, or not migrated."""

    default_hint = (
        "run `gennaker db migrate` with this deployment's Airflow configuration (and its GENNAKER_STATE_DB, "
        "if it sets one)"
    )


class AccountNotSupported(InvalidRequest):
    """The stage's account is a connection gennaker cannot use (yet)."""

    default_hint = "use a connection of type gennaker_local, or the embedded account 'local' (no connection needed)"


class ProviderNotInstalled(AccountNotSupported):
    """The account's provider needs an extra (or a package) that is not installed."""

    default_hint = "install the provider's extra in every Airflow component (scheduler, workers, API server)"


class AccountNotFound(NotFound):
    """The stage's account names no Airflow connection."""

    default_hint = (
        "create an Airflow connection of type gennaker_local with that id (or set AIRFLOW_CONN_<ID>), "
        "or use the embedded account 'local'"
    )


class MetricSourceUnavailable(InvalidRequest):
    """A metric source a spec names cannot run here; the message says why."""


class ListenerPortInUse(InvalidRequest):
    """A listener's port on 127.0.0.1 is taken by a program other than this load balancer's proxy."""

    default_hint = "choose another port in the load balancer's listeners"

    def __init__(self, port: int, *, hint: str | None = None) -> None:
        super().__init__(f"port {port} on 127.0.0.1 is in use by another program", hint=hint)
        self.port = port

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class CapacityLimitExceeded(QuotaExceeded):
    """A capacity above the provider's limit for one server group or for the whole account."""

    default_hint = "ask for fewer instances, or raise the account's limit"


class ArtifactRefused(GennakerError, ValueError):
    """The artifact reference is not allowed; the message says why and what to change."""


class ExpressionError(GennakerError, ValueError):
    """An expression that could not be evaluated (undefined name, syntax error)."""


class CanaryError(GennakerError):
    """Base of the canary's errors: the canary could not be judged."""


class CanaryConfigProblem(CanaryError, ValueError):
    """A canary stage's metrics cannot be run as written; ``loc`` is the field at fault, under the stage."""

    def __init__(self, message: str, loc: tuple[str | int, ...]) -> None:
        super().__init__(message)
        self.loc = loc


class CanaryJudgeError(CanaryError, ValueError):
    """The judgement cannot be made: an invalid canary config, thresholds or metric data."""


class MannWhitneyError(CanaryError, ValueError):
    """The test cannot be computed (e.g. every observation is tied, an empty sample)."""


class MetricSourceError(CanaryError):
    """A query could not be answered; the message says which query, for which server group, and why."""


class WebError(GennakerError):
    """Base of what the Clusters API answers with an HTTP status: ``detail`` and ``hint`` go into the body."""

    status: ClassVar[int] = 500

    def __init__(self, detail: str, hint: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.hint = hint


class Forbidden(WebError):
    """The caller may not do this to the application (HTTP 403)."""

    status = 403


class ClusterLocked(WebError):
    """An action was refused because the cluster's lock is held by someone else (HTTP 409).

    ``holder`` is the lock's holder as :mod:`gennaker.cloud.locks` describes it.
    """

    status = 409

    def __init__(self, detail: str, hint: str, holder: Any) -> None:
        super().__init__(detail, hint)
        self.holder = holder


class Unsupported(WebError):
    """The account's provider cannot answer this (HTTP 501)."""

    status = 501


class LocalStateUnavailable(WebError):
    """gennaker's home or its state files cannot be used (HTTP 503); the message names no path."""

    status = 503
