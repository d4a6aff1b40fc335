"""What a stored job is: its statuses and the fields Batchy maintains in it.

A job is the JSON object stored in one field of the workflow hash; a workflow's state
is {job_name: job}. Everything else in a job is a free-form parameter.
"""
from __future__ import annotations

import functools
import json
from datetime import datetime
from enum import Enum

import orjson

from ..errors import CorruptState

from . import fields
from .times import STORED_MIN_TIME, format_time, parse_input_time, parse_time


class Status(str, Enum):
    """A job's status; equal to its text, so stored JSON compares with it directly."""

    NEW = "new"
    OPEN = "open"
    SUCCESS = "success"
    FAILED = "failed"
    ABANDONED = "abandoned"  # only in a batch snapshot: a newer batch superseded it

    __str__ = str.__str__  # "open", not "Status.OPEN", in messages and templates
    __format__ = str.__format__


# A job in the workflow hash is in one of these.
STATUSES = (Status.NEW, Status.OPEN, Status.SUCCESS, Status.FAILED)
# A batch snapshot may also say a batch was superseded.
BATCH_STATUSES = STATUSES + (Status.ABANDONED,)
# A job's line in a batch snapshot that says one of these is history: nothing rewrites it.
FINAL_STATUSES = (Status.SUCCESS, Status.FAILED, Status.ABANDONED)

DATE_FIELDS = ("from_date", "to_date", "batch_start", "batch_end", "next_from_date")
# What a batch snapshot <wf>-<batch_id> keeps of each job: the run's outcome and window.
# Its parameters live in the workflow hash; nulls are left out (a 3-step snapshot
# stays under 1 KB of Redis memory however history grows). The batch id is in the key.
SNAPSHOT_FIELDS = ("status", "from_date", "to_date", "batch_start", "batch_end", "records_processed", "records_scope",
                   "message", "checksum", "dq", "dq_message")
# records_scope "batch": records_processed is the whole batch's count, given to a
# whole-workflow close and kept on each of its jobs; history counts it once.
BATCH_SCOPE = "batch"


def snapshot(job: dict) -> dict:
    """Return what a batch snapshot keeps of a job."""
    kept = {}
    for key in SNAPSHOT_FIELDS:  # a loop, not a comprehension: ~15 % less per call (every job of every change)
        if key in job:
            value = job[key]
            if value is not None:
                kept[key] = value
    return kept


def running_batches(jobs, changed: dict[str, dict], replace: bool = False) -> list[int]:
    """Return the batches some job still runs (status open) once changed is written over jobs
    (over nothing, with replace): history retention keeps their records until they end."""
    found = {job.get("batch_id") for job in changed.values() if job.get("status") == Status.OPEN}
    if not replace and not changed.keys() >= jobs.keys():  # an open of every job: nothing else runs
        found.update(job.get("batch_id") for name, job in jobs.items()
                     if job.get("status") == Status.OPEN and name not in changed)
    found.discard(None)
    return sorted(found)


def batch_status(jobs: dict[str, dict]) -> str:
    """Return one status for a batch snapshot: open, failed, abandoned, success or new."""
    statuses = {job.get("status") for job in jobs.values()}
    for status in (Status.OPEN, Status.FAILED, Status.ABANDONED, Status.SUCCESS):
        if status in statuses:
            return status
    return Status.NEW


def summarize_batch(batch_id: int, jobs: dict[str, dict]) -> dict:
    """Return a history entry: the batch's status, window, times, duration and counts per job."""
    starts = [parse_time(j["batch_start"]) for j in jobs.values() if j.get("batch_start")]
    ends = [parse_time(j["batch_end"]) for j in jobs.values() if j.get("batch_end")]
    started = min(starts) if starts else None
    ended = max(ends) if ends and len(ends) == len(jobs) else None
    records = [j["records_processed"] for j in jobs.values()
               if isinstance(j.get("records_processed"), int) and j.get("records_scope") != BATCH_SCOPE]
    # A whole-workflow close's count is on each job it closed (one per batch): count it once.
    batch_counts = [j["records_processed"] for j in jobs.values()
                    if isinstance(j.get("records_processed"), int) and j.get("records_scope") == BATCH_SCOPE]
    if batch_counts:
        records.append(max(batch_counts))
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
            # "batch": that number is the whole batch's (a whole-workflow close), not this job's own
            "records_scope": job.get("records_scope"),
            "message": job.get("message"),
            **{said: job[said] for said in ("checksum", "dq", "dq_message") if job.get(said) is not None},
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


