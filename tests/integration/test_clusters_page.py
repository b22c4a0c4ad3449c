"""The Clusters page in headless Chromium, on the session's real Airflow (tests/integration/conftest.py).

A person's path through it: log in on Airflow's login page, open **Clusters** from the
navigation, find a server group the local provider runs (created here through
:class:`LocalProvider` in the session's ``GENNAKER_HOME``, as the stage tests do), resize it
through the dialog and see the change on the page and on the provider; the audit trail and the
cluster's history name who did it. A ``viewer`` sees every action disabled. A deploy task's
"Server group" link, in Airflow's task view, opens the page on the group it made.

Chromium is Debian's (``/usr/bin/chromium``), driven by Playwright (tests/browser/chromium.py).
Screenshots, light and dark, are kept in tests/artifacts/browser/.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from browser.chromium import chromium, log_in, new_context, screenshot
from localcloud import FAST_HEALTH, Cloud

from gennaker.cloud.local.provider import LocalProvider
from gennaker.cloud.model import Capacity, Health, OperationStatus, ServerGroupSpec

from .conftest import USERS, Airflow

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Locator, Page

pytestmark = pytest.mark.integration

ACCOUNT = REGION = "local"
RELEASES = {"v1": "1.0.0"}  # baked by the images fixture (conftest)
TEST_SECONDS = 240
UI_WAIT = 30_000  # ms: a page, a dialog, an action's end
LINK_PIPELINE = "hello.page-link"
LINK_SPEC = """\
# Written by tests/integration/test_clusters_page.py: a deploy whose task links to its server group.
application: hello
name: page-link
parameters: [{name: image, required: true}]
stages:
  - id: deploy
    type: deploy
    image: {name: "{{ params.image }}"}
    cluster: {stack: pagelink}
    capacity: {min: 1, max: 1, desired: 1}
    healthCheck: {interval: 0.2s, waitTimeout: 1m}
    strategy: {type: none}
    timeout: 3m
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def image(images: dict[str, str]) -> str:
    """The demo service 1.0.0, baked into the session's home: its image id."""
    return images["v1"]


def create(cloud: Cloud, provider: LocalProvider, image: str, stack: str, *, enabled: bool) -> str:
    """One more server group of hello-<stack> (one instance, behind load balancer hello-<stack>): its name.

    ``Cloud.create`` keys its call by stack and image, so a second group of the same image needs its own key.
    """
    spec = ServerGroupSpec(
        application="hello",
        stack=stack,
        account=provider.account,
        region=REGION,
        image_id=image,
        capacity=Capacity.fixed(1),
        load_balancers=(f"hello-{stack}",),
        health_check=FAST_HEALTH,
        enabled=enabled,
    )
    op = provider.create_server_group(spec, cloud.key(f"create-{stack}-{uuid.uuid4().hex[:8]}"))
    assert op.status is OperationStatus.SUCCEEDED, op.message
    return str(op.result["server_group"])


# --------------------------------------------------------------------------- the page


def open_clusters(page: Page, airflow: Airflow, user: str) -> None:
    """Log in as ``user``, then open Clusters from Airflow's navigation and pick application hello."""
    log_in(page, airflow.url, user, USERS[user])
    page.get_by_role("link", name="Clusters").click()
    page.wait_for_url(re.compile(r"/plugin/clusters"))
    picker = page.get_by_test_id("application-picker")
    picker.wait_for(timeout=UI_WAIT)
    picker.select_option("hello")


def card(page: Page, group: str) -> Locator:
    return page.locator(f'[data-testid="server-group"][data-name="{group}"]')


def luminance(page: Page, locator: Locator) -> float:
    """Relative luminance (0 black .. 1 white) of an element's background colour, whatever CSS colour syntax."""
    return float(
        locator.evaluate(
            """e => {
                const ctx = Object.assign(document.createElement("canvas"), {width: 1, height: 1}).getContext("2d");
                ctx.fillStyle = getComputedStyle(e).backgroundColor;
                ctx.fillRect(0, 0, 1, 1);
                const [r, g, b] = ctx.getImageData(0, 0, 1, 1).data;
                return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255;
            }"""
        )
    )


