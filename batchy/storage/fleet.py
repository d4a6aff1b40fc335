"""The whole fleet read at once, and what is derived from it kept per process for an interval.

Reading every workflow costs time in proportion to the fleet (about a second for 10,000
workflows), so the pages that show the fleet (the dashboard's summary and order, /metrics,
/late) derive their figures from one read per BATCHY_FLEET_INTERVAL per process, and a
stale value is served while the next one is computed in the background.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Callable

from ..rules import fleet as fleet_rules

log = logging.getLogger("batchy")


@dataclass
class FleetRead:
    """Every workflow's state, pauses and running backfills, read at one moment of Redis' clock."""

    now: datetime
    overview: dict[str, dict]
    pauses: dict
    backfills: dict[str, list]


class Periodic:
    """A value computed at most once per interval per process, shared by every thread.

    With no value yet (or one older than max_stale), the caller computes it and the others
    wait for it; an older value than interval is answered while one thread computes the
    next in the background. interval 0: computed on every call.
    """

    def __init__(self, compute: Callable[[], object], interval: float,
                 clock: Callable[[], float] = time.monotonic, max_stale: float | None = None):
        self.compute = compute
        self.interval = interval
        self.max_stale = max(10 * interval, 60.0) if max_stale is None else max_stale
        self.clock = clock
        self.computed = 0  # how many times compute ran: a test's window on the cache
        self._value = None
        self._at: float | None = None
        self._lock = threading.Lock()
        self._refreshing: threading.Thread | None = None

    def get(self):
        """Return the value, computed within the interval when anything asks often enough."""
        if not self.interval:
            return self._run()
        at = self._at
        now = self.clock()
        if at is not None and now - at < self.interval:
            return self._value
        if at is not None and now - at < self.max_stale:
            self._refresh_in_background()
            return self._value
        with self._lock:
            if self._at is None or self.clock() - self._at >= self.max_stale:
                self._store(self._run())
            return self._value

    def _run(self):
        self.computed += 1
        return self.compute()

    def _store(self, value) -> None:
        self._value, self._at = value, self.clock()

    def _refresh_in_background(self) -> None:
        with self._lock:
            if self._refreshing is not None and self._refreshing.is_alive():
                return
            self._refreshing = threading.Thread(target=self._refresh, name="batchy-fleet", daemon=True)
            self._refreshing.start()

    def _refresh(self) -> None:
        try:
            value = self._run()
        except Exception as exc:  # noqa: BLE001 - keep the last value; the next request tries again
            log.warning("fleet figures: could not refresh: %s", exc)
            return
        with self._lock:
            self._store(value)

    def settle(self, timeout: float = 10.0) -> None:
        """Wait for a background computation, if one runs (tests, benchmarks)."""
        thread = self._refreshing
        if thread is not None:
            thread.join(timeout)


class Fleet:
    """Every workflow at once: one read, and the figures derived from it, per interval."""

    def __init__(self, store, backfills, interval: float, clock: Callable[[], float] | None = None):
        self.store, self.history, self.pauses, self.backfills = store, store.reads, store.pausing, backfills
        self.interval = interval
        self.clock = clock or time.monotonic
        self.summaries = self.periodic(self._summaries)
        self._kept: dict[str, Periodic] = {}
        self._lock = threading.Lock()

    def periodic(self, derive: Callable[[FleetRead], object]) -> Periodic:
        """Return derive(a read of the fleet), kept for the fleet's interval."""
        return Periodic(lambda: derive(self.read()), self.interval, self.clock)

    def kept(self, name: str, derive: Callable[[FleetRead], object]) -> Periodic:
        """Return the Periodic named name, made once per process from derive (/metrics, /late)."""
        with self._lock:
            if name not in self._kept:
                self._kept[name] = self.periodic(derive)
            return self._kept[name]

    def read(self) -> FleetRead:
        """Read every workflow: the clock, names, states and bookkeeping, pauses, running backfills."""
        now = self.store.now()
        names = self.store.workflows()
        overview = self.history.overview(names)
        pauses = self.pauses.status(names)
        running = self.backfills.running(sorted(overview))
        return FleetRead(now, overview, pauses, running)

    @staticmethod
    def _summaries(read: FleetRead) -> dict:
        """Return {"now", "workflows": [summary, ...] in the dashboard's order, "totals"}."""
        paused = read.pauses.get("workflows") or {}
        summaries = fleet_rules.ordered([
            fleet_rules.summary(wf, data, read.now, wf in paused, len(read.backfills.get(wf) or []))
            for wf, data in read.overview.items()])
        return {"now": read.now, "workflows": summaries, "totals": fleet_rules.totals(summaries)}
