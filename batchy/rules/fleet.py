"""The fleet at a glance: one small summary per workflow, the totals, filtering and paging. Pure.

A summary is what the dashboard needs to count, order and filter a workflow without its
full state: the page reads the full state only of the workflows it shows.
"""
from __future__ import annotations

from datetime import datetime

from . import lateness
from .health import last_success, stale_after_seconds
from .jobs import Status

JOB_STATES = ("new", "open", "success", "failed")
# What ?state= of the dashboard takes: a job status (a workflow with a job in it), or a condition.
STATES = (*JOB_STATES, "attention", "late", "stuck", "holes", "paused", "backfill", "error")


def summary(wf: str, data: dict, now: datetime, paused: bool = False, backfills: int = 0) -> dict:
    """Return one workflow's summary from its overview entry (history.History.overview) at now."""
    settings = data.get("settings") or {}
    jobs = data.get("jobs") or {}
    stale_after = stale_after_seconds(settings)
    statuses: dict[str, int] = {}
    late = holes = stale = 0
    for job in jobs.values():
        status = str(job.get("status") or "")
        statuses[status] = statuses.get(status, 0) + 1
        if lateness.job_lateness(job, settings, now):
            late += 1
        if isinstance(job.get("coverage_holes"), int):
            holes += job["coverage_holes"]
        success = last_success(job)
        if stale_after and success is not None and (now - success).total_seconds() > stale_after:
            stale += 1
    stuck = bool(lateness.workflow_stuck(jobs, settings, now))
    error = bool(data.get("error"))
    return {
        "name": wf,
        "jobs": sorted(jobs),
        "statuses": statuses,
        "late": late,
        "stuck": stuck,
        "failing": statuses.get(Status.FAILED, 0),
        "holes": holes,
        "stale": stale,
        "paused": paused,
        "backfills": backfills,
        "error": error,
        "attention": bool(late or stuck or statuses.get(Status.FAILED) or error),
    }


def ordered(summaries: list[dict]) -> list[dict]:
    """Return the summaries as the dashboard lists them: needing attention first, then by name."""
    return sorted(summaries, key=lambda s: (not s["attention"], s["name"]))


def totals(summaries: list[dict]) -> dict:
    """Return the fleet's counts: jobs per status, late jobs, stuck, failing, holes, backfills..."""
    jobs = {status: 0 for status in JOB_STATES}
    for s in summaries:
        for status, n in s["statuses"].items():
            jobs[status] = jobs.get(status, 0) + n
    return {
        "workflows": len(summaries),
        "jobs": sum(len(s["jobs"]) for s in summaries),
        "statuses": jobs,
        "late": sum(s["late"] for s in summaries),
        "stuck": sum(1 for s in summaries if s["stuck"]),
        "failing": sum(1 for s in summaries if s["failing"]),
        "holes": sum(s["holes"] for s in summaries),
        "stale": sum(s["stale"] for s in summaries),
        "paused": sum(1 for s in summaries if s["paused"]),
        "backfills": sum(s["backfills"] for s in summaries),
        "errors": sum(1 for s in summaries if s["error"]),
        "attention": sum(1 for s in summaries if s["attention"]),
    }


def matches(s: dict, text: str = "", state: str = "") -> bool:
    """Return whether a summary passes the filter: text in its name or a job's, and in state."""
    if text:
        text = text.lower()
        if text not in s["name"].lower() and not any(text in job.lower() for job in s["jobs"]):
            return False
    if not state:
        return True
    if state in JOB_STATES:
        return bool(s["statuses"].get(state))
    if state == "holes":
        return s["holes"] > 0
    if state == "backfill":
        return s["backfills"] > 0
    return bool(s[state])


def page_of(summaries: list[dict], page: int, size: int) -> tuple[list[dict], int]:
    """Return page (from 1) of size summaries, and how many pages there are (at least 1)."""
    pages = max(1, -(-len(summaries) // size))
    start = (page - 1) * size
    return summaries[start:start + size], pages
