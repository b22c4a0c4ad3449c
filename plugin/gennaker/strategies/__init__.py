"""Decisions without Airflow: what a stage or a click on the Clusters page does, before anything does it.

=============  ==========================================================================
module         decides
=============  ==========================================================================
``deploy``     the deploy strategies (redblack, highlander, rollingRedBlack, none): which
               older groups to disable, destroy and scale down; rolling traffic weights
``targets``    which server group ``newest`` / ``previous`` / ``oldest`` of a cluster is
``capacity``   the capacity a resize asks for
``rollback``   a rollback's plan, and its first and last provider calls
``canary``     the canary's baseline and canary clusters and the windows it judges
=============  ==========================================================================

The stage operators (:mod:`gennaker.operators`) and the Clusters API (:mod:`gennaker.web`)
both import this package, never each other; it imports neither of them, nor Airflow, so
every rule is testable without a scheduler or a cloud.
"""

from gennaker.strategies.deploy import (
    HIGHLANDER,
    KINDS,
    NONE,
    REDBLACK,
    ROLLING,
    Cleanup,
    Older,
    Policy,
    plan_cleanup,
    rolling_weights,
)

__all__ = [
    "HIGHLANDER",
    "KINDS",
    "NONE",
    "REDBLACK",
    "ROLLING",
    "Cleanup",
    "Older",
    "Policy",
    "plan_cleanup",
    "rolling_weights",
]
