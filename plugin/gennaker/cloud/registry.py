"""Which providers and metric sources are installed: entry points, read once, imported on first use.

Two entry point groups, as Airflow finds its providers by ``apache_airflow_provider``:

=========================  =====================================  ==========================================
group                      name                                   value
=========================  =====================================  ==========================================
``gennaker.providers``     an Airflow connection type             a :class:`~gennaker.cloud.provider.CloudProvider`
                           (``gennaker_local``; later ``aws``,    class that also keeps :class:`AccountType`
                           ``google_cloud_platform``)             (``gennaker.cloud.local.provider:LocalProvider``)
``gennaker.metric_sources``  a ``metricSource.type`` of a spec    a :class:`~gennaker.canary.sources.MetricSource`
                           (``local``, ``prometheus``; later      class with ``from_spec(spec, provider)``
                           ``cloudwatch``, ``cloudMonitoring``)
=========================  =====================================  ==========================================

A package adds a provider by declaring one line in its metadata (``setup.cfg``)::

    [options.entry_points]
    gennaker.providers =
        acme_cloud = acme_gennaker.provider:AcmeProvider

Only names are read at first (one scan of the installed packages' metadata, cached); a
class is imported when an account or a spec needs it, so nothing here costs a DAG parse
more than that scan. gennaker's own entries are also in :data:`BUILTIN_PROVIDERS` and
:data:`BUILTIN_METRIC_SOURCES` (a test keeps them equal to ``setup.cfg``): a source
checkout whose installed metadata predates them still works. Another package cannot
replace one of gennaker's own names; such an entry is ignored with a warning.

:data:`PLANNED_PROVIDERS` and :data:`PLANNED_METRIC_SOURCES` name what gennaker will ship
as extras. A connection of such a type gets an error that says so, with the
``pip install 'gennaker[aws]'`` that brings it once it is built; when it is built and
declared but its extra's packages are missing, the error is that ``pip install`` line.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from gennaker.errors import (
    AccountNotFound,
    AccountNotSupported,
    MetricSourceUnavailable,
    ProviderNotInstalled,
)

if TYPE_CHECKING:
    from gennaker.cloud.provider import CloudProvider

log = logging.getLogger(__name__)

PROVIDERS_GROUP = "gennaker.providers"
METRIC_SOURCES_GROUP = "gennaker.metric_sources"
DEFAULT_CONNECTION_TYPE = "gennaker_local"
"""The provider of the embedded account ``local`` when no connection of that id exists."""

BUILTIN_PROVIDERS: dict[str, str] = {"gennaker_local": "gennaker.cloud.local.provider:LocalProvider"}
BUILTIN_METRIC_SOURCES: dict[str, str] = {
    "local": "gennaker.canary.sources:LocalMetricSource",
    "prometheus": "gennaker.canary.sources:PrometheusMetricSource",
}
BUILTIN_KINDS = {"gennaker_local": "local"}
"""The ``kind`` (a stage's ``provider:``) of gennaker's own providers, known without importing them."""


@dataclass(frozen=True)
class Planned:
    """A provider or metric source gennaker ships (or will ship) in an extra.

    ``requires``: modules the extra installs; the entry is usable only when all import.
    """

    name: str
    label: str
    kind: str
    extra: str
    requires: tuple[str, ...] = ()
    later: str = ""
    """For a metric source not built yet: when it comes (the spec's error says it)."""

    @property
    def pip(self) -> str:
        """The command that installs it."""
        return f"pip install 'gennaker[{self.extra}]'"


_AWS = ("AWS", "aws", "aws", ("airflow.providers.amazon",))
_GCP = ("Google Cloud", "gcp", "gcp", ("airflow.providers.google",))
PLANNED_PROVIDERS: dict[str, Planned] = {
    "aws": Planned("aws", *_AWS),
    "google_cloud_platform": Planned("google_cloud_platform", *_GCP),
    "gcp": Planned("gcp", *_GCP),
}
PLANNED_METRIC_SOURCES: dict[str, Planned] = {
    "cloudwatch": Planned("cloudwatch", *_AWS, later="CloudWatch metrics arrive with the AWS provider"),
    "cloudMonitoring": Planned(
        "cloudMonitoring", *_GCP, later="Google Cloud Monitoring metrics arrive with the GCP provider"
    ),
}


HOOK_MODULE = "gennaker.hooks.cluster"
HOOK_PREFIX = "ClusterHook_"


def hook_class_path(connection_type: str) -> str:
    """The Airflow hook of a provider's connection type, as provider info names it.

    ``ClusterHook`` for ``gennaker_local``, ``ClusterHook_<type>`` (a subclass that
    :mod:`gennaker.hooks.cluster` makes on demand) for the others. A plain string: Airflow
    reads provider info while it imports ``airflow.sdk``, before any hook can be imported.
    """
    name = "ClusterHook" if connection_type == DEFAULT_CONNECTION_TYPE else f"{HOOK_PREFIX}{connection_type}"
    return f"{HOOK_MODULE}.{name}"


class AccountType(Protocol):
    """What a provider class keeps, besides :class:`CloudProvider`, to be registered.

    - ``kind``: what specs write as a stage's ``provider`` (``local``, ``aws``);
    - ``connection_label``: the connection type's name in Airflow's UI;
    - ``connection_form``: ``{"ui-field-behaviour": ..., "conn-fields": ...}`` as Airflow's
      provider info wants them, or ``None`` when another Airflow provider owns the connection
      type (``aws``: the amazon provider's form is the one users fill in);
    - ``from_connection(conn_id, conn, region)``: the provider of an account; ``conn`` is the
      Airflow connection, ``None`` for the embedded ``local`` account; ``region`` the stage's
      (``None``: the connection's own or the provider's default). Raise
      :class:`AccountNotSupported` for a connection that cannot work.
    """

    kind: ClassVar[str]
    connection_label: ClassVar[str]
    connection_form: ClassVar[Mapping[str, Any] | None]

    @classmethod
    def from_connection(cls, conn_id: str, conn: Any, region: str | None) -> CloudProvider:
        """The provider of the account ``conn_id``."""
        ...


# --------------------------------------------------------------------------- reading the entry points


@dataclass(frozen=True)
class Entry:
    """One registered name: where its class is, and which package declared it."""

    name: str
    value: str
    package: str

    def load(self) -> Any:
        """Import the class (``module:attribute``; an entry point's ``[extras]`` are not part of it)."""
        module, _, attribute = self.value.split("[", 1)[0].partition(":")
        found: Any = importlib.import_module(module.strip())
        for part in attribute.strip().split(".") if attribute.strip() else ():
            found = getattr(found, part)
        return found


@functools.cache
def _declared_all() -> dict[str, list[importlib.metadata.EntryPoint]]:
    # One scan of the installed packages' metadata for both groups (~30 ms in an Airflow venv), per process.
    declared = importlib.metadata.entry_points()
    return {
        group: sorted(declared.select(group=group), key=lambda ep: (ep.dist.name if ep.dist else "", ep.name))
        for group in (PROVIDERS_GROUP, METRIC_SOURCES_GROUP)
    }


def _declared(group: str) -> list[importlib.metadata.EntryPoint]:
    return _declared_all()[group]


@functools.cache
def _entries(group: str) -> dict[str, Entry]:
    builtin = BUILTIN_PROVIDERS if group == PROVIDERS_GROUP else BUILTIN_METRIC_SOURCES
    found = {name: Entry(name, value, "gennaker") for name, value in builtin.items()}
    for ep in _declared(group):
        package = ep.dist.name if ep.dist else "?"
        held = found.get(ep.name)
        if held is None:
            found[ep.name] = Entry(ep.name, ep.value, package)
        elif held.value != ep.value and package != "gennaker":
            log.warning(
                "%s %r of package %s is ignored: %s already declares it (%s)",
                group,
                ep.name,
                package,
                held.package,
                held.value,
            )
    return found


def clear_cache() -> None:
    """Read the entry points again (tests; a package installed into a running process)."""
    _declared_all.cache_clear()
    _entries.cache_clear()
    _load.cache_clear()


@functools.cache
def _load(group: str, name: str) -> Any:
    return _entries(group)[name].load()


def connection_types() -> list[str]:
    """The connection types of the installed providers (their accounts are gennaker accounts)."""
    return list(_entries(PROVIDERS_GROUP))


def metric_source_types() -> list[str]:
    """The ``metricSource.type`` values the installed metric sources answer."""
    return list(_entries(METRIC_SOURCES_GROUP))


def _missing(planned: Planned | None) -> list[str]:
    if planned is None:
        return []
    return [m for m in planned.requires if not _importable(m)]


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# --------------------------------------------------------------------------- providers


def provider_class(connection_type: str, account: str) -> type[AccountType]:
    """The provider class of a connection type, imported; :class:`AccountNotSupported` if none can serve it.

    ``account`` is the connection id, named in the errors.
    """
    entries = _entries(PROVIDERS_GROUP)
    planned = PLANNED_PROVIDERS.get(connection_type)
    entry = entries.get(connection_type)
    if entry is None and planned is not None:
        raise AccountNotSupported(
            f"account {account!r} is a {planned.label} connection (type {connection_type!r}): gennaker's "
            f"{planned.label} provider is not built yet (when it is: {planned.pip})"
        )
    if entry is None:
        # One name per planned cloud (google_cloud_platform, not its alias gcp), in the table's order.
        first = {p.label: p.name for p in reversed(PLANNED_PROVIDERS.values()) if p.name not in entries}
        later = " and ".join(reversed(first.values()))
        verb = "is" if len(first) == 1 else "are"
        raise AccountNotSupported(
            f"account {account!r} is a connection of type {connection_type!r}, which is not a cloud account "
            f"gennaker knows ({', '.join(entries)}" + (f"; {later} {verb} not built yet)" if later else ")")
        )
    missing = _missing(planned)
    if missing and planned is not None:
        raise ProviderNotInstalled(
            f"account {account!r} is a {planned.label} connection: {planned.pip} "
            f"(the {planned.label} provider needs {', '.join(missing)}, which is not installed)",
            hint=f"run {planned.pip} where Airflow runs (scheduler, workers, triggerer, API server)",
        )
    try:
        found = _load(PROVIDERS_GROUP, connection_type)
    except ImportError as error:
        how = planned.pip if planned is not None else f"reinstall {entry.package}, which declares it"
        raise ProviderNotInstalled(
            f"account {account!r}: the provider of connection type {connection_type!r} ({entry.value}) "
            f"cannot be imported: {error}",
            hint=how,
        ) from error
    if not callable(getattr(found, "from_connection", None)):
        raise AccountNotSupported(
            f"account {account!r}: {entry.value} (package {entry.package}) has no from_connection(), "
            "so gennaker cannot build it from a connection",
            hint="see docs/adding-a-provider.md",
        )
    return found


def provider_kinds() -> dict[str, str]:
    """``kind`` -> connection type of every installed provider (imports the ones not gennaker's own)."""
    kinds: dict[str, str] = {}
    for name in connection_types():
        kind = BUILTIN_KINDS.get(name)
        if kind is None:
            try:
                kind = str(getattr(_load(PROVIDERS_GROUP, name), "kind", "") or "")
            except Exception as error:  # a broken package: say so, serve the others
                log.warning("%s %r cannot be imported: %s", PROVIDERS_GROUP, name, error)
                continue
        kinds.setdefault(kind, name)
    return kinds


def provider_kind_problem(kind: str) -> str | None:
    """Why a spec's ``provider: <kind>`` cannot run here, or ``None`` if an installed provider has that kind."""
    if kind in {BUILTIN_KINDS.get(name) for name in connection_types()}:
        return None  # the usual case, decided without importing anything
    kinds = provider_kinds()
    if kind in kinds:
        return None
    planned = next((p for p in PLANNED_PROVIDERS.values() if p.kind == kind), None)
    if planned is not None:
        return f"the {kind} provider is not built yet (when it is: {planned.pip})"
    return f"unknown provider {kind!r}; installed: {', '.join(sorted(kinds))}"


def providers_with_forms() -> list[tuple[str, type[AccountType]]]:
    """The installed providers that declare their connection type's form (for Airflow's provider info).

    A provider that cannot be imported is left out with a warning: Airflow reads this at startup.
    """
    found = []
    for name in connection_types():
        try:
            cls = _load(PROVIDERS_GROUP, name)
        except Exception as error:
            log.warning("%s %r cannot be imported: %s", PROVIDERS_GROUP, name, error)
            continue
        if getattr(cls, "connection_form", None) is not None:
            found.append((name, cls))
    return found


# --------------------------------------------------------------------------- metric sources


def metric_source_problem(kind: str) -> str | None:
    """Why a spec's ``metricSource.type`` cannot run here, or ``None`` if an installed source answers it."""
    planned = PLANNED_METRIC_SOURCES.get(kind)
    if kind in _entries(METRIC_SOURCES_GROUP):
        missing = _missing(planned)
        if missing and planned is not None:
            return f"metric source {kind!r} needs {planned.pip} ({', '.join(missing)} is not installed)"
        return None
    if planned is not None:
        return f"metric source {kind!r} is not available yet: {planned.later}"
    return f"unknown metric source {kind!r}; gennaker has {_or(metric_source_types())}"


def metric_source_class(kind: str) -> Any:
    """The metric source class of a ``metricSource.type``, imported; :class:`MetricSourceUnavailable` if none."""
    problem = metric_source_problem(kind)
    if problem is not None:
        raise MetricSourceUnavailable(problem)
    try:
        return _load(METRIC_SOURCES_GROUP, kind)
    except ImportError as error:
        entry = _entries(METRIC_SOURCES_GROUP)[kind]
        raise MetricSourceUnavailable(
            f"metric source {kind!r} ({entry.value}, package {entry.package}) cannot be imported: {error}"
        ) from error


def planned_metric_source_of(provider_kind: str) -> Planned | None:
    """The metric source gennaker plans for a provider kind (``aws`` -> ``cloudwatch``), if any."""
    return next((p for p in PLANNED_METRIC_SOURCES.values() if p.kind == provider_kind), None)


def installed_metric_sources_text() -> str:
    """``local or prometheus``: the installed metric source types, for messages."""
    return _or(metric_source_types())


def _or(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


__all__ = [
    "BUILTIN_METRIC_SOURCES",
    "BUILTIN_PROVIDERS",
    "DEFAULT_CONNECTION_TYPE",
    "METRIC_SOURCES_GROUP",
    "PLANNED_METRIC_SOURCES",
    "PLANNED_PROVIDERS",
    "PROVIDERS_GROUP",
    "AccountNotFound",
    "AccountNotSupported",
    "AccountType",
    "MetricSourceUnavailable",
    "Planned",
    "ProviderNotInstalled",
    "clear_cache",
    "connection_types",
    "hook_class_path",
    "metric_source_class",
    "metric_source_problem",
    "metric_source_types",
    "provider_class",
    "provider_kind_problem",
    "provider_kinds",
    "providers_with_forms",
]
