"""The readiness rule of a date gate: a deliberate copy of the service's, for polling an older one.

Waitsy may not import batchy, so this copies batchy/rules/readiness.py (job_verdict, verdict)
and batchy/rules/gates.py (date_missed). Keep them in step; tests/test_waitsy.py checks that
they agree.
"""
from __future__ import annotations

from datetime import date, tzinfo

from .errors import UsageError
from .times import parse_time

READY, WAITING, FAILED, MISSED = "ready", "waiting", "failed", "missed"


def job_verdict(job: dict, day: date, tz: tzinfo) -> tuple[str, str]:
    """Return (ready|waiting|failed, reason) for one job on day in zone tz."""
    status = job.get("status") or "new"
    end = parse_time(job.get("batch_end"))
    end_day = end.astimezone(tz).date() if end else None
    if status == "success":
        if end_day is None:
            return WAITING, "success without a readable batch_end"
        if end_day == day:
            return READY, f"succeeded at {job['batch_end']}"
        when = "earlier" if end_day < day else "later"
        return WAITING, f"last success ended {end_day.isoformat()}, {when} than {day.isoformat()}"
    if status == "failed":
        if end_day == day:
            message = job.get("message")
            return FAILED, f"failed at {job['batch_end']}" + (f": {str(message)[:200]}" if message else "")
        shown = end_day.isoformat() if end_day else "an unknown date"
        return WAITING, f"last run failed on {shown}; waiting for a rerun"
    if status == "open":
        return WAITING, f"batch {job.get('batch_id')} open since {job.get('batch_start')}"
    return WAITING, "never run" if status == "new" else f"status {status!r}"


def verdict(jobs: dict, selected: list[str], day: date, tz: tzinfo, wf: str) -> dict:
    """Return {"state", "ready", "missing", "failed", "jobs"} like the service's /wait."""
    names = selected or list(jobs)
    for name in names:
        if name not in jobs:
            raise UsageError(f"workflow {wf!r} has no job {name!r} (jobs: {', '.join(sorted(jobs))})")
    detail = {}
    for name in names:
        state, reason = job_verdict(jobs[name], day, tz)
        detail[name] = {"state": state, "status": jobs[name].get("status"),
                        "batch_end": jobs[name].get("batch_end"), "reason": reason}
    failed = [n for n, d in detail.items() if d["state"] == FAILED]
    missing = [n for n, d in detail.items() if d["state"] != READY]
    state = FAILED if failed else WAITING if missing else READY
    return {"state": state, "ready": state == READY, "missing": missing, "failed": failed, "jobs": detail}


def date_missed(result: dict, day: date, today: date) -> dict:
    """Return a date gate's verdict, missed when the day is over and it is not ready."""
    if result["state"] == WAITING and day < today:
        return {**result, "state": MISSED, "missed": list(result["missing"]),
                "reason": f"{day.isoformat()} is over and not every step succeeded on it"}
    return {**result, "missed": []}
