"""Stage operators against in-memory providers: waits defer at once (no inline polling) unless a test says."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _defer_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fake providers' operations never end by themselves: polling them in the worker would only add time.
    monkeypatch.setenv("GENNAKER_INLINE_WAIT", "0")
