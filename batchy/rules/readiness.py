"""Readiness of a workflow for a date: the rule `/wait` and Waitsy answer with.

Pure functions over the workflow's jobs ({job: {status, batch_end, ...}}): no Redis,
no Flask. `waitsy/readiness.py` carries a copy of this rule (it may not import batchy);
a change here must be made there too, and tests/test_waitsy.py checks they agree.
"""
from __future__ import annotations

from datetime import date, datetime, tzinfo

from . import times
from .jobs import Status
from ..errors import JobNotFound

READY, WAITING, FAILED = "ready", "waiting", "failed"


def job_verdict(job: dict, day: date, tz: tzinfo) -> tuple[str, str]:
    """Return (ready|waiting|failed, reason) for one job on day in zone tz."""
    status = job.get("status") or Status.NEW
    end_day = _end_day(job.get("batch_end"), tz)
    if status == Status.SUCCESS:
        if end_day is None:
            return WAITING, "success without a readable batch_end"
        if end_day == day:
            return READY, f"succeeded at {job['batch_end']}"
        when = "earlier" if end_day < day else "later"
        return WAITING, f"last success ended {end_day.isoformat()}, {when} than {day.isoformat()}"
    if status == Status.FAILED:
        # Only a failure on the target date is final; an older one waits for today's rerun.
        if end_day == day:
            return FAILED, f"failed at {job['batch_end']}" + _message(job)
        shown = end_day.isoformat() if end_day else "an unknown date"
        return WAITING, f"last run failed on {shown}; waiting for a rerun"
    if status == Status.OPEN:
        return WAITING, f"batch {job.get('batch_id')} open since {job.get('batch_start')}"
    return WAITING, "never run" if status == Status.NEW else f"status {status!r}"


def verdict(jobs: dict[str, dict], selected: list[str] | None, day: date, tz: tzinfo, wf: str = "") -> dict:
    """Return the workflow's verdict: {"state", "ready", "jobs": {job: {...}}, "missing", "failed"}.

    The state is failed as soon as one selected job failed on day (fail fast), else
    ready when every selected job succeeded on day, else waiting. An unknown selected
    job raises JobNotFound.
    """
    names = list(dict.fromkeys(selected)) if selected else list(jobs)
    unknown = [name for name in names if name not in jobs]
    if unknown:
        raise JobNotFound(
            f"workflow {wf!r} has no job {unknown[0]!r} (jobs: {', '.join(sorted(jobs))})",
            workflow=wf or None,
            job=unknown[0],
        )
    detail = {}
    for name in names:
        job = jobs[name]
        state, reason = job_verdict(job, day, tz)
        detail[name] = {
            "state": state,
            "status": job.get("status"),
            "batch_id": job.get("batch_id"),
            "batch_end": job.get("batch_end"),
            "reason": reason,
        }
    failed = [name for name, d in detail.items() if d["state"] == FAILED]
    missing = [name for name, d in detail.items() if d["state"] != READY]
    state = FAILED if failed else WAITING if missing else READY
    return {"state": state, "ready": state == READY, "missing": missing, "failed": failed, "jobs": detail}


def today(now: datetime, tz: tzinfo) -> date:
    """Return the calendar date of now in zone tz."""
    return now.astimezone(tz).date()


def _end_day(value, tz: tzinfo) -> date | None:
    if not value:
        return None
    try:
        return times.parse_time(value, "batch_end").astimezone(tz).date()
    except ValueError:
        return None


def _message(job: dict) -> str:
    message = job.get("message")
    return f": {str(message)[:200]}" if message else ""
