"""Spinnaker's naming convention (Netflix Frigga, "Moniker"): ``app-stack-detail-v000``.

A server group's name says where it belongs, so every cloud can be read back
into application -> cluster -> server group without tags::

    hello-prod-canary-v003   app hello, stack prod, detail canary, sequence 3
    hello-prod-v003          no detail
    hello--canary-v003       no stack (two dashes keep detail in third place)
    hello-v003               cluster = application
    hello-prod               no sequence: a cluster (or a load balancer, firewall)

Rules, as Frigga's ``Names`` and ``AutoScalingGroupNameBuilder`` have them:

- application and stack: letters, digits, ``.`` and ``_``; never ``-``, which
  separates the parts;
- detail: the same plus ``-`` (everything after the second dash is detail);
- the sequence ("push") is ``v`` and three digits; parsing also accepts up to six
  digits, as current Frigga does; new names always get three;
- a new server group takes the sequence after the cluster's newest, wrapping from
  ``v999`` to ``v000`` (Clouddriver's ``% 1000``), and skipping sequences whose
  server group still exists (Clouddriver would fail on those; we move on).

Missing stack and detail are ``""`` here (Frigga's ``null``), as in the spec's
``ClusterRef``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from gennaker.errors import InvalidName, InvalidRequest, SequenceExhausted

SEQUENCE_SPACE = 1000
"""Sequences run v000 .. v999, then wrap."""

_CHARS = "a-zA-Z0-9._"
# Frigga parses '~' and '^' in a detail (its tests have 'api-test-~A'); we never build them.
_DETAIL_CHARS = "-a-zA-Z0-9._~^"
_PUSH = re.compile(rf"([{_DETAIL_CHARS}]*)-(v([0-9]{{3,6}}))")
_NAME = re.compile(rf"([{_CHARS}]+)(?:-([{_CHARS}]*)(?:-([{_DETAIL_CHARS}]*?))?)?")
_PART = re.compile(rf"[{_CHARS}]+")
_DETAIL = re.compile(r"[-a-zA-Z0-9._]+")


@dataclass(frozen=True)
class Names:
    """The parts of a Frigga name (``parse_server_group_name``)."""

    group: str
    """The whole name."""
    cluster: str
    """The name without ``-v000``: ``app``, ``app-stack``, ``app--detail`` or ``app-stack-detail``."""
    app: str
    stack: str = ""
    detail: str = ""
    push: str | None = None
    """``v003`` as written, or None."""
    sequence: int | None = None
    """3 for ``v003``; None for a name without a sequence."""


def parse_server_group_name(name: str) -> Names:
    """Split a server group (or cluster, load balancer, firewall) name into its parts.

    Raises :class:`InvalidName` for an empty name or one with characters Frigga
    does not accept where they are.
    """
    if not name or not name.strip():
        raise InvalidName("a name must not be empty")
    push_match = _PUSH.fullmatch(name)
    cluster = push_match.group(1) if push_match else name
    match = _NAME.fullmatch(cluster)
    if match is None:
        raise InvalidName(f"{name!r} is not an app-stack-detail-v000 name")
    return Names(
        group=name,
        cluster=cluster,
        app=match.group(1),
        stack=match.group(2) or "",
        detail=match.group(3) or "",
        push=push_match.group(2) if push_match else None,
        sequence=int(push_match.group(3)) if push_match else None,
    )


def is_valid_name(name: str) -> bool:
    """True if :func:`parse_server_group_name` accepts ``name``."""
    try:
        parse_server_group_name(name)
    except InvalidName:
        return False
    return True


def cluster_name(app: str, stack: str = "", detail: str = "") -> str:
    """``app``, ``app-stack``, ``app--detail`` or ``app-stack-detail`` (Frigga's ``combineAppStackDetail``).

    Validates the parts as Frigga's builder does, and refuses a cluster that would
    read back as a server group (``hello-v001``: stack ``v001`` looks like a sequence).
    """
    _check_parts(app, stack, detail)
    if detail:
        name = f"{app}-{stack}-{detail}"
    elif stack:
        name = f"{app}-{stack}"
    else:
        name = app
    if _PUSH.fullmatch(name):
        raise InvalidName(
            f"cluster {name!r} would read as a server group name (it ends like -v000)",
            hint="choose a stack or detail that does not look like v000",
        )
    return name


def _check_parts(app: str, stack: str, detail: str) -> None:
    if not app:
        raise InvalidName("the application must not be empty")
    for label, value in (("application", app), ("stack", stack)):
        if value and not _PART.fullmatch(value):
            raise InvalidName(f"{label} {value!r} may only contain letters, digits, '.' and '_' (no '-')")
    if detail and not _DETAIL.fullmatch(detail):
        raise InvalidName(f"detail {detail!r} may only contain letters, digits, '.', '_' and '-'")


def format_server_group_name(cluster: str, sequence: int) -> str:
    """``hello-prod`` and 3 -> ``hello-prod-v003``."""
    if not 0 <= sequence < SEQUENCE_SPACE:
        raise InvalidRequest(f"sequence {sequence} is outside 0..{SEQUENCE_SPACE - 1}")
    names = parse_server_group_name(cluster)
    if names.sequence is not None:
        raise InvalidName(f"{cluster!r} is a server group name, not a cluster", hint=f"use {names.cluster!r}")
    return f"{cluster}-v{sequence:03d}"


def next_sequence(existing: Iterable[str], newest: str | None = None) -> int:
    """The sequence for a cluster's next server group.

    ``existing`` are the names of the cluster's server groups that still exist (and
    names reserved for ones being created); ``newest`` is the most recently created
    of them, if the caller knows (by creation time). Without it, the newest is the
    sequence followed by the longest run of free numbers, reading the 1000 numbers
    as a circle: ``v998, v999, v000, v001`` -> ``v001`` is newest, next is ``v002``.

    The next sequence follows the newest, wraps after 999, and skips any sequence
    still in use. An empty cluster starts at 0. Raises :class:`SequenceExhausted`
    when all 1000 are in use, :class:`InvalidRequest` if the names span clusters.
    """
    taken = _taken_sequences(existing)
    if len(taken) >= SEQUENCE_SPACE:
        raise SequenceExhausted(f"all {SEQUENCE_SPACE} server group names of the cluster are in use")
    if newest is not None:
        last = parse_server_group_name(newest).sequence
    else:
        last = _newest_by_gap(taken)
    start = 0 if last is None else last + 1
    for step in range(SEQUENCE_SPACE):
        candidate = (start + step) % SEQUENCE_SPACE
        if candidate not in taken:
            return candidate
    raise AssertionError("unreachable: fewer than 1000 sequences are taken")  # pragma: no cover


def _taken_sequences(existing: Iterable[str]) -> set[int]:
    taken: set[int] = set()
    clusters: set[str] = set()
    for name in existing:
        names = parse_server_group_name(name)
        clusters.add(names.cluster)
        # v1000+ (six-digit pushes) lie outside our namespace and cannot collide with -v000 names.
        if names.sequence is not None and names.sequence < SEQUENCE_SPACE:
            taken.add(names.sequence)
    if len(clusters) > 1:
        raise InvalidRequest(f"server group names of several clusters given: {sorted(clusters)}")
    return taken


def _newest_by_gap(taken: set[int]) -> int | None:
    """The taken sequence followed by the most free numbers (ties: the highest sequence)."""
    if not taken:
        return None
    ordered = sorted(taken)
    best, best_gap = ordered[-1], -1
    for i, seq in enumerate(ordered):
        following = ordered[(i + 1) % len(ordered)]
        gap = (following - seq - 1) % SEQUENCE_SPACE
        if gap >= best_gap:
            best, best_gap = seq, gap
    return best


__all__ = [
    "SEQUENCE_SPACE",
    "Names",
    "cluster_name",
    "format_server_group_name",
    "is_valid_name",
    "next_sequence",
    "parse_server_group_name",
]
