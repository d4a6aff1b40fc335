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

from .errors import BatchOpen, JobNotFound, NotOpen, StaleBatch

NEW, OPEN, SUCCESS, FAILED, ABANDONED = "new", "open", "success", "failed", "abandoned"
STATUSES = (NEW, OPEN, SUCCESS, FAILED)  # a job in the workflow hash is in one of these
BATCH_STATUSES = STATUSES + (ABANDONED,)  # a snapshot may also say a batch was superseded

UTC = timezone.utc
# from_date of a job that was never given one: extract everything.
BEGINNING_OF_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_REPROCESS_HOURS = 24 * 366 * 100
# Times outside this range overflow once shifted by reprocess_hours or shown in a far
# time zone, which would break every later open of the workflow: refused at the door.
MIN_TIME = datetime(1900, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9000, 1, 1, tzinfo=UTC)

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
    "next_from_date",
)
DATE_FIELDS = ("from_date", "to_date", "batch_start", "batch_end", "next_from_date")
# What a batch snapshot <wf>-<batch_id> keeps of each job: the run's outcome and window.
# Its parameters live in the workflow hash; nulls are left out (a 3-step snapshot
# stays under 1 KB of Redis memory however history grows).
# The batch id is in the key's name.
SNAPSHOT_FIELDS = ("status", "from_date", "to_date", "batch_start", "batch_end", "records_processed", "message")

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
    if len(value) <= 32:  # the common case, a time Batchy stored itself (format_time)
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
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


def parse_input_time(value, field: str = "date") -> datetime:
    """Return a time given by a person (file or request) as parse_time does, within the range.

    Only input is range-checked: a stored window may end up just outside it after
    truncation, and must still read back.
    """
    moment = parse_time(value, field)
    if not MIN_TIME <= moment < MAX_TIME:
        raise ValueError(f"{field} must be from {MIN_TIME.date()} to before {MAX_TIME.date()}, not {value!r}")
    return moment


def format_time(moment: datetime, tz=UTC) -> str:
    """Return moment as ISO-8601 with an explicit offset, in zone tz."""
    return moment.astimezone(tz).isoformat()


# The last `now` rendered per zone, {tz: (moment, text)}: every change in one second of
# Redis' clock renders the same batch_start, to_date, batch_end and event time.
_NOW_TEXTS: dict = {}


