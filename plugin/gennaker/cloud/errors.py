"""The errors every cloud provider raises, whatever the cloud.

A provider turns its cloud's own errors (botocore ``ClientError`` codes, Google API
``HttpError`` reasons, a local process that would not start) into these, so stages,
triggers and the web UI handle one set. Each message says what happened; the class
adds what to do about it (:attr:`CloudError.hint`)::

    GennakerError
     +-- CloudError                  base: anything a provider raises on purpose
          +-- InvalidRequest         the request is wrong; fix it, do not retry   (also ValueError)
          |    +-- InvalidName       not an app-stack-detail-v000 name
          |    +-- IdempotencyConflict   one key reused for a different operation
          +-- NotFound               no such image / server group / ...          (also LookupError)
          +-- AlreadyExists          the name is taken
          |    +-- SequenceExhausted all 1000 server group names of a cluster exist
          +-- TrafficGuardViolation  would take the last serving group of a guarded cluster out
          +-- QuotaExceeded          an account limit (instances, groups, addresses) is reached
          +-- ProviderUnavailable    the cloud did not answer or throttled us; retryable
          +-- OperationFailed        a polled Operation ended FAILED

Only :class:`ProviderUnavailable` is :attr:`~CloudError.retryable`: the others
fail the same way on every attempt, so an Airflow retry would only delay the news.

These live in their own module (not in ``provider.py``) because ``model.py`` and
``naming.py`` raise them too and ``provider.py`` imports both; ``provider.py``
re-exports every name, so callers import from one place.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from gennaker.spec.errors import GennakerError

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


__all__ = [
    "AlreadyExists",
    "CloudError",
    "IdempotencyConflict",
    "InvalidName",
    "InvalidRequest",
    "NotFound",
    "OperationFailed",
    "ProviderUnavailable",
    "QuotaExceeded",
    "SequenceExhausted",
    "TrafficGuardViolation",
]
