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
        if at is None:
            self.settle(timeout=60.0)  # a warm-up started at the process' start: its value, not a second read
        with self._lock:
            if self._at is None or self.clock() - self._at >= self.max_stale:
                self._store(self._run())
            return self._value

    def warm(self) -> None:
        """Compute the value in the background now, so that the first request finds it."""
        if self.interval and self._at is None:
            self._refresh_in_background()

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

    def ready(self) -> bool:
        """Return whether a value was computed (however old)."""
        return self._at is not None

    def busy(self) -> bool:
        """Return whether a background computation runs now."""
        thread = self._refreshing
        return thread is not None and thread.is_alive()

    def settle(self, timeout: float = 10.0) -> None:
        """Wait for a background computation, if one runs (tests, benchmarks)."""
        thread = self._refreshing
        if thread is not None:
            thread.join(timeout)


class Fleet:
    """Every workflow at once: one read per interval, and every figure derived from it.

    Each figure (the dashboard's summaries, the /metrics text, /late's answer) is named and
    derived from the same read, in the same pass: a process reads the fleet once per
    interval however many pages ask.
    """

    def __init__(self, store, backfills, interval: float, clock: Callable[[], float] | None = None):
        self.store, self.history, self.pauses, self.backfills = store, store.reads, store.pausing, backfills
        self.interval = interval
        self.reads = 0  # how many times the whole fleet was read: a test's window on the sharing
        self._derive: dict[str, Callable[[FleetRead], object]] = {"summaries": self._summaries}
        self._fresh: dict = {}
        self._lock = threading.Lock()
        self.snapshot = Periodic(self._derive_all, interval, clock or time.monotonic)

    def get(self, name: str, derive: Callable[[FleetRead], object] | None = None):
        """Return the figure name (derive(read), registered on first use) of the latest read."""
        if derive is not None and name not in self._derive:
            self.register(name, derive)
        if not self.interval:
            return self._derive[name](self.read())
        while not self.snapshot.ready() and self.snapshot.busy():
            # The first read of a process (its warm-up) is being derived: take this figure as
            # soon as it is made, not once every figure is (the summaries come first).
            if name in self._fresh:
                return self._fresh[name]
            time.sleep(0.02)
        derived = self.snapshot.get()
        if name not in derived:  # first asked for after this read: derived once from a read of its own
            derived[name] = self._derive[name](self.read())
        return derived[name]

    def register(self, name: str, derive: Callable[[FleetRead], object]) -> None:
        """Derive the figure name from every read from now on."""
        with self._lock:
            self._derive.setdefault(name, derive)

    def warm(self) -> None:
        """Read the fleet in the background now (a service process starting), unless the interval is 0."""
        self.snapshot.warm()

    def summaries(self) -> dict:
        """Return {"now", "workflows": [summary, ...] in the dashboard's order, "totals"}."""
        return self.get("summaries")

    def _derive_all(self) -> dict:
        read = self.read()
        with self._lock:
            derivations = list(self._derive.items())
        derived: dict = {}
        self._fresh = derived  # published figure by figure (see get)
        for name, derive in derivations:
            derived[name] = derive(read)
        return derived

    def read(self) -> FleetRead:
        """Read every workflow: the clock, names, states and bookkeeping, pauses, running backfills."""
        self.reads += 1
        now = self.store.now()
        names = self.store.workflows()
        overview = self.history.overview(names)
        pauses = self.pauses.status(names)
        running = self.backfills.running(sorted(overview))
        return FleetRead(now, overview, pauses, running)

    @staticmethod
    def _summaries(read: FleetRead) -> dict:
        paused = read.pauses.get("workflows") or {}
        summaries = fleet_rules.ordered([
            fleet_rules.summary(wf, data, read.now, wf in paused, len(read.backfills.get(wf) or []))
            for wf, data in read.overview.items()])
        return {"now": read.now, "workflows": summaries, "totals": fleet_rules.totals(summaries)}