def format_now(moment: datetime, tz=UTC) -> str:
    """Return format_time(moment, tz) for the moment of a change, rendered once per second and zone.

    Threads share the memo: a tuple is replaced whole, and a reader checks its moment.
    """
    last = _NOW_TEXTS.get(tz)
    if last is not None and last[0] == moment:
        return last[1]
    text = format_time(moment, tz)
    _NOW_TEXTS[tz] = (moment, text)
    return text


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

    An operator's next_from_date (set or rewind) wins, exactly as given.
    After a success: the previous batch_start minus reprocess_hours. Otherwise (new,
    failed, or open and never closed) the same from_date again, so a failed or
    crashed window is extracted once more; a job never given one starts at
    BEGINNING_OF_TIME. With trunc_start, the result goes back to midnight in the
    job's timezone.
    """
    if job.get("next_from_date"):  # set or rewound by an operator: used exactly as given
        return parse_time(job["next_from_date"], "next_from_date")
    hours = check_reprocess_hours(job.get("reprocess_hours") or 0)
    if job.get("status") == SUCCESS and job.get("batch_start"):
        start = parse_time(job["batch_start"], "batch_start") - _hours(hours)
    elif job.get("from_date"):
        start = parse_time(job["from_date"], "from_date")
    else:
        start = BEGINNING_OF_TIME
    if job.get("trunc_start"):
        start = start_of_day(start, job_zone(job))
    return start


@lru_cache(maxsize=256)
def _hours(hours: float) -> timedelta:
    return timedelta(hours=hours)


def open_jobs(jobs: dict[str, dict], now: datetime, batch_id: int) -> dict[str, dict]:
    """Return every job opened for batch batch_id at now, with its new window."""
    opened = {}
    for name, job in jobs.items():
        tz = job_zone(job)
        start = format_now(now, tz)
        new = dict(job)
        new.pop("next_from_date", None)  # consumed by this open
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


def snapshot(job: dict) -> dict:
    """Return what a batch snapshot keeps of a job."""
    return {key: job[key] for key in SNAPSHOT_FIELDS if job.get(key) is not None}


def abandoned_jobs(jobs: dict[str, dict], new_batch_id: int) -> dict[int, dict[str, dict]]:
    """Return {old_batch_id: {job: snapshot}} for jobs still open that a new batch supersedes."""
    superseded: dict[int, dict[str, dict]] = {}
    for name, job in jobs.items():
        if job.get("status") == OPEN and job.get("batch_id") is not None:
            old = dict(job, status=ABANDONED, message=f"superseded by batch {new_batch_id}")
            superseded.setdefault(int(job["batch_id"]), {})[name] = snapshot(old)
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
        new.update(status=outcome, batch_end=format_now(now, job_zone(current)))
        if records_processed is not None:
            new["records_processed"] = records_processed
        if message is not None:
            new["message"] = message
        closed[name] = new
    return closed


def success_marks(closed: dict[str, dict]) -> dict[str, dict]:
    """Return {job: {batch_id, start, end}} for the jobs that just succeeded."""
    return {
        name: {"batch_id": job.get("batch_id"), "start": job.get("batch_start"), "end": job.get("batch_end")}
        for name, job in closed.items()
        if job.get("status") == SUCCESS
    }


def set_next_from_date(
    wf: str, jobs: dict[str, dict], targets: dict[str, datetime], *, force: bool = False
) -> dict[str, dict]:
    """Return the jobs with the from_date their next batch must use, {job: moment}.

    Refused (BatchOpen) while a target job's batch is open, unless force: the running
    ETL was handed its window already and would close over the change.
    """
    busy = [name for name in targets if jobs[name].get("status") == OPEN]
    if busy and not force:
        batch_id = jobs[busy[0]].get("batch_id")
        raise BatchOpen(
            f"batch {batch_id} of {wf!r} is open (jobs: {', '.join(busy)}); close or fail it first, "
            "or pass force=true",
            workflow=wf,
            batch_id=batch_id,
        )
    changed = {}
    for name, moment in targets.items():
        job = jobs[name]
        new = dict(job, next_from_date=format_time(moment, job_zone(job)))
        if job.get("status") == NEW:
            new["from_date"] = new["next_from_date"]
        changed[name] = new
    return changed


def batch_status(jobs: dict[str, dict]) -> str:
    """Return one status for a batch snapshot: open, failed, abandoned, success or new."""
    statuses = {job.get("status") for job in jobs.values()}
    for status in (OPEN, FAILED, ABANDONED, SUCCESS):
        if status in statuses:
            return status
    return NEW


def summarize_batch(batch_id: int, jobs: dict[str, dict]) -> dict:
    """Return a history entry: the batch's status, window, times, duration and counts per job."""
    starts = [parse_time(j["batch_start"]) for j in jobs.values() if j.get("batch_start")]
    ends = [parse_time(j["batch_end"]) for j in jobs.values() if j.get("batch_end")]
    started = min(starts) if starts else None
    ended = max(ends) if ends and len(ends) == len(jobs) else None
    records = [j["records_processed"] for j in jobs.values() if isinstance(j.get("records_processed"), int)]
    per_job = {}
    for name, job in jobs.items():
        start, end = job.get("batch_start"), job.get("batch_end")
        per_job[name] = {
            "status": job.get("status"),
            "from_date": job.get("from_date"),
            "to_date": job.get("to_date"),
            "batch_start": start,
            "batch_end": end,
            "duration_seconds": (parse_time(end) - parse_time(start)).total_seconds() if start and end else None,
            "records_processed": job.get("records_processed"),
            "message": job.get("message"),
        }
    return {
        "batch_id": batch_id,
        "status": batch_status(jobs),
        "batch_start": format_time(started) if started else None,
        "batch_end": format_time(ended) if ended else None,
        "duration_seconds": (ended - started).total_seconds() if started and ended else None,
        "records_processed": sum(records) if records else None,
        "jobs": per_job,
    }


def lease_expired(jobs: dict[str, dict], now: datetime, lease_hours: float | None) -> bool:
    """Return True if the open batch among jobs started more than lease_hours before now."""
    if lease_hours is None:
        return False
    starts = [parse_time(j["batch_start"]) for j in jobs.values() if j.get("status") == OPEN and j.get("batch_start")]
    return bool(starts) and now - min(starts) > timedelta(hours=lease_hours)


def check_exclusive(wf: str, jobs: dict[str, dict], now: datetime, settings: dict, current: int | None) -> None:
    """Refuse (BatchOpen) a new batch of an exclusive workflow while its open batch's lease runs."""
    if not settings.get("exclusive"):
        return
    if not any(j.get("status") == OPEN for j in jobs.values()):
        return
    lease = settings.get("lease_hours")
    if lease_expired(jobs, now, lease):
        return  # the old batch is abandoned and its window rerun
    raise BatchOpen(
        f"workflow {wf!r} is exclusive and batch {current} is still open"
        + (f" (lease {lease} h not expired)" if lease else "")
        + "; close or fail it first",
        workflow=wf,
        batch_id=current,
    )
