"""The Clusters page's committed bundle: built from the committed sources, in the shape Airflow's UI loads.

``plugin/gennaker/web/static/clusters.js`` ships in the Python package (no Node.js on a user's
machine), so it is committed, built by ``scripts/build-ui.sh`` from ``plugin/gennaker/web/ui``.
Its banner records a SHA-256 of those sources (vite.config.ts computes it the same way as
:func:`sources_hash` below): when someone changes the page and does not rebuild, the first test
fails and says what to run.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UI = REPO / "plugin" / "gennaker" / "web" / "ui"
BUNDLE = REPO / "plugin" / "gennaker" / "web" / "static" / "clusters.js"
SKIPPED = {"node_modules", "dist"}
BANNER = re.compile(r"^/\*! gennaker Clusters page \(Airflow react_apps plugin\) \| sources sha256:([0-9a-f]{64}) \|")
MAX_BYTES = 80_000  # 45 kB today: React, React Router and Chakra UI are the host's, not bundled


def sources_hash(folder: Path) -> str:
    """sha256 over "<path>\\n<sha256 of its bytes>\\n" for every file under ``folder`` but node_modules/ and dist/,
    in the order of their POSIX paths (as vite.config.ts's ``sourcesHash``)."""
    files = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not SKIPPED.intersection(p.relative_to(folder).parts)
    )
    whole = hashlib.sha256()
    for path in files:
        one = hashlib.sha256((folder / path).read_bytes()).hexdigest()
        whole.update(f"{path}\n{one}\n".encode())
    return whole.hexdigest()


def test_the_committed_bundle_is_built_from_the_committed_sources() -> None:
    text = BUNDLE.read_text()
    banner = BANNER.match(text)
    assert banner, f"{BUNDLE} has no build banner: run scripts/build-ui.sh"
    assert banner.group(1) == sources_hash(UI), (
        f"{BUNDLE.relative_to(REPO)} was not built from the sources in {UI.relative_to(REPO)}: "
        "run scripts/build-ui.sh (needs Node.js) and commit the bundle with the sources"
    )


def test_the_sources_pin_their_build() -> None:
    """package.json names exact versions and package-lock.json pins the whole tree (what `npm ci` installs)."""
    import json

    package = json.loads((UI / "package.json").read_text())
    lock = json.loads((UI / "package-lock.json").read_text())
    for name, version in {**package.get("dependencies", {}), **package["devDependencies"]}.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"{name}: pin an exact version, not {version!r}"
        assert lock["packages"][f"node_modules/{name}"]["version"] == version, f"{name}: the lock disagrees"
    assert (UI / ".gitignore").read_text().split() == ["node_modules/"]


def test_the_bundle_is_the_umd_module_airflow_loads() -> None:
    """One UMD module whose global AirflowPlugin is the component, made with the host's React, router and Chakra."""
    text = BUNDLE.read_text()
    size, packed = len(text.encode()), len(gzip.compress(text.encode(), 9))
    assert size < MAX_BYTES and packed < MAX_BYTES / 4, f"the bundle grew to {size} bytes ({packed} gzipped)"
    # Airflow's UI imports the file, then takes globalThis.AirflowPlugin (a function: the page's component).
    umd = re.search(r"\.AirflowPlugin=\w\((\w)\.React,\1\.ChakraUI,\1\.ReactRouterDOM,\1\.ReactJSXRuntime\)", text)
    assert umd, "the bundle must take React, Chakra UI, React Router and the JSX runtime from Airflow's globals"
    # None of them is bundled (a second React breaks hooks; a second Chakra loses the host's theme).
    for inside in ("__CLIENT_INTERNALS_DO_NOT_USE", "react.transitional.element", "createSystem(", "@emotion/"):
        assert inside not in text, f"the bundle contains {inside!r}: a library meant to be external was bundled"


@pytest.mark.skipif(
    not (UI / "node_modules" / ".bin" / "vite").exists() or shutil.which("npm") is None,
    reason="needs the page's node_modules (scripts/build-ui.sh installs them); the banner test above runs anyway",
)
def test_building_the_sources_gives_the_committed_bundle_byte_for_byte() -> None:
    done = subprocess.run(
        [str(REPO / "scripts" / "build-ui.sh"), "--check"], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