def test_admin_resizes_a_server_group_through_the_dialog(
    alive: Airflow, browser: Browser, cloud: Cloud, image: str
) -> None:
    provider = cloud.provider()
    cloud.load_balancer(provider, "hello-page")
    group = cloud.create(provider, image, stack="page", count=1, lb="hello-page")
    assert group == "hello-page-v000"
    newer = create(cloud, provider, image, "page", enabled=False)
    assert newer == "hello-page-v001"
    cloud.wait_up(provider, group, 1)

    context = new_context(browser)
    page = context.new_page()
    try:
        open_clusters(page, alive, "admin")
        the_card = card(page, group)
        the_card.wait_for(timeout=UI_WAIT)
        assert "enabled" in the_card.inner_text()
        assert "1/1 Up" in the_card.inner_text()
        assert luminance(page, the_card) > 0.8, "light mode: the card should be light"
        screenshot(page, "clusters-light")

        the_card.click()
        details = page.get_by_test_id("server-group-details")
        details.get_by_text(group).first.wait_for(timeout=UI_WAIT)
        details.get_by_test_id("instances").wait_for(timeout=UI_WAIT)
        assert "min 1 / desired 1 / max 1" in details.get_by_test_id("server-group-facts").inner_text()
        screenshot(page, "clusters-details-light")

        details.get_by_role("button", name="Resize…").click()
        dialog = page.get_by_test_id("action-dialog")
        dialog.get_by_label("Max").fill("2")
        dialog.get_by_label("Desired").fill("2")
        summary = dialog.get_by_test_id("action-summary").inner_text()
        assert f"{group} (local/local): capacity min 1 / desired 1 / max 1 → min 1 / desired 2 / max 2." in summary
        assert "1 instance will be started (1 → 2)." in summary
        dialog.get_by_label("Reason (kept in the audit trail)").fill("browser test")
        screenshot(page, "clusters-resize-dialog-light")
        dialog.get_by_test_id("confirm-action").click()
        dialog.locator('[data-testid="action-outcome"][data-status="SUCCEEDED"]').wait_for(timeout=60_000)
        dialog.get_by_role("button", name="Close", exact=True).click()

        # The page shows the change (it reads the clusters again after an action) ...
        page.wait_for_function(
            """g => { const c = document.querySelector(`[data-testid="server-group"][data-name="${g}"]`);
                     return c !== null && c.innerText.includes("2/2 Up") && c.innerText.includes("desired 2"); }""",
            arg=group,
            timeout=UI_WAIT,
        )
        # ... and so does the provider.
        resized = provider.get_server_group(group)
        assert (resized.capacity.min, resized.capacity.desired, resized.capacity.max) == (1, 2, 2)
        instances = provider.instances(group)
        assert len(instances) == 2 and all(i.health is Health.UP for i in instances)

        # The audit trail names who did it and why; the cluster's history has the resize by that user.
        page.get_by_role("tab", name="Audit trail").click()
        row = page.get_by_test_id("audit").locator('tr[data-action="resize"][data-status="SUCCEEDED"]').first
        row.wait_for(timeout=UI_WAIT)
        assert "admin" in row.inner_text() and "browser test" in row.inner_text() and group in row.inner_text()
        screenshot(page, "clusters-audit-light")
        page.get_by_role("tab", name="Load balancers").click()
        balancer = (
            page.get_by_test_id("load-balancers").locator("tr").filter(has=page.get_by_text("hello-page", exact=True))
        )
        balancer.first.wait_for(timeout=UI_WAIT)
        assert f"{group}" in balancer.first.inner_text() and "in service" in balancer.first.inner_text()
        page.get_by_role("tab", name="Clusters").click()
        page.locator('[data-testid="cluster"][data-cluster="hello-page"]').get_by_role("button", name="History").click()
        history = page.get_by_test_id("cluster-history")
        resized_row = history.locator('tr[data-event="resized"]').first
        resized_row.wait_for(timeout=UI_WAIT)
        assert "admin (Clusters page)" in resized_row.inner_text()
        assert history.locator('tr[data-event="created"]').count() >= 1
        screenshot(page, "clusters-history-light")
        history.get_by_role("button", name="close the history").click()

        # A rollback's confirmation says what it would do; cancelled, it does nothing.
        page.locator('[data-testid="cluster"][data-cluster="hello-page"]').get_by_role(
            "button", name="Rollback…"
        ).click()
        dialog = page.get_by_test_id("action-dialog")
        summary = dialog.get_by_test_id("action-summary").inner_text()
        assert f"{group} keeps its capacity (min 1 / desired 2 / max 2)." in summary
        assert f"{group} is enabled (it already is) in load balancer hello-page." in summary
        assert "No newer server group is enabled: nothing is disabled." in summary
        assert dialog.get_by_label("Roll back to").input_value() == "previous"
        screenshot(page, "clusters-rollback-dialog-light")
        dialog.get_by_role("button", name="Cancel").click()
    finally:
        context.close()

    # The same page in dark mode (Airflow follows the browser's colour scheme until the user picks one).
    dark = new_context(browser, dark=True)
    page = dark.new_page()
    try:
        open_clusters(page, alive, "admin")
        the_card = card(page, group)
        the_card.wait_for(timeout=UI_WAIT)
        assert page.evaluate("document.documentElement.classList.contains('dark')")
        assert luminance(page, the_card) < 0.2, "dark mode: the card should be dark"
        screenshot(page, "clusters-dark")
        the_card.click()
        page.get_by_test_id("server-group-details").get_by_test_id("instances").wait_for(timeout=UI_WAIT)
        screenshot(page, "clusters-details-dark")
        page.get_by_test_id("server-group-details").get_by_role("button", name="Disable…").click()
        summary = page.get_by_test_id("action-dialog").get_by_test_id("action-summary").inner_text()
        assert (
            f"{group} (local/local) is taken out of service: load balancer hello-page stops sending it traffic."
            in summary
        )
        screenshot(page, "clusters-disable-dialog-dark")
        page.get_by_test_id("action-dialog").get_by_role("button", name="Cancel").click()
    finally:
        dark.close()
    assert provider.get_server_group(group).enabled and not provider.get_server_group(newer).enabled, "cancelled"


