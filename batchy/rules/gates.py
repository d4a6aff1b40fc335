"""Gates that know windows: is an upstream's data complete up to a time? Pure.

A coverage gate is ready when the coverage ledger of every selected job covers all of
[since, through): the question a daily job asks of an hourly upstream, or a job of a
backfill. It is missed, at once instead of at a timeout, when it can never become
ready: a hole in that range lies behind the job's watermark (the next window starts
after it) and no open window covers it, so only an operator (a rewind, a backfill) can
fill it. A date gate on a past day that did not succeed is missed too. Coverage here is the
effective one (coverage.Ledger): a range invalidated by late data, or a window closed with
dq=fail, is a hole until a passing window covers it again.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, tzinfo
from typing import Callable

from . import coverage, readiness, repair, times, watermark
from .jobs import Status

READY, WAITING, MISSED = readiness.READY, readiness.WAITING, "missed"
KEYWORDS = ("today", "yesterday", "now")


def moment(text: str, now: datetime, tz: tzinfo, name: str) -> datetime:
    """Return a gate time: ISO-8601 (no offset: in tz), or today / yesterday / now in tz.

    today is midnight at the start of today (yesterday's data complete).
    """
    if text == "now":
        return now
    if text in ("today", "yesterday"):
        day = now.astimezone(tz).date() - timedelta(days=1 if text == "yesterday" else 0)
        return times.start_of_day(datetime.combine(day, datetime.min.time().replace(hour=12), tzinfo=tz), tz)
    moment = times.parse_input_time(text, name)
    return moment if times.has_offset(text) else moment.replace(tzinfo=None).replace(tzinfo=tz)


def coverage_verdict(jobs: dict[str, dict], ledgers: dict, selected: list[str], since: datetime,
                     through: datetime, tz: tzinfo = times.UTC, settings: dict | None = None,
                     max_hole_seconds: float = 0,
                     given_up: dict[str, list] | Callable[[], dict[str, list]] | None = None) -> dict:
    """Return {"state", "ready", "missing", "failed", "jobs": {job: {...}}} for [since, through).

    ledgers: {job: coverage.Ledger (or a plain ledger)}; what counts is the effective
    coverage, so a dirty range or a quality failure is a hole. A hole that lies behind the
    watermark makes the gate missed, unless the job repairs its holes by itself
    (auto_backfill, in settings or on the job) and the hole is one of its ledger's that
    auto_backfill has not given up on (given_up: {job: ranges of its failed or cancelled
    automatic backfills}, repair.given_up; or a function returning it, called only when such a
    hole is found): then it waits.
    Holes no longer than max_hole_seconds are tolerated. Times in reasons and holes are
    written in tz, the gate's zone (waitsy's --tz).
    """
    low, high = since.timestamp(), through.timestamp()
    detail = {}
    for name in selected:
        job = jobs[name]
        ledger = ledgers.get(name) or coverage.Ledger([])
        if not isinstance(ledger, coverage.Ledger):
            ledger = coverage.Ledger(ledger)
        holes = coverage.holes(ledger.effective, low, high)
        counted = [h for h in holes if h[1] - h[0] > max_hole_seconds]
        state, reason = READY, f"covered from {times.format_time(since, tz)} to {times.format_time(through, tz)}"
        if counted:
            state, reason = WAITING, f"not yet covered: {_show(counted, tz)}"
            stuck = [h for h in counted if _behind(job, h)]
            dropped: list = []
            if stuck and repair.enabled(job, settings or {}):
                # auto_backfill repairs the holes of its ledger, except where it gave up
                if callable(given_up):
                    given_up = given_up()  # read once, and only when a hole needs it
                given = (given_up or {}).get(name) or []
                waits = bool(stuck)
                stuck = coverage.subtract(stuck, coverage.subtract(ledger.holes(), given))
                dropped = [h for h in stuck if _meets([h], given)]
                if waits and not stuck:
                    reason += " (auto_backfill repairs it once it settles)"
            dirty, failed = coverage.clip(ledger.dirty, low, high), coverage.clip(ledger.failed, low, high)
            plain = coverage.subtract(stuck, coverage.union(dirty, failed))
            if dropped:
                state, reason = MISSED, (f"auto_backfill gave up on {_show(dropped, tz)} (its backfill failed, was "
                                         "cancelled, or reloaded it and it failed its quality check again); backfill "
                                         "that range once the cause is fixed")
            elif plain:
                state, reason = MISSED, (f"never covered: {_show(plain, tz)} lies behind the watermark and no "
                                         "open window covers it; rewind or backfill that range")
            elif stuck:
                kind, ranges = ("invalidated", dirty) if _meets(stuck, dirty) else ("failed quality", failed)
                state, reason = MISSED, (f"{kind}: {_show(_within(ranges, stuck), tz)} lies behind the watermark "
                                         "and was not covered again; backfill that range")
        detail[name] = {"state": state, "status": job.get("status"), "batch_id": job.get("batch_id"),
                        "holes": [[times.format_time(_at(a), tz), times.format_time(_at(b), tz)] for a, b in holes],
                        "reason": reason}
        if ledger.dirty or ledger.failed:
            detail[name]["generation"] = job.get("generation") or 0
    missed = [n for n, d in detail.items() if d["state"] == MISSED]
    missing = [n for n, d in detail.items() if d["state"] != READY]
    state = MISSED if missed else WAITING if missing else READY
    return {"state": state, "ready": state == READY, "missing": missing, "failed": [], "missed": missed,
            "jobs": detail}


def _meets(spans: list, ranges: list) -> bool:
    """Return True if some span overlaps some range."""
    return any(a < d and c < b for a, b in spans for c, d in ranges)


def _within(ranges: list, spans: list) -> list:
    """Return the parts of ranges inside spans."""
    return [part for a, b in spans for part in coverage.clip(ranges, a, b)] or spans


def refilled(result: dict, filling: dict[str, list]) -> dict:
    """Return a coverage verdict where a backfill still running fills a missed job's holes.

    filling: {job: [[start, end], ...]} of the pending and leased chunks of running
    backfills (epoch seconds): such a hole may still be covered, so the gate waits.
    """
    if result["state"] != MISSED:
        return result
    jobs = dict(result["jobs"])
    for name in result["missed"]:
        merged = coverage.union(filling.get(name) or [], [])  # sort and sweep: n log n, not n squared
        holes = [[times.parse_time(a).timestamp(), times.parse_time(b).timestamp()] for a, b in jobs[name]["holes"]]
        if holes and coverage.covers_all(merged, holes):
            jobs[name] = {**jobs[name], "state": WAITING, "reason": "a running backfill may still cover "
                          + jobs[name]["reason"].split(": ", 1)[-1].split(" lies behind")[0]}
    missed = [n for n in result["missed"] if jobs[n]["state"] == MISSED]
    missing = [n for n, d in jobs.items() if d["state"] != READY]
    state = MISSED if missed else WAITING if missing else READY
    return {**result, "state": state, "ready": state == READY, "missed": missed, "missing": missing, "jobs": jobs}


def date_missed(result: dict, day: date, today: date) -> dict:
    """Return a date gate's verdict, missed when the day is over and it is not ready."""
    if result["state"] == WAITING and day < today:
        return {**result, "state": MISSED, "missed": list(result["missing"]),
                "reason": f"{day.isoformat()} is over and not every step succeeded on it"}
    return {**result, "missed": []}


def _behind(job: dict, hole: list) -> bool:
    """Return True if part of hole can never be covered: it starts before every window to come.

    The windows to come start at the open batch's from_date (if it is open) or at the
    job's next from_date, and only go forward from there.
    """
    if job.get("status") == Status.OPEN and job.get("from_date"):
        start = times.parse_time(job["from_date"]).timestamp()
    else:
        try:
            start = watermark.next_from_date(job).timestamp()
        except ValueError:
            return False
    return start > hole[0]


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, times.UTC)


def _show(intervals: list, tz: tzinfo = times.UTC) -> str:
    shown = ", ".join(f"[{times.format_time(_at(a), tz)}, {times.format_time(_at(b), tz)})" for a, b in intervals[:3])
    return shown + (f" and {len(intervals) - 3} more" if len(intervals) > 3 else "")
