"""Which server group of a cluster a stage or a click acts on: a name, or ``newest`` / ``previous`` / ``oldest``.

Spinnaker's dynamic targets, by creation time among the cluster's live groups (groups
being destroyed do not count). The server group stages and the Clusters page pick the
same group with these.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from gennaker.errors import NotFound

if TYPE_CHECKING:
    from gennaker.cloud.model import ServerGroup

NEWEST = "newest"
PREVIOUS = "previous"
OLDEST = "oldest"
DYNAMIC_TARGETS = (NEWEST, PREVIOUS, OLDEST)


def live_groups(groups: Iterable[ServerGroup], cluster: str) -> list[ServerGroup]:
    """A cluster's server groups, oldest first by creation time (other clusters' and those being destroyed left out)."""
    live = [g for g in groups if g.cluster == cluster and not g.destroying]  # one being destroyed is no target
    return sorted(live, key=lambda g: g.created)  # stable: the provider's order breaks ties


def pick_target(groups: Sequence[ServerGroup], target: str, cluster: str, where: str) -> ServerGroup:
    """``newest``, ``previous`` or ``oldest`` of a cluster's live groups (oldest first); NotFound if there is none."""
    if not groups:
        raise NotFound(
            f"cluster {cluster} has no server groups in {where}, so there is no {target} one: "
            f"deploy one first, or check the stage's cluster and account",
            hint="",
        )
    if target == NEWEST:
        return groups[-1]
    if target == OLDEST:
        return groups[0]
    if len(groups) < 2:
        raise NotFound(f"cluster {cluster} has no previous server group: {groups[0].name} is its only one", hint="")
    return groups[-2]


def serving(groups: Sequence[ServerGroup], *, besides: Sequence[str]) -> list[str]:
    """The names of the enabled groups, leaving out ``besides``."""
    return [g.name for g in groups if g.enabled and g.name not in besides]


__all__ = ["DYNAMIC_TARGETS", "NEWEST", "OLDEST", "PREVIOUS", "live_groups", "pick_target", "serving"]
