"""The watermark rules: which window a job's next batch extracts, and how a batch ends.

Pure functions over plain dicts: no Redis, no Flask. A job is the JSON object stored
in one field of the workflow hash; a workflow's state is {job_name: job}.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from functools import lru_cache

from ..errors import BatchOpen, FutureWindow, InvalidParameter, JobNotFound, NotOpen, StaleBatch
from . import fields, windows
from .jobs import BATCH_SCOPE, Status, snapshot
from .times import UTC, format_now, format_time, job_zone, parse_time, start_of_day

_check_hours = fields.BY_NAME["reprocess_hours"].check
# from_date of a job that was never given one: extract everything.
BEGINNING_OF_TIME = datetime(1970, 1, 1, tzinfo=UTC)


def next_from_date(job: dict) -> datetime:
    """Return the from_date the job's next batch must extract from.

    An operator's next_from_date (set or rewind) wins, exactly as given.
    After a success: the previous to_date minus reprocess_hours (to_date is the open's
    batch_start unless a window policy ended the window earlier: windows.py). Otherwise (new,
    failed, or open and never closed) the same from_date again, so a failed or
    crashed window is extracted once more; a job never given one starts at
    BEGINNING_OF_TIME. With trunc_start, the result goes back to midnight in the
    job's timezone.
    """
    if job.get("next_from_date"):  # set or rewound by an operator: used exactly as given
        return parse_time(job["next_from_date"], "next_from_date")
    hours = _check_hours(job.get("reprocess_hours") or 0)
    ended = job.get("to_date") or job.get("batch_start")
    if job.get("status") == Status.SUCCESS and ended:
        start = parse_time(ended, "to_date") - _hours(hours)
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


def open_jobs(jobs: dict[str, dict], now: datetime, batch_id: int, wf: str = "",
              settings: dict | None = None) -> dict[str, dict]:
    """Return every job opened for batch batch_id at now, with its new window.

    The window is [next_from_date, now), or where the job's window policy ends it
    (windows.window), with caught_up and behind_seconds then.

    A window never runs backwards: a from_date later than now (stored before such
    values were refused) is FutureWindow, not a window that skips data once closed.
    """
    opened = {}
    policy_settings = {k: v for k, v in (settings or {}).items() if k in windows.POLICY_FIELDS}
    for name, job in jobs.items():
        tz = job_zone(job)
        start = format_now(now, tz)
        begin = next_from_date(job)
        if begin > now:
            raise FutureWindow(
                f"job {name!r} of {wf!r} would extract from {format_time(begin, tz)}, later than now "
                f"({start}); set its from_date with set_from_date/{wf}?job={name}&from_date=...",
                workflow=wf, job=name,
            )
        new = dict(job)
        for said in _SAID_OF_LAST.intersection(job):  # most jobs hold none of them
            del new[said]
        policy = windows.policy_of(job, policy_settings)
        to_date = start
        if policy.active:
            span = windows.window(begin, now, policy, tz)
            to_date = format_time(span.end, tz)
            new.update(caught_up=span.caught_up, behind_seconds=span.behind_seconds)
        new.update(
            status=Status.OPEN,
            batch_id=batch_id,
            from_date=format_time(begin, tz),
            to_date=to_date,
            batch_start=start,
            batch_end=None,
            records_processed=None,
            message=None,
        )
        opened[name] = new
    return opened


def future_problem(moment: datetime, now: datetime, what: str) -> str | None:
    """Return why moment may not be a from_date at now (Redis' clock), or None.

    A from_date in the future makes a backwards window, and once that closes, a gap
    from the old watermark to now.
    """
    if moment <= now:
        return None
    return (f"{what} {format_time(moment)} is later than now ({format_time(now)}): a from_date in the "
            "future would skip the data between the current watermark and now")


def abandoned_jobs(jobs: dict[str, dict], new_batch_id: int | None, reason: str = "") -> dict[int, dict[str, dict]]:
    """Return {old_batch_id: {job: snapshot}} for jobs still open that a new batch (or reason) supersedes."""
    superseded: dict[int, dict[str, dict]] = {}
    message = reason or f"superseded by batch {new_batch_id}"
    for name, job in jobs.items():
        if job.get("status") == Status.OPEN and job.get("batch_id") is not None:
            old = dict(job, status=Status.ABANDONED, message=message)
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
    attested: dict | None = None,
) -> dict[str, dict]:
    """Return the jobs that close (outcome success) or fail (outcome failed) now.

    Only open jobs change; closing nothing open is NotOpen, naming the states found.
    batch_id, when given, names the batch to end: the jobs that run in it (a named job
    must, else StaleBatch: a newer batch of it was opened since). Then a repeated call
    whose jobs already ended with this outcome changes nothing and returns {} (a retry
    after a lost answer), instead of NotOpen. Without batch_id: every open job (or the
    one named), whatever batch it runs in.
    """
    assert outcome in (Status.SUCCESS, Status.FAILED)
    if job is not None and job not in jobs:
        raise JobNotFound(f"workflow {wf!r} has no job {job!r}", workflow=wf, job=job)
    targets = [job] if job is not None else list(jobs)
    if batch_id is not None:
        targets = [name for name in targets if jobs[name].get("batch_id") == batch_id]
        if not targets:
            newest = jobs[job].get("batch_id") if job is not None else current_batch_id
            raise StaleBatch(
                f"batch {batch_id} of {wf!r} is not the current batch of "
                f"{'job ' + repr(job) if job is not None else 'any job'} (current: {newest}); "
                "another run opened a newer batch",
                workflow=wf,
                batch_id=batch_id,
                current_batch_id=newest,
            )
    open_targets = [name for name in targets if jobs[name].get("status") == Status.OPEN]
    if not open_targets and batch_id is not None and already_closed(jobs, targets, batch_id, outcome):
        return {}
    if not open_targets:
        states = ", ".join(f"{name}={jobs[name].get('status')}" for name in targets)
        what = f"job {job!r} of {wf!r} is not open" if job is not None else f"{wf!r} has no open job"
        raise NotOpen(
            f"{what} (status: {states}); open a batch first",
            workflow=wf,
            job=job,
            states={name: jobs[name].get("status") for name in targets},
        )
    if records_processed is not None and job is None and \
            len({jobs[name].get("batch_id") for name in open_targets}) > 1:
        raise InvalidParameter(
            f"the open jobs of {wf!r} run in several batches (jobs on their own schedule): one records_processed "
            "cannot be each batch's count; close each with job= or batch_id=", parameter="records_processed",
            workflow=wf)
    closed = {}
    for name in open_targets:
        current = jobs[name]
        new = dict(current)
        new.update(status=outcome, batch_end=format_now(now, job_zone(current)))
        if records_processed is not None:
            new["records_processed"] = records_processed
            # One count for a whole workflow: the batch's, kept on each job and counted once.
            if job is None and len(open_targets) > 1:
                new["records_scope"] = BATCH_SCOPE
            else:
                new.pop("records_scope", None)
        if message is not None:
            new["message"] = message
        if outcome == Status.SUCCESS and attested:
            new.update({k: v for k, v in attested.items() if v is not None})
        closed[name] = new
    return closed


ATTESTED = ("checksum", "dq", "dq_message")  # what a successful close may say of the data it loaded
# What a job says of its last window only, gone once it opens the next: the operator's next_from_date
# (consumed by the open), a whole-batch count's scope, a policy's verdict on it, and its attestation.
_SAID_OF_LAST = frozenset(("next_from_date", "records_scope", "caught_up", "behind_seconds") + ATTESTED)
DQ_VERDICTS = ("pass", "fail")
MAX_CHECKSUM = 128


def attestation(checksum: str | None, dq: str | None, dq_message: str | None) -> dict:
    """Return a close's checksum and quality verdict, checked; ValueError naming the parameter otherwise."""
    if checksum is not None and (not isinstance(checksum, str) or len(checksum) > MAX_CHECKSUM):
        raise ValueError(f"checksum must be text of at most {MAX_CHECKSUM} characters")
    if dq is not None and dq not in DQ_VERDICTS:
        raise ValueError(f"dq must be pass or fail, not {str(dq)[:40]!r}")
    if dq_message is not None and dq is None:
        raise ValueError("dq_message needs dq: the verdict it explains")
    return {"checksum": checksum, "dq": dq, "dq_message": dq_message}


def already_closed(jobs: dict[str, dict], targets: list[str], batch_id: int, outcome: str) -> bool:
    """Return True if the targets that ran in batch batch_id all ended with outcome."""
    ran = [jobs[name] for name in targets if jobs[name].get("batch_id") == batch_id]
    return bool(ran) and all(job.get("status") == outcome for job in ran)


def success_marks(closed: dict[str, dict]) -> dict[str, dict]:
    """Return {job: {batch_id, start, end}} for the jobs that just succeeded."""
    return {
        name: {"batch_id": job.get("batch_id"), "start": job.get("batch_start"), "end": job.get("batch_end")}
        for name, job in closed.items()
        if job.get("status") == Status.SUCCESS
    }


def set_next_from_date(
    wf: str, jobs: dict[str, dict], targets: dict[str, datetime], *, force: bool = False
) -> dict[str, dict]:
    """Return the jobs with the from_date their next batch must use, {job: moment}.

    Refused (BatchOpen) while a target job's batch is open, unless force: the running
    ETL was handed its window already and would close over the change.
    """
    busy = [name for name in targets if jobs[name].get("status") == Status.OPEN]
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
        if job.get("status") == Status.NEW:
            new["from_date"] = new["next_from_date"]
        changed[name] = new
    return changed


def lease_expired(jobs: dict[str, dict], now: datetime, lease_hours: float | None) -> bool:
    """Return True if every open job among jobs started its batch more than lease_hours before now
    (jobs on their own schedule each hold a lease: the newest one decides)."""
    if lease_hours is None:
        return False
    starts = [parse_time(j["batch_start"]) for j in jobs.values() if j.get("status") == Status.OPEN and j.get("batch_start")]
    return bool(starts) and now - max(starts) > timedelta(hours=lease_hours)


def check_exclusive(wf: str, jobs: dict[str, dict], now: datetime, settings: dict, current: int | None) -> None:
    """Refuse (BatchOpen) a new batch of an exclusive workflow's jobs while one of them is open
    and its batch's lease runs (jobs: those the open would open; the lease is per job)."""
    if not settings.get("exclusive"):
        return
    if not any(j.get("status") == Status.OPEN for j in jobs.values()):
        return
    lease = settings.get("lease_hours")
    if lease_expired(jobs, now, lease):
        return  # the old batch is abandoned and its window rerun
    running = sorted({j.get("batch_id") for j in jobs.values() if j.get("status") == Status.OPEN} - {None})
    current = running[-1] if running else current
    raise BatchOpen(
        f"workflow {wf!r} is exclusive and batch {current} is still open"
        + (f" (lease {lease} h not expired)" if lease else "")
        + "; close or fail it first",
        workflow=wf,
        batch_id=current,
    )
