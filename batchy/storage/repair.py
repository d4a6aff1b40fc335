"""Holes that repair themselves: the elected process that turns them into backfills.

One process at a time (a leader elected through a Redis key with an expiry, as for
webhooks) looks, every BATCHY_AUTO_BACKFILL_INTERVAL seconds, at the workflows where a
job or the workflow sets `auto_backfill: true` (found in the fleet read the dashboard and
/metrics share), and creates a backfill for each settled range rules/repair.py names.
Creating is guarded by a per-workflow lock as well, so a leader change in the middle of a
round cannot make two backfills of one range. `batchy backfill run` then repairs them.
"""
from __future__ import annotations

import logging
from datetime import datetime

import redis

from . import keys
from .outbox import RESIGN, Background, Lead
from ..errors import BatchyError
from ..rules import coverage, repair
from ..rules.times import UTC

log = logging.getLogger("batchy")

LOCK_SECONDS = 120  # longest one workflow's check and creation may hold its lock

UNLOCK = RESIGN  # give up a lock (or the lead) held with this token: KEYS[1] the key; ARGV[1] the token


class Repairer(Background):
    """The background thread of one process: lead, then repair the holes of auto_backfill jobs."""

    def __init__(self, store, backfills, fleet, interval: float):
        super().__init__(interval, "batchy-repair", "auto_backfill")
        self.store, self.history, self.backfills, self.fleet = store, store.reads, backfills, fleet
        self.lead = Lead(store.redis, keys.REPAIR_LEADER, int(interval * 3000))
        self.created = 0  # backfills this process created: a test's and a log's window
        self._unlock = store.redis.register_script(UNLOCK)

    @property
    def leading(self) -> bool:
        return self.lead.leading

    def stop_leading(self) -> None:
        """Give up the lead, if held."""
        if self.lead.leading:
            try:
                self.lead.resign()
            except (redis.RedisError, OSError) as exc:  # the lead expires by itself
                self.lead.leading = False
                log.info("auto_backfill: could not hand back the lead when stopping: %s", exc)

    def round(self) -> list[dict]:
        """Repair once if this process leads; return the backfills created."""
        candidates = self.fleet.get("auto_backfill", _candidates)
        if not candidates:  # nothing to do: no key written, no lead held
            self.stop_leading()
            return []
        if not self.lead.take():
            return []
        created = []
        for wf in candidates:
            if self.stopped.is_set():
                break
            try:
                created += self.repair(wf)
            except BatchyError as exc:  # gone, corrupt: the others go on
                log.warning("auto_backfill: %s: %s", wf, exc.message)
        return created

    def repair(self, wf: str) -> list[dict]:
        """Create the backfills wf's settled holes need now, under its lock; return them."""
        lock = self.store.keys.repair_lock(wf)
        if not self.store.redis.set(lock, self.lead.token, nx=True, px=LOCK_SECONDS * 1000):
            return []  # another process repairs wf right now
        try:
            jobs, ledgers, settings = self.history.gate_state(wf, lenient=True)
            # The effective coverage's holes: dirty ranges and quality failures among them.
            holes = {name: (ledgers.get(name) or coverage.Ledger([])).holes() for name in jobs}
            if not any(holes.values()):
                return []
            wanted = repair.plan(jobs, settings, holes, self.backfills.filling(wf), self._given_up(wf, ledgers),
                                 self.store.now().timestamp())
            created = []
            for start, end, names in wanted:
                try:
                    made = self.backfills.create(wf, _at(start), _at(end), jobs=names, actor=repair.ACTOR)
                except BatchyError as exc:  # too many chunks, a job removed meanwhile: said, not retried blindly
                    log.warning("auto_backfill: %s %s [%s, %s): %s", wf, names, _at(start), _at(end), exc.message)
                    continue
                self.created += 1
                log.info("auto_backfill: %s: backfill %s of %s for [%s, %s)", wf, made["backfill_id"],
                         ", ".join(names), made["from"], made["to"])
                created.append({k: v for k, v in made.items() if k != "chunks"})
            return created
        finally:
            self._unlock(keys=[lock], args=[self.lead.token])

    def _given_up(self, wf: str, ledgers: dict) -> dict[str, list]:
        """Return {job: ranges} of automatic backfills that failed or were cancelled: not made again."""
        return repair.given_up(self.backfills.list(wf), ledgers)


def _candidates(read) -> list[str]:
    """Return the workflows of a fleet read where some job repairs its holes by itself."""
    return sorted(wf for wf, data in read.overview.items()
                  if any(repair.enabled(job, data.get("settings") or {}) for job in (data.get("jobs") or {}).values()))


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def start(app, store, backfills, fleet) -> Repairer | None:
    """Start this process' repairer unless BATCHY_AUTO_BACKFILL_INTERVAL is 0."""
    interval = float(app.config["BATCHY_AUTO_BACKFILL_INTERVAL"])
    return Repairer(store, backfills, fleet, interval).start() if interval else None