def stored_problem(job, statuses=STATUSES) -> str | None:
    """Return what is wrong with a job as read from Redis, or None if Batchy can use it.

    Only the fields Batchy reads are checked; parameters are free-form.
    """
    if not isinstance(job, dict):
        return f"is not a JSON object but {type(job).__name__}"
    status = job.get("status", Status.NEW)
    if status not in statuses:
        return f"has status {status!r}, not one of {', '.join(statuses)}"
    for field in DATE_FIELDS:
        value = job.get(field)
        if value is not None:
            try:  # within what Batchy writes: no window is made from year 1
                parse_input_time(value, field, STORED_MIN_TIME)
            except ValueError as exc:
                return f"has an unreadable {field}: {exc}"
    for field in ("batch_id", "records_processed"):
        value = job.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            return f"has {field} {value!r}, not a whole number"
    # reprocess_hours, timezone, a window policy: read by every window, the dashboard, /metrics
    # and /late, each checked as a load checks it (fields.py)
    return fields.stored_problem(job, fields.STORED_JOB_CHECKS)


MARK_FIELDS = frozenset(("batch_id", "start", "end"))


def readable_mark(mark, earliest: datetime | None = None) -> bool:
    """Return True for a job's last success as a close records it: {batch_id, start, end}, each may be
    null; with earliest, its times from earliest to before times.MAX_TIME (an import's check)."""
    if not isinstance(mark, dict) or not mark.keys() <= MARK_FIELDS:
        return False
    batch_id = mark.get("batch_id")
    if batch_id is not None and batch_id.__class__ is not int:
        return False
    try:
        for key in ("start", "end"):
            if mark.get(key) is not None:
                parse_time(mark[key], key) if earliest is None else parse_input_time(mark[key], key, earliest)
    except ValueError:
        return False
    return True


def decode(raw: dict[str, str], wf: str = "", key: str = "", *, snapshot: bool = False,
           lenient: bool = False, shared: bool = False) -> dict[str, dict]:
    """Return a workflow or snapshot hash as {job: {...}}, jobs in name order.

    Redis keeps no field order in a large hash; name order makes every answer stable.
    A job Batchy cannot use (a hand edit gone wrong) is CorruptState naming it, or,
    when lenient, left out (a reset replaces it; a search across workflows goes on).
    shared: the jobs may be the same objects as for an earlier read of the same text
    (decoded and checked once: the plans, which never change a job in place).
    """
    statuses = BATCH_STATUSES if snapshot else STATUSES
    jobs = {}
    for name in sorted(raw):
        job, problem = _decoded(raw[name], statuses) if shared else _decode_one(raw[name], statuses)
        if problem is None:
            jobs[name] = job
        elif not lenient:
            raise CorruptState.of_job(wf, name, problem, key)
    return jobs


def _decode_one(text: str, statuses) -> tuple[dict | None, str | None]:
    try:
        job = json.loads(text)
    except ValueError as exc:
        return None, f"is not valid JSON ({exc})"
    return job, stored_problem(job, statuses)


# A workflow's jobs are read again after every change another process made, most of them
# unchanged: each text is decoded and checked once.
_decoded = functools.lru_cache(maxsize=4096)(_decode_one)


@functools.lru_cache(maxsize=4096)
def _is_object(text: str) -> bool:
    try:
        return isinstance(orjson.loads(text), dict)
    except orjson.JSONDecodeError:
        return False


def check_raw(wf: str, raw: dict[str, str]) -> dict[str, str]:
    """Return raw if every job in it is a JSON object, else CorruptState (answers stay valid JSON)."""
    for name, text in raw.items():
        if not _is_object(text):
            raise CorruptState.of_job(wf, name, "is not a JSON object")
    return raw
