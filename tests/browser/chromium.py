"""Headless Chromium for the Clusters page's browser tests and benchmark: Debian's chromium driven by Playwright.

Playwright's own browser download does not work here (``playwright install`` fetches a build
from outside the package registries), so Playwright drives Debian's ``chromium`` package
(``/usr/bin/chromium``, installed by ``scripts/setup.sh``; ``GENNAKER_CHROMIUM`` points
elsewhere) with the flags a closed network needs: no background networking, component
updates, sync or QUIC (without them Chromium keeps trying to reach Google's hosts).

Import as ``from browser.chromium import ...`` (``tests/`` is on the path through its conftest).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, Page

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts" / "browser"
CHROMIUM = Path(os.environ.get("GENNAKER_CHROMIUM", "/usr/bin/chromium"))
FLAGS = [
    "--no-sandbox",  # root in CI: Chromium's sandbox refuses to run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 900}


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium (Playwright gives it a new, empty profile); closed on exit."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        raise RuntimeError(
            f"{CHROMIUM} not found: the browser tests need Debian's chromium (scripts/setup.sh test installs it; "
            "or `apt-get install chromium`, or set GENNAKER_CHROMIUM)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        try:
            yield browser
        finally:
            browser.close()


def new_context(browser: Browser, *, dark: bool = False) -> BrowserContext:
    """A fresh browser profile (no cookies) that prefers the light or the dark colour scheme.

    Airflow's UI follows the system's scheme until the user picks one, so this is how a test sees
    the dark mode.
    """
    return browser.new_context(viewport=VIEWPORT, color_scheme="dark" if dark else "light")  # type: ignore[arg-type]


def log_in(page: Page, url: str, user: str, password: str) -> None:
    """Log in through Airflow's login page (the simple auth manager's form), as a person would."""
    page.goto(f"{url}/")
    page.wait_for_url(re.compile(r"/auth/login"))
    page.locator("input[name=username]").fill(user)
    page.locator("input[name=password]").fill(password)
    page.locator("button[type=submit]").click()
    page.wait_for_url(lambda u: "/auth/" not in u, timeout=30_000)


def screenshot(page: Page, name: str) -> Path:
    """A PNG of the window under tests/artifacts/browser/ (kept after the run), once animations have ended."""
    page.evaluate("Promise.all(document.getAnimations().map(a => a.finished.catch(() => null)))")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=False)
    return path
