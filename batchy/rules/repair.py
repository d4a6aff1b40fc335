"""Holes that repair themselves: which ranges an automatic backfill should reload now. Pure.

A job (or a whole workflow, under `.batchy`) with `auto_backfill: true` has each hole of
its coverage (and, with late data, each dirty range and each window that failed its
quality check: they count among the holes) turned into a backfill by the one elected
process (storage/repair.py), once the range has settled: its end is at least
`settle_minutes` before now, so rows that become visible late are in it.

Never twice: a range some running backfill of the job fills (or may still fill) is left
alone, and so is a range an automatic backfill already failed on, an operator
cancelled, or an automatic backfill reloaded only to fail its quality check again:
repeating it by itself would loop on the same error. An operator creates one
by hand once the cause is fixed.
"""
from __future__ import annotations

from . import coverage, fields, times
from .backfill import CANCELLED, ChunkStatus
from .coverage import Interval

ACTOR = "auto_backfill"  # who automatic backfills are created by (the audit, /backfills)


def enabled(job: dict, settings: dict) -> bool:
    """Return whether the job repairs its holes by itself (its own setting wins)."""
    value = job.get("auto_backfill", settings.get("auto_backfill", False))
    return value is True


def settle_seconds(job: dict, settings: dict) -> float:
    """Return how long a range waits after its end before it is repaired (settle_minutes)."""
    value = job.get("settle_minutes", settings.get("settle_minutes", 0))
    try:
        return fields.check("settle_minutes", value) * 60.0
    except ValueError:
        return 0.0


subtract = coverage.subtract


def due(holes: list[Interval], filling: list[Interval], given_up: list[Interval], now: float,
        settle: float) -> list[Interval]:
    """Return the ranges of holes to backfill now: settled, not being filled, not given up on."""
    settled = [span for span in holes if span[1] <= now - settle]  # whole: a range is not repaired in slices
    return [span for span in subtract(settled, filling + given_up) if span[1] > span[0]]


def plan(jobs: dict[str, dict], settings: dict, holes: dict[str, list[Interval]], filling: dict[str, list],
         given_up: dict[str, list], now: float) -> list[tuple[float, float, list[str]]]:
    """Return the backfills to create, as (start, end, jobs): one per range, the jobs sharing
    it together, in time order."""
    wanted: dict[tuple[float, float], list[str]] = {}
    for name in sorted(jobs):
        job = jobs[name]
        if not enabled(job, settings):
            continue
        for start, end in due(holes.get(name) or [], filling.get(name) or [], given_up.get(name) or [], now,
                              settle_seconds(job, settings)):
            wanted.setdefault((start, end), []).append(name)
    return [(start, end, names) for (start, end), names in sorted(wanted.items())]


def given_up(backfills: list[dict], ledgers: dict | None = None) -> dict[str, list[Interval]]:
    """Return {job: ranges} auto_backfill does not repair again, from a /backfills list: the
    ranges of its backfills that failed or were cancelled, and of those that succeeded the
    parts still failing their quality check (ledgers: {job: coverage.Ledger}): reloaded and
    still failing, reloading them again by itself would only loop. A gate over them is missed."""
    result: dict[str, list[Interval]] = {}
    for item in backfills:
        status = item.get("status")
        if item.get("actor") != ACTOR or status not in (str(ChunkStatus.FAILED), CANCELLED, str(ChunkStatus.SUCCESS)):
            continue
        start, end = times.parse_time(item["from"]).timestamp(), times.parse_time(item["to"]).timestamp()
        for name in item["jobs"]:
            if status == str(ChunkStatus.SUCCESS):
                ledger = (ledgers or {}).get(name)
                spans = coverage.clip(ledger.failed, start, end) if isinstance(ledger, coverage.Ledger) else []
            else:
                spans = [[start, end]]
            result.setdefault(name, []).extend(spans)
    return {name: coverage.union(spans, []) for name, spans in result.items() if spans}
