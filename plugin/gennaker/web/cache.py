"""A short-lived cache of each account's state, so a page of many server groups costs no cloud calls per request.

Per account, one snapshot (everything the Clusters API shows of the account) is:

- **fresh** for ``ttl`` seconds: served as is;
- then **stale** up to ``max_stale`` seconds: still served at once, while one background
  thread reads the account again (stale-while-revalidate); concurrent requests start no
  second read;
- then **expired**: the next request reads the account itself (and concurrent ones wait
  for that read instead of making their own).

:meth:`SnapshotCache.invalidate` expires an account at once: the Clusters API calls it
after each of its own actions, so the page shows what it just did. A background read
that started before an invalidation is thrown away. ``warm`` lets a background read
prepare the new snapshot (render the responses the old one served) before it replaces the
old one, so requests keep finding rendered answers.

Each API server worker has its own cache; the TTL bounds how long one worker can show
what another changed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

S = TypeVar("S")

DEFAULT_TTL = 5.0
DEFAULT_MAX_STALE = 60.0


def _thread(run: Callable[[], None]) -> None:
    threading.Thread(target=run, name="gennaker-cache-refresh", daemon=True).start()


@dataclass
class _Entry(Generic[S]):
    snapshot: S | None = None
    read_at: float = 0.0
    valid: bool = False
    generation: int = 0
    refreshing: bool = False
    reads: int = 0
    loading: threading.Lock = field(default_factory=threading.Lock)


class SnapshotCache(Generic[S]):
    """Snapshots by account, read by ``load(account)`` (see the module docstring for the rules)."""

    def __init__(
        self,
        load: Callable[[str], S],
        *,
        ttl: float = DEFAULT_TTL,
        max_stale: float = DEFAULT_MAX_STALE,
        warm: Callable[[S, S], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        spawn: Callable[[Callable[[], None]], None] = _thread,
    ) -> None:
        self._load = load
        self.ttl = ttl
        self.max_stale = max(max_stale, ttl)
        self._warm = warm
        self._clock = clock
        self._spawn = spawn
        self._entries: dict[str, _Entry[S]] = {}
        self._lock = threading.Lock()

    def get(self, account: str) -> S:
        """The account's snapshot under the rules above; a read that fails raises to the caller."""
        entry = self._entry(account)
        with self._lock:
            snapshot, age, valid = entry.snapshot, self._clock() - entry.read_at, entry.valid
        if snapshot is not None and valid:
            if age < self.ttl:
                return snapshot
            if age < self.max_stale:
                self._refresh_in_background(account, entry)
                return snapshot
        with entry.loading:  # one read at a time per account; the others wait for it
            with self._lock:
                if entry.snapshot is not None and entry.valid and self._clock() - entry.read_at < self.ttl:
                    return entry.snapshot
                generation = entry.generation
            started = self._clock()
            snapshot = self._load(account)
            with self._lock:
                entry.reads += 1
                if entry.generation == generation:
                    entry.snapshot, entry.read_at, entry.valid = snapshot, started, True
            return snapshot

    def invalidate(self, account: str) -> None:
        """The account changed: the next request reads it again; a background read in flight is dropped."""
        entry = self._entry(account)
        with self._lock:
            entry.valid = False
            entry.generation += 1

    def clear(self) -> None:
        """Forget every account."""
        with self._lock:
            for entry in self._entries.values():
                entry.valid = False
                entry.generation += 1
            self._entries.clear()

    def reads(self, account: str) -> int:
        """How many times the account was read (for tests and the benchmark)."""
        with self._lock:
            entry = self._entries.get(account)
            return entry.reads if entry else 0

    def _entry(self, account: str) -> _Entry[S]:
        with self._lock:
            entry = self._entries.get(account)
            if entry is None:
                entry = self._entries[account] = _Entry()
            return entry

    def _refresh_in_background(self, account: str, entry: _Entry[S]) -> None:
        with self._lock:
            if entry.refreshing:
                return
            entry.refreshing = True
            generation, old = entry.generation, entry.snapshot

        def refresh() -> None:
            try:
                started = self._clock()
                snapshot = self._load(account)
                if self._warm is not None and old is not None:
                    self._warm(old, snapshot)
                with self._lock:
                    entry.reads += 1
                    if entry.generation == generation:
                        entry.snapshot, entry.read_at, entry.valid = snapshot, started, True
            except Exception as error:  # the stale snapshot is served until it expires; then the caller sees it
                log.warning("refreshing account %s in the background failed: %s", account, error)
            finally:
                with self._lock:
                    entry.refreshing = False

        try:
            self._spawn(refresh)
        except Exception:
            with self._lock:
                entry.refreshing = False
            raise


__all__ = ["DEFAULT_MAX_STALE", "DEFAULT_TTL", "SnapshotCache"]