def test_a_viewer_sees_no_enabled_action(alive: Airflow, browser: Browser, cloud: Cloud, image: str) -> None:
    provider = cloud.provider()
    cloud.load_balancer(provider, "hello-pageview")
    group = cloud.create(provider, image, stack="pageview", count=1, lb="hello-pageview")
    assert create(cloud, provider, image, "pageview", enabled=False) == "hello-pageview-v001"
    cloud.wait_up(provider, group, 1)

    context = new_context(browser)
    page = context.new_page()
    try:
        open_clusters(page, alive, "viewer")
        the_card = card(page, group)
        the_card.wait_for(timeout=UI_WAIT)
        assert "read-only" in page.get_by_test_id("summary").inner_text()
        cluster = page.locator('[data-testid="cluster"][data-cluster="hello-pageview"]')
        assert cluster.get_by_role("button", name="Rollback…").is_disabled()
        assert cluster.get_by_role("button", name="History").is_enabled()  # reading is allowed

        the_card.click()
        details = page.get_by_test_id("server-group-details")
        details.get_by_test_id("instances").wait_for(timeout=UI_WAIT)
        actions = details.get_by_test_id("server-group-actions").get_by_role("button")
        assert actions.count() == 3
        assert "Read-only" in details.get_by_test_id("read-only").inner_text()
        for i in range(actions.count()):
            assert actions.nth(i).is_disabled(), actions.nth(i).inner_text()
        terminate = details.get_by_test_id("instances").get_by_role("button", name="Terminate…")
        assert terminate.count() == 1 and terminate.is_disabled()
        screenshot(page, "clusters-viewer-light")

        # Auto-refresh: a change made elsewhere (here, straight through the provider) shows up without a reload.
        older = card(page, "hello-pageview-v001")
        assert older.get_attribute("data-state") == "disabled"
        op = provider.enable_server_group("hello-pageview-v001", cloud.key("enable-pageview-v001"))
        assert op.status is not OperationStatus.FAILED, op.message  # RUNNING while its load balancer settles
        page.wait_for_function(
            """() => document.querySelector('[data-testid="server-group"][data-name="hello-pageview-v001"]')
                        ?.dataset.state === "enabled" """,
            timeout=UI_WAIT,
        )
    finally:
        context.close()


def test_a_deploy_task_links_to_its_server_group(alive: Airflow, browser: Browser, cloud: Cloud, image: str) -> None:
    spec = alive.pipelines / "page-link.yaml"
    spec.write_text(LINK_SPEC)
    try:
        alive.unpause(LINK_PIPELINE)
        run_id = alive.trigger(LINK_PIPELINE, {"image": image})
        assert alive.wait_for_run(LINK_PIPELINE, run_id, timeout=150) == "success", _deploy_log(alive, run_id)
        output = alive.xcom(LINK_PIPELINE, run_id, "deploy")
        group = output["serverGroup"]
        assert group.startswith("hello-pagelink-v")

        # The link as Airflow's API serves it: the page's route, relative to the UI's base URL.
        links = alive.get(f"/dags/{LINK_PIPELINE}/dagRuns/{run_id}/taskInstances/deploy/links")["extra_links"]
        assert links == {
            "Server group": f"plugin/clusters?application=hello&serverGroup={group}&sgAccount=local&sgRegion=local"
        }

        context = new_context(browser)
        page = context.new_page()
        try:
            log_in(page, alive.url, "admin", USERS["admin"])
            # The task instance's Details tab lists its extra links.
            page.goto(f"{alive.url}/dags/{LINK_PIPELINE}/runs/{run_id}/tasks/deploy/details")
            page.get_by_role("link", name="Server group").click(timeout=UI_WAIT)
            page.wait_for_url(re.compile(r"/plugin/clusters\?"))
            details = page.get_by_test_id("server-group-details")
            details.get_by_text(group).first.wait_for(timeout=UI_WAIT)
            assert page.get_by_test_id("application-picker").input_value() == "hello"
            assert card(page, group).get_attribute("aria-pressed") == "true"
            # Back from the group to the run that made it.
            run_link = details.get_by_test_id("run-link")
            assert run_id in run_link.inner_text()
            screenshot(page, "clusters-from-task-link")
            run_link.click()
            page.wait_for_url(re.compile(rf"/dags/{re.escape(LINK_PIPELINE)}/runs/"))
        finally:
            context.close()
    finally:
        spec.unlink()


def _deploy_log(alive: Airflow, run_id: str) -> str:
    parts = []
    for task, ti in alive.task_instances(LINK_PIPELINE, run_id).items():
        log = "\n".join(alive.task_log(LINK_PIPELINE, run_id, task, max(ti.try_number, 1)))
        parts.append(f"--- {task}: {ti.state}\n{log[-3000:]}")
    return "\n".join(parts)
