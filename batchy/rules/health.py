"""How healthy a workflow's loads are: last success, open since, stale, loaded through.

Pure functions over stored jobs and the Redis clock, shared by the dashboard, the
metrics and most_recent, so they all agree on what each term means.
"""
from __future__ import annotations

from datetime import datetime

from .jobs import Status
from .times import parse_time


def parse_moment(value) -> datetime | None:
    """Return a stored time as an aware datetime, or None if absent or unreadable."""
    if not value:
        return None
    try:
        return parse_time(value)
    except ValueError:
        return None  # one odd value must not take a whole page down


def last_success(job: dict) -> datetime | None:
    """Return when the job's latest successful batch ended (or started, if no end is known)."""
    moment = parse_moment(job.get("last_success_end")) or parse_moment(job.get("last_success_start"))
    if moment is None and job.get("status") == Status.SUCCESS:
        # State written before last_success_* existed: the current batch is the last success.
        moment = parse_moment(job.get("batch_end")) or parse_moment(job.get("batch_start"))
    return moment


def open_since(jobs: dict[str, dict]) -> datetime | None:
    """Return the start of the oldest batch still open in the workflow, or None."""
    starts = [parse_moment(job.get("batch_start")) for job in jobs.values() if job.get("status") == Status.OPEN]
    starts = [s for s in starts if s is not None]
    return min(starts) if starts else None


def stale_after_seconds(settings: dict) -> float | None:
    """Return the workflow's stale_after_hours in seconds, or None when not set."""
    hours = settings.get("stale_after_hours")
    if isinstance(hours, bool) or not isinstance(hours, (int, float)) or hours <= 0:
        return None
    return float(hours) * 3600


def loaded_through(marks: list[dict | None]) -> dict | None:
    """Return the oldest of some jobs' last-success marks: the point every one has loaded up to.

    None when one of them never succeeded.
    """
    if not marks or not all(marks):
        return None
    return min(marks, key=lambda mark: parse_time(mark["start"]))
