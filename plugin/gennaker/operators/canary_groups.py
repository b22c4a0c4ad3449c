"""The canary's baseline and canary server groups: made, waited on, given their share of traffic, destroyed.

After a deploy, the *baseline* runs the live image and the *canary* the new one, each in
its own cluster (``<app>-<stack>-baseline``, ``-canary``), behind the live group's load
balancers with ``trafficPercent`` each. With ``baseline`` and ``canary`` named in the
spec, those two existing groups are compared and nothing is deployed or re-routed. Only
what the stage made is destroyed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gennaker.operators.base import CloudStageFailed, ServerGroupNotFound
from gennaker.operators.canary_common import OF_TAG, ROLE_TAG, ROLES, CanaryFailed
from gennaker.operators.canary_report import CanaryReporting, CanaryReportLink
from gennaker.strategies.canary import role_detail

if TYPE_CHECKING:
    from gennaker.cloud.model import Operation


class CanaryGroups(CanaryReporting):
    """The phases that make and unmake the baseline and canary groups and their weights."""

    # ------------------------------------------------------------------ start

    def phase_start(self, context: Any, result: dict[str, Any]) -> None:
        from gennaker.canary.report import report_url
        from gennaker.canary.sources import MetricSourceError, step_of

        ti = context["ti"]
        result["report"] = report_url(ti.dag_id, ti.run_id, ti.task_id, getattr(ti, "map_index", -1))
        ti.xcom_push(key=CanaryReportLink().xcom_key, value=result["report"])  # the link works while it runs
        source = self.make_source()
        try:
            for name, query in self.queries.items():
                try:
                    source.check(query)
                except MetricSourceError as error:
                    raise CanaryFailed(f"stage {self.stage_id!r}: metric {name!r}: {error}") from error
            result["source"] = source.describe()
            result["settle"] = source.settle
            result["sampleStep"] = step_of(self.metric_source, source).total_seconds()
        finally:
            source.close()
        result["created"] = []
        region = result["region"]
        if self.baseline_name:
            baseline = self.group(str(self.baseline_name), region)
            canary = self.group(str(self.canary_name), region)
            result.update(
                mode="analysis",
                baseline=baseline.name,
                canary=canary.name,
                baselineImage=baseline.image_id,
                canaryImage=canary.image_id,
            )
            self.log.info(
                "analysing existing server groups: baseline %s (%s) against canary %s (%s); "
                "nothing is deployed and no traffic is moved",
                baseline.name,
                self._image_words(baseline.image_id, region),
                canary.name,
                self._image_words(canary.image_id, region),
            )
            self.goto(result, "begin")
            return
        upstream = ti.xcom_pull(task_ids=self.source_stage)
        if not isinstance(upstream, Mapping) or not upstream.get("imageId"):
            raise CloudStageFailed(
                f"stage {self.stage_id!r}: stage {self.source_stage!r} gave no image to canary (its output has "
                f"no imageId); did it run?"
            )
        previous = upstream.get("previousServerGroup")
        if not previous:
            raise CanaryFailed(
                f"stage {self.stage_id!r}: nothing to compare with: {upstream.get('serverGroup')} is the first "
                f"server group of {self.cluster} (no group was live when {self.source_stage!r} ran), so there is "
                f"no live version for a baseline; deploy the first version without a canary, or name existing "
                f"baseline and canary server groups"
            )
        live = self.group(str(previous), region)
        load_balancers = [lb.name for lb in self.load_balancers(live)]
        if not load_balancers:
            raise CanaryFailed(
                f"stage {self.stage_id!r}: the live server group {live.name} is behind no load balancer, so there "
                f"is no live traffic to share with a canary"
            )
        if not live.enabled:
            self.log.warning("the live server group %s is disabled: the canary may see no traffic", live.name)
        result.update(
            mode="deploy",
            live=live.name,
            newServerGroup=upstream.get("serverGroup"),
            baselineImage=live.image_id,
            canaryImage=str(upstream["imageId"]),
            loadBalancers=load_balancers,
        )
        self.goto(result, "create")

    # ------------------------------------------------------------------ deploy baseline and canary

    def phase_create(self, context: Any, result: dict[str, Any]) -> None:
        from gennaker.cloud.model import Capacity, ServerGroupSpec

        region = result["region"]
        live = self.group(result["live"], region)
        try:
            new = self.group(result["newServerGroup"], region) if result.get("newServerGroup") else live
        except ServerGroupNotFound:
            new = live
        provider = self.get_provider()
        ops: dict[str, Operation] = {}
        for role, image, like in (("baseline", result["baselineImage"], live), ("canary", result["canaryImage"], new)):
            spec = ServerGroupSpec(
                application=self.application,
                stack=self.stack,
                detail=role_detail(self.detail, role),
                account=self.account,
                region=region,
                image_id=image,
                capacity=Capacity.fixed(self.capacity),
                enabled=False,
                load_balancers=tuple(result["loadBalancers"]),
                firewalls=tuple(like.firewalls),
                health_check=dict(like.health_check),
                environment=dict(like.environment),
                tags={ROLE_TAG: role, OF_TAG: result["cluster"]},
            )
            with self.cloud_call(f"create the {role} server group"):
                op = provider.create_server_group(spec, self.key(context, f"create-{role}"))
            name = op.result.get("server_group")
            if not name:
                raise CloudStageFailed(f"creating the {role} server group gave no name: {op.message}")
            result[role] = str(name)
            if name not in result["created"]:
                result["created"].append(str(name))
            self._keep(context, {"result": result})  # the cleanup task finds them even if this process dies now
            ops[role] = op
        self.log.info(
            "creating baseline %s (%s, as live %s) and canary %s (%s), %s each, out of service until healthy",
            result["baseline"],
            self._image_words(result["baselineImage"], region),
            live.name,
            result["canary"],
            self._image_words(result["canaryImage"], region),
            f"{self.capacity} instance" + ("" if self.capacity == 1 else "s"),
        )
        self.goto(result, "canary_healthy")
        self.wait_health(context, result, self.group(result["baseline"], region), [ops["baseline"]])

    def phase_canary_healthy(self, context: Any, result: dict[str, Any]) -> None:
        self.goto(result, "traffic")
        self.wait_health(context, result, self.group(result["canary"], result["region"]), [])

    def phase_traffic(self, context: Any, result: dict[str, Any]) -> None:
        share = self.traffic_percent
        ops = self.weigh(context, result, {result["baseline"]: share, result["canary"]: share}, "weights")
        result["weighted"] = True
        provider = self.get_provider()
        for role in ROLES:
            with self.cloud_call(f"enable {result[role]}"):
                ops.append(
                    provider.enable_server_group(
                        result[role], self.key(context, f"enable-{role}"), region=result["region"]
                    )
                )
        self.log.info(
            "traffic: %d%% to baseline %s, %d%% to canary %s, the rest (%d%%) stays on live %s (load balancer %s)",
            share,
            result["baseline"],
            share,
            result["canary"],
            100 - 2 * share,
            result["live"],
            ", ".join(result["loadBalancers"]),
        )
        self.goto(result, "begin")
        self.wait_ops(context, result, ops)

    def phase_cleanup(self, context: Any, result: dict[str, Any]) -> None:
        ops = self.destroy_ours(context, result)
        if ops:
            self.log.info(
                "destroying baseline %s and canary %s: the canary is over", result["baseline"], result["canary"]
            )
        self.goto(result, "unweight")
        self.wait_ops(context, result, ops)

    def phase_unweight(self, context: Any, result: dict[str, Any]) -> None:
        ops = []
        if result.get("weighted"):
            ops = self.weigh(context, result, {}, "weights-clear")
            result["weighted"] = False
            self.log.info("cleared the canary's load balancer weights: live %s takes all the traffic", result["live"])
        result["cleanedUp"] = True
        self.goto(result, "verdict")
        self.wait_ops(context, result, ops)

    def destroy_ours(self, context: Any, result: Mapping[str, Any]) -> list[Any]:
        """Destroy the baseline and canary groups this stage created (not those it was given)."""
        provider = self.get_provider()
        ops = []
        for role in ROLES:
            name = result.get(role)
            if not name or name not in (result.get("created") or []):
                continue
            with self.cloud_call(f"destroy the {role} server group {name}"):
                ops.append(
                    provider.destroy_server_group(name, self.key(context, f"destroy-{role}"), region=result["region"])
                )
        return ops

    def tear_down(self, context: Any, result: dict[str, Any]) -> str:
        """Destroy what the stage made and take its weights away, now, without waiting; what was done, in words."""
        done = []
        try:
            self.destroy_ours(context, result)
            done.append(f"destroying {', '.join(n for n in (result.get(r) for r in ROLES) if n)}")
        except Exception as error:  # keep going: the weights, and the cleanup task, still follow
            self.log.error("could not destroy the canary's server groups: %s", error)
            done.append(f"could NOT destroy the canary's server groups ({error}); the cleanup task will try again")
        if result.get("weighted"):
            try:
                self.weigh(context, result, {}, "weights-clear")
                result["weighted"] = False
                done.append("cleared the load balancer weights")
            except Exception as error:
                self.log.error("could not clear the canary's load balancer weights: %s", error)
                done.append(f"could NOT clear the load balancer weights ({error})")
        result["cleanedUp"] = True
        text = "cleaned up: " + "; ".join(done)
        self.log.warning("%s", text)
        return text


__all__ = ["CanaryGroups"]
