"""The domain rules: time parsing, the from_date watermark, and batch status transitions.

Pure functions over plain dicts: no Redis, no Flask. A job is the JSON object stored
in one field of the workflow hash; a workflow's state is {job_name: job}.
"""
from __future__ import annotations

import math
import re
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import JobNotFound, NotOpen, StaleBatch

NEW, OPEN, SUCCESS, FAILED, ABANDONED = "new", "open", "success", "failed", "abandoned"
STATUSES = (NEW, OPEN, SUCCESS, FAILED)  # a job in the workflow hash is in one of these
BATCH_STATUSES = STATUSES + (ABANDONED,)  # a snapshot may also say a batch was superseded

UTC = timezone.utc
# from_date of a job that was never given one: extract everything.
BEGINNING_OF_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_REPROCESS_HOURS = 24 * 366 * 100

# Fields Batchy maintains while batches run; a config reload never overwrites them.
RUNTIME_FIELDS = (
    "status",
    "batch_id",
    "from_date",
    "to_date",
    "batch_start",
    "batch_end",
    "records_processed",
    "message",
    "last_success_start",
    "last_success_end",
)
# last_success_*: batch_start/batch_end of the job's latest successful batch, kept
# through later failures (most_recent, the dashboard's "since last success").
DATE_FIELDS = ("from_date", "to_date", "batch_start", "batch_end", "last_success_start", "last_success_end")

_OFFSET_NO_COLON = re.compile(r"([+-]\d\d)(\d\d)$")


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo | timezone:
    """Return the time zone called name (an IANA name such as Europe/Paris, or UTC)."""
    if name in ("UTC", "utc", "Z"):
        return UTC
    if not isinstance(name, str) or not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        raise ValueError(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as Europe/Paris") from None


def job_zone(job: dict) -> ZoneInfo | timezone:
    return zone(job.get("timezone") or "UTC")


def parse_time(value, field: str = "date") -> datetime:
    """Return value as an aware datetime; a value without an offset is UTC.

    Accepts what a YAML author or an HTTP client writes: datetime and date objects,
    ISO-8601 strings with 'T' or a space, date only, 'Z', '+01:00' or '+0100'.
    """
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(0), tzinfo=UTC)
    if not isinstance(value, str):
        raise ValueError(f"{field} must be an ISO-8601 date or time, not {type(value).__name__} {value!r}")
    text = value.strip()
    if len(text) > 64:
        raise ValueError(f"{field} is not a date: too long")
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    text = _OFFSET_NO_COLON.sub(r"\1:\2", text) if "T" in text or " " in text else text
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{field} {value!r} is not an ISO-8601 date or time (e.g. 2024-01-31, 2024-01-31T13:45:00+01:00)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def format_time(moment: datetime, tz=UTC) -> str:
    """Return moment as ISO-8601 with an explicit offset, in zone tz."""
    return moment.astimezone(tz).isoformat()


def start_of_day(moment: datetime, tz) -> datetime:
    """Return the first instant of moment's calendar day in zone tz.

    On a day whose midnight does not exist (a DST jump at 00:00), zoneinfo maps the
    missing wall time with the earlier offset, which lands on the jump itself: the
    day's first instant. The result is never later than moment.
    """
    local = moment.astimezone(tz)
    midnight = datetime.combine(local.date(), time(0), tzinfo=tz).astimezone(UTC)
    return min(midnight, moment.astimezone(UTC))


