"""``<stage>.rollback_on_failure``: the teardown the factory adds after a deploy or promote with ``rollback.onFailure``.

When that stage or any stage after it failed, the previous server group takes the traffic
back (grown to the new one's size if it was scaled down, enabled, waited on until
healthy) and the new one is disabled or destroyed (``rollback.action``). It holds the
cluster's lock as the deploy does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gennaker.operators.base import PENDING_KEY, CloudStageFailed, ServerGroupNotFound
from gennaker.operators.delivery import DONE, DeliveryOperator, plural


class AutoRollbackOperator(DeliveryOperator):
    """A deploy's or promote's ``rollback.onFailure``: a teardown that rolls back if a stage failed."""

    gennaker_stage_type = "rollback"
    after_lock = "restore"
    first_phase = "check"

    def __init__(self, *, source_stage: str, watched_task_ids: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source_stage = source_stage
        self.watched_task_ids = list(watched_task_ids)

    def execute(self, context: Any) -> Any:
        # Not gated like a stage: it must run whatever happened before it (when, halts and skips included).
        return self.run_stage(context)

    def phase_check(self, context: Any, result: dict[str, Any]) -> None:
        ti = context["ti"]
        found = ti.get_task_states(dag_id=ti.dag_id, task_ids=self.watched_task_ids, run_ids=[ti.run_id])
        states = found.get(ti.run_id, {}) if isinstance(found, dict) else {}
        failed = sorted(t for t, s in states.items() if s in ("failed", "upstream_failed"))
        failed = [t for t in failed if states.get(t) == "failed"] or failed
        result["failedStages"] = failed
        if not failed:
            self.log.info("no stage failed: nothing to roll back")
            result["rolledBack"] = False
            self.goto(result, DONE)
            return
        source = ti.xcom_pull(task_ids=self.source_stage) or ti.xcom_pull(task_ids=self.source_stage, key=PENDING_KEY)
        if not isinstance(source, Mapping) or not source.get("serverGroup"):
            self.log.info(
                "stage(s) %s failed, but stage %r made no server group: nothing to roll back",
                ", ".join(failed),
                self.source_stage,
            )
            result["rolledBack"] = False
            self.goto(result, DONE)
            return
        result["serverGroup"] = source["serverGroup"]
        result["previousServerGroup"] = source.get("previousServerGroup")
        self.log.info(
            "stage(s) %s failed: rolling %s back from %s to %s",
            ", ".join(failed),
            result["cluster"],
            source["serverGroup"],
            source.get("previousServerGroup") or "(no previous server group)",
        )
        self.goto(result, "lock")

    def phase_restore(self, context: Any, result: dict[str, Any]) -> None:
        new_name = result["serverGroup"]
        previous = result.get("previousServerGroup")
        region = result["region"]
        try:
            new = self.group(new_name, region)
        except ServerGroupNotFound:
            self.log.info("%s is gone already: nothing to roll back", new_name)
            result["rolledBack"] = False
            self.goto(result, DONE)
            return
        if not previous:
            self.log.warning(
                "%s was the first server group of %s: there is no previous one to take the traffic back; "
                "leaving it as it is",
                new_name,
                result["cluster"],
            )
            result["rolledBack"] = False
            self.goto(result, DONE)
            return
        try:
            restore = self.group(previous, region)
        except ServerGroupNotFound:
            raise CloudStageFailed(
                f"cannot roll back to {previous}: it no longer exists ({new_name} keeps serving)"
            ) from None
        provider = self.get_provider()
        ops = []
        if restore.capacity.desired < new.capacity.desired:
            from gennaker.cloud.model import Capacity

            wanted = Capacity(
                min=min(restore.capacity.min, new.capacity.desired),
                max=max(restore.capacity.max, new.capacity.desired),
                desired=new.capacity.desired,
            )
            self.log.info("resizing %s back to %s to take the traffic", previous, plural(wanted.desired, "instance"))
            with self.cloud_call(f"resize {previous} for the rollback"):
                ops.append(
                    provider.resize_server_group(previous, wanted, self.key(context, "restore-resize"), region=region)
                )
        with self.cloud_call(f"enable {previous}"):
            ops.append(provider.enable_server_group(previous, self.key(context, "restore-enable"), region=region))
        self.log.info("enabled %s (rolling back from %s)", previous, new_name)
        self.goto(result, "retire")
        self.wait_health(context, result, restore, ops, desired=max(restore.capacity.desired, new.capacity.desired))

    def phase_retire(self, context: Any, result: dict[str, Any]) -> None:
        new_name = result["serverGroup"]
        region = result["region"]
        provider = self.get_provider()
        ops = []
        try:
            group = self.group(new_name, region)
        except ServerGroupNotFound:
            group = None
        if group is not None:
            ops += self.set_weights(context, group, None, "retire-weights")
            action = self.rollback_action
            with self.cloud_call(f"{action} {new_name}"):
                if action == "destroy":
                    ops.append(
                        provider.destroy_server_group(new_name, self.key(context, "retire-destroy"), region=region)
                    )
                else:
                    ops.append(
                        provider.disable_server_group(new_name, self.key(context, "retire-disable"), region=region)
                    )
            self.log.info(
                "%s %s (traffic now on %s)",
                "destroying" if action == "destroy" else "disabled",
                new_name,
                result.get("previousServerGroup"),
            )
        result["rolledBack"] = True
        self.goto(result, DONE)
        self.wait_ops(context, result, ops)


__all__ = ["AutoRollbackOperator"]
