"""The stage operators and the Clusters API never import each other; the decisions they share import no Airflow.

Read from the import statements of every module (those inside functions too), so a lazy import
cannot slip through either.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gennaker

PACKAGE = Path(gennaker.__file__).parent


def imported(package: str) -> dict[str, set[str]]:
    """Module file (relative) -> the modules it imports, for every module of ``gennaker.<package>``."""
    found: dict[str, set[str]] = {}
    for path in sorted((PACKAGE / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names |= {f"{node.module}.{alias.name}" for alias in node.names}
        found[str(path.relative_to(PACKAGE))] = names
    return found


def offenders(package: str, *forbidden: str) -> dict[str, list[str]]:
    bad = {}
    for module, names in imported(package).items():
        hits = sorted(n for n in names if any(n == f or n.startswith(f"{f}.") for f in forbidden))
        if hits:
            bad[module] = hits
    return bad


def test_the_packages_are_where_the_test_looks() -> None:
    for package in ("web", "operators", "strategies"):
        assert len(imported(package)) >= 3, package


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("web", ("gennaker.operators",)),
        ("operators", ("gennaker.web",)),
        ("strategies", ("gennaker.operators", "gennaker.web", "airflow")),
    ],
)
def test_no_import_across_the_boundary(package: str, forbidden: tuple[str, ...]) -> None:
    assert offenders(package, *forbidden) == {}


def test_the_decisions_load_without_airflow() -> None:
    code = (
        "import sys, gennaker.strategies, gennaker.strategies.targets, gennaker.strategies.capacity, "
        "gennaker.strategies.rollback, gennaker.strategies.canary; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('airflow', 'gennaker') and "
        "m.startswith(('airflow', 'gennaker.operators', 'gennaker.web'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