def check_reprocess_hours(value) -> float:
    """Return value if it is a valid reprocess_hours, else raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"reprocess_hours must be a number >= 0, not {value!r}")
    if not math.isfinite(value) or value < 0 or value > MAX_REPROCESS_HOURS:
        raise ValueError(f"reprocess_hours must be a number from 0 to {MAX_REPROCESS_HOURS}, not {value!r}")
    return value


def next_from_date(job: dict) -> datetime:
    """Return the from_date the job's next batch must extract from.

    After a success: the previous batch_start minus reprocess_hours. Otherwise (new,
    failed, or open and never closed) the same from_date again, so a failed or
    crashed window is extracted once more; a job never given one starts at
    BEGINNING_OF_TIME. With trunc_start, the result goes back to midnight in the
    job's timezone.
    """
    hours = check_reprocess_hours(job.get("reprocess_hours") or 0)
    if job.get("status") == SUCCESS and job.get("batch_start"):
        start = parse_time(job["batch_start"], "batch_start") - timedelta(hours=hours)
    elif job.get("from_date"):
        start = parse_time(job["from_date"], "from_date")
    else:
        start = BEGINNING_OF_TIME
    if job.get("trunc_start"):
        start = start_of_day(start, job_zone(job))
    return start


def open_jobs(jobs: dict[str, dict], now: datetime, batch_id: int) -> dict[str, dict]:
    """Return every job opened for batch batch_id at now, with its new window."""
    opened = {}
    for name, job in jobs.items():
        tz = job_zone(job)
        start = format_time(now, tz)
        new = dict(job)
        new.update(
            status=OPEN,
            batch_id=batch_id,
            from_date=format_time(next_from_date(job), tz),
            to_date=start,
            batch_start=start,
            batch_end=None,
            records_processed=None,
            message=None,
        )
        opened[name] = new
    return opened


def abandoned_jobs(jobs: dict[str, dict], new_batch_id: int) -> dict[int, dict[str, dict]]:
    """Return {old_batch_id: {job: snapshot}} for jobs still open that a new batch supersedes."""
    superseded: dict[int, dict[str, dict]] = {}
    for name, job in jobs.items():
        if job.get("status") == OPEN and job.get("batch_id") is not None:
            old = dict(job, status=ABANDONED, message=f"superseded by batch {new_batch_id}")
            superseded.setdefault(int(job["batch_id"]), {})[name] = old
    return superseded


def close_jobs(
    wf: str,
    jobs: dict[str, dict],
    outcome: str,
    now: datetime,
    *,
    job: str | None = None,
    batch_id: int | None = None,
    current_batch_id: int | None = None,
    records_processed: int | None = None,
    message: str | None = None,
) -> dict[str, dict]:
    """Return the jobs that close (outcome success) or fail (outcome failed) now.

    Only open jobs change; closing nothing open is NotOpen, naming the states found.
    batch_id, when given, must be the workflow's current batch (else StaleBatch).
    """
    assert outcome in (SUCCESS, FAILED)
    if job is not None and job not in jobs:
        raise JobNotFound(f"workflow {wf!r} has no job {job!r}", workflow=wf, job=job)
    if batch_id is not None and batch_id != current_batch_id:
        raise StaleBatch(
            f"batch {batch_id} of {wf!r} is not the current batch (current: {current_batch_id}); "
            "another run opened a newer batch",
            workflow=wf,
            batch_id=batch_id,
            current_batch_id=current_batch_id,
        )
    targets = [job] if job is not None else list(jobs)
    open_targets = [name for name in targets if jobs[name].get("status") == OPEN]
    if not open_targets:
        states = ", ".join(f"{name}={jobs[name].get('status')}" for name in targets)
        what = f"job {job!r} of {wf!r} is not open" if job is not None else f"{wf!r} has no open job"
        raise NotOpen(
            f"{what} (status: {states}); open a batch first",
            workflow=wf,
            job=job,
            states={name: jobs[name].get("status") for name in targets},
        )
    closed = {}
    for name in open_targets:
        current = jobs[name]
        new = dict(current)
        new.update(status=outcome, batch_end=format_time(now, job_zone(current)))
        if outcome == SUCCESS:
            new.update(last_success_start=current.get("batch_start"), last_success_end=new["batch_end"])
        if records_processed is not None:
            new["records_processed"] = records_processed
        if message is not None:
            new["message"] = message
        closed[name] = new
    return closed
