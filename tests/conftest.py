"""Shared test setup: Airflow gets a throwaway home, never ~/airflow.

Set in ``pytest_configure`` (before any test module imports Airflow, which reads
AIRFLOW_HOME once at import time).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

_home: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _home
    _home = tempfile.mkdtemp(prefix="gennaker-airflow-home-")
    os.environ["AIRFLOW_HOME"] = _home
    # The local provider's processes inherit only named variables: let the tests' leftover mark through.
    os.environ["GENNAKER_LOCAL_PASS_ENV"] = "GENNAKER_TEST_MARK"


def pytest_unconfigure(config: pytest.Config) -> None:
    if _home is not None:
        shutil.rmtree(_home, ignore_errors=True)
