"""What the strategy does once the new server group is healthy, as phases of the delivery engine.

Enable the new group, wait, disable the older ones (``delayBeforeDisable``), clear any
rolling weights, destroy the older groups beyond ``maxRemaining`` (or all of them for
highlander), scale the disabled ones that stay down (``scaleDownOld``,
``delayBeforeScaleDown``); rollingRedBlack's steps of traffic before that; and the undo
of a deploy that failed before the switch. The decisions are :mod:`gennaker.strategies`'.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gennaker.operators.delivery import DONE, ROLLED_BACK_KEY, DeliveryOperator
from gennaker.strategies import Older, Policy, plan_cleanup, rolling_weights

if TYPE_CHECKING:
    from gennaker.cloud.model import ServerGroup


class StrategyStepsOperator(DeliveryOperator):
    """The phases after the health wait that deploy and promote share: switch traffic and clean up, or undo."""

    # ------------------------------------------------------------------ shared phases: switch and clean up

    def phase_enable(self, context: Any, result: dict[str, Any]) -> None:
        name = result["serverGroup"]
        with self.cloud_call(f"enable {name}"):
            op = self.get_provider().enable_server_group(name, self.key(context, "enable"), region=result["region"])
        others = [n for n in self.enabled_older(result) if n != name]
        also = f" alongside {', '.join(others)}" if others else ""
        self.log.info("enabled %s: it takes traffic%s", name, also)
        self.goto(result, "enabled_healthy")
        self.wait_ops(context, result, [op])

    def phase_enabled_healthy(self, context: Any, result: dict[str, Any]) -> None:
        group = self.group(result["serverGroup"], result["region"])
        self.goto(result, "delay_disable")
        self.wait_health(context, result, group, [])

    def phase_delay_disable(self, context: Any, result: dict[str, Any]) -> None:
        self.goto(result, "disable")
        seconds = float(self.policy.delay_before_disable.total_seconds())
        self.delay(context, result, seconds, "before disabling the older server groups (delayBeforeDisable)")

    def enabled_older(self, result: Mapping[str, Any]) -> list[str]:
        return [g.name for g in self.older(result) if g.enabled]

    def older(self, result: Mapping[str, Any]) -> list[ServerGroup]:
        """The cluster's groups other than the new one that are older than it (oldest first)."""
        groups = self.groups(result["region"])
        names = [g.name for g in groups]
        new = result["serverGroup"]
        if new in names:
            return groups[: names.index(new)]
        return groups

    def phase_disable(self, context: Any, result: dict[str, Any]) -> None:
        new = result["serverGroup"]
        older = [g for g in self.groups(result["region"]) if g.name != new]
        plan = plan_cleanup(self.policy, [Older(g.name, g.enabled, g.capacity.desired) for g in older])
        result["cleanup"] = {"destroy": list(plan.destroy), "scaleDown": list(plan.scale_down)}
        provider = self.get_provider()
        ops = []
        for name in plan.disable:
            with self.cloud_call(f"disable {name}"):
                ops.append(
                    provider.disable_server_group(name, self.key(context, f"disable-{name}"), region=result["region"])
                )
        still = [g.name for g in older if g.enabled and g.name not in plan.disable]
        for name in plan.disable:
            serving = [new, *still]
            share = "100% " if len(serving) == 1 else ""
            self.log.info("disabled %s (traffic now %son %s)", name, share, ", ".join(serving))
        if not plan.disable:
            self.log.info("no older server group was enabled: traffic is on %s", new)
        result["disabled"] = list(plan.disable)
        result["switched"] = True
        self.goto(result, "after_disable")
        self.wait_ops(context, result, ops)

    def phase_after_disable(self, context: Any, result: dict[str, Any]) -> None:
        if result.get("weighted"):
            group = self.group(result["serverGroup"], result["region"])
            ops = self.set_weights(context, group, None, "weights-clear")
            result.pop("weighted", None)
            self.log.info("cleared the load balancers' weights: %s takes all the traffic", group.name)
            self.goto(result, "destroy_older")
            self.wait_ops(context, result, ops)
            return
        self.goto(result, "destroy_older")

    def phase_destroy_older(self, context: Any, result: dict[str, Any]) -> None:
        names = list((result.get("cleanup") or {}).get("destroy") or [])
        provider = self.get_provider()
        ops = []
        for name in names:
            with self.cloud_call(f"destroy {name}"):
                ops.append(
                    provider.destroy_server_group(name, self.key(context, f"destroy-{name}"), region=result["region"])
                )
            self.log.info("destroying %s (%s)", name, self.why_destroy())
        result["destroyed"] = names
        self.goto(result, "delay_scale_down")
        self.wait_ops(context, result, ops)

    def why_destroy(self) -> str:
        if self.policy.kind == "highlander":
            return "highlander: only the new server group remains"
        return f"maxRemaining {self.policy.max_remaining}: older groups beyond that are destroyed"

    def phase_delay_scale_down(self, context: Any, result: dict[str, Any]) -> None:
        self.goto(result, "scale_down")
        if (result.get("cleanup") or {}).get("scaleDown"):
            seconds = float(self.policy.delay_before_scale_down.total_seconds())
            self.delay(context, result, seconds, "before scaling the disabled groups down (delayBeforeScaleDown)")

    def phase_scale_down(self, context: Any, result: dict[str, Any]) -> None:
        from gennaker.cloud.model import Capacity

        names = list((result.get("cleanup") or {}).get("scaleDown") or [])
        provider = self.get_provider()
        ops = []
        for name in names:
            group = self.group(name, result["region"])
            if group.enabled:
                self.log.info("not scaling %s down: it is enabled again", name)
                continue
            capacity = Capacity(min=0, max=group.capacity.max, desired=0)
            with self.cloud_call(f"scale {name} down"):
                ops.append(
                    provider.resize_server_group(
                        name, capacity, self.key(context, f"scale-down-{name}"), region=result["region"]
                    )
                )
            self.log.info("scaled %s down to 0 instances (disabled; a rollback scales it back up)", name)
        result["scaledDown"] = names
        self.goto(result, DONE)
        self.wait_ops(context, result, ops)

    @property
    def policy(self) -> Policy:
        return Policy()

    # ------------------------------------------------------------------ undo

    def undo_new(self, context: Any, result: dict[str, Any], why: str) -> str:
        """Take the new group out of service (or destroy it) and clear weights; what was done, in words."""
        name = result.get("serverGroup")
        if not name:
            return "nothing to roll back (no server group was made)"
        provider = self.get_provider()
        region = result["region"]
        done = []
        if result.get("weighted"):
            try:
                group = self.group(name, region)
                self.set_weights(context, group, None, "rollback-weights")
                done.append("cleared the load balancers' weights")
            except Exception as error:  # keep going: taking the group out matters more
                self.log.error("could not clear the load balancers' weights: %s", error)
        action = self.rollback_action
        try:
            with self.cloud_call(f"{action} {name}"):
                if action == "destroy":
                    provider.destroy_server_group(name, self.key(context, "rollback-destroy"), region=region)
                else:
                    provider.disable_server_group(name, self.key(context, "rollback-disable"), region=region)
            done.append(f"{action}d {name}" if action == "disable" else f"destroying {name}")
        except Exception as error:
            self.log.error("rollback could not %s %s: %s", action, name, error)
            done.append(f"could NOT {action} {name} ({error})")
        serving = [n for n in result.get("previous") or [] if n != name]
        where = f"traffic stays on {', '.join(serving)}" if serving else "no older server group was serving"
        text = f"rolled back ({why}): {'; '.join(done)}; {where}"
        self.log.warning("%s", text)
        context["ti"].xcom_push(key=ROLLED_BACK_KEY, value={"serverGroup": name, "action": action})
        return text

    # ------------------------------------------------------------------ rollingRedBlack

    def phase_step(self, context: Any, result: dict[str, Any]) -> None:
        steps = list(self.policy.target_percentages)
        i = int(result.get("step") or 0)
        percent = steps[i]
        name = result["serverGroup"]
        if percent == 100:
            if result.get("weighted"):
                self.log.info("last step: moving all traffic to %s", name)
                self.goto(result, "delay_disable")
            else:
                self.goto(result, "enable")  # a single step of 100: as redblack
            return
        group = self.group(name, result["region"])
        older = self.enabled_older(result)
        weights = rolling_weights(name, older, percent)
        ops = self.set_weights(context, group, weights, f"weights-{percent}")
        result["weighted"] = True
        if i == 0:
            with self.cloud_call(f"enable {name}"):
                ops.append(
                    self.get_provider().enable_server_group(name, self.key(context, "enable"), region=group.region)
                )
        shares = ", ".join(f"{w}% on {n}" for n, w in weights.items())
        self.log.info("step %d of %d: traffic %s", i + 1, len(steps), shares)
        result["step"] = i + 1
        self.goto(result, "step_healthy")
        self.wait_ops(context, result, ops)

    def phase_step_healthy(self, context: Any, result: dict[str, Any]) -> None:
        group = self.group(result["serverGroup"], result["region"])
        self.goto(result, "step_pause")
        self.wait_health(context, result, group, [])

    def phase_step_pause(self, context: Any, result: dict[str, Any]) -> None:
        self.goto(result, "step")
        seconds = float(self.policy.pause_between.total_seconds())
        self.delay(context, result, seconds, "before the next step (pauseBetween)")


__all__ = ["StrategyStepsOperator"]
