"""Backfills, pure: a past range cut into chunks, and how a chunk moves through its states.

A backfill reloads [from, to) of some jobs without touching the workflow's watermark.
Each job's range is tiled with chunks, with no gap and no overlap: whole batch_size
units in the job's timezone (the first and the last may be partial when from or to is
not on a boundary), or chunk_hours each. Workers lease chunks, run them, and close or
fail them. A chunk's states:

    pending --lease--> leased --close--> success
                         |----renew---> leased, its lease ending later (a heartbeat)
                         |   (renew, close and fail must carry the lease's lease_token)
                         |----fail----> pending again (same window), or failed once
                         |              max_attempts are used (cancelled after a cancel)
                         '--its lease expires--> leased again by the next lease (attempt + 1),
                                                 or failed once max_attempts are used
    pending --cancel--> cancelled

The Lua scripts (storage/backfill_lua.py, BACKFILL_*) apply these transitions atomically in Redis;
lease() and finish() below are the same rules in Python, which the tests hold the
scripts to. No Redis and no Flask here.
"""
from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from enum import Enum

from . import windows
from ..errors import InvalidParameter, JobNotFound
from .times import UTC, format_time, in_zone, job_zone

MAX_CHUNKS = 10_000  # per backfill, every job together
DEFAULT_MAX_ATTEMPTS = 3
MAX_ATTEMPTS = 100
DEFAULT_LEASE_SECONDS = 3600
MAX_LEASE_SECONDS = 30 * 24 * 3600
DEFAULT_UNIT = "day"  # for a job without a batch_size of its own, when neither step is given
# Past one boundary of a unit and short of the one after, whatever length the unit has
# (an hour 60 or, across Lord Howe's 30-minute DST change, 90 minutes; a day 23 to 25 hours,
# a month 28 to 31 days): floor_to_unit(boundary + this)
# is the next boundary.
_PAST_NEXT = {"hour": timedelta(minutes=90), "day": timedelta(hours=36), "week": timedelta(days=10, hours=12),
              "month": timedelta(days=45)}


class ChunkStatus(str, Enum):
    PENDING = "pending"
    LEASED = "leased"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"

    __str__ = str.__str__
    __format__ = str.__format__


CHUNK_STATUSES = tuple(ChunkStatus)
FINAL = (ChunkStatus.SUCCESS, ChunkStatus.FAILED, ChunkStatus.CANCELLED)
RUNNING, CANCELLED = "running", "cancelled"  # a backfill's own status, as stored


# -- chunking ---------------------------------------------------------------------------

def tile(start: datetime, end: datetime, tz, *, batch_size: str | None = None, chunk_hours: float | None = None,
         week_start: str = "monday", limit: int = MAX_CHUNKS) -> list[tuple[datetime, datetime]]:
    """Return [start, end) cut into consecutive windows: on batch_size boundaries in tz, or chunk_hours long.

    ValueError when that makes more than limit windows.
    """
    if chunk_hours is not None:
        step = timedelta(hours=chunk_hours)
        if math.ceil((end - start) / step) > limit:
            raise ValueError("too many")
    spans: list[tuple[datetime, datetime]] = []
    cursor = start
    while cursor < end:
        if len(spans) == limit:
            raise ValueError("too many")
        if chunk_hours is not None:
            following = cursor + step
        else:
            boundary = windows.floor_to_unit(cursor, batch_size, tz, week_start)
            following = windows.floor_to_unit(boundary + _PAST_NEXT[batch_size], batch_size, tz, week_start)
        following = min(following, end)
        spans.append((cursor, following))
        cursor = following
    return spans


def plan(wf: str, jobs: dict[str, dict], settings: dict, start: datetime, end: datetime, now: datetime, *,
         names: list[str] | None = None, batch_size: str | None = None, chunk_hours: float | None = None,
         limit: int = MAX_CHUNKS) -> list[dict]:
    """Return the chunks of a backfill of jobs (names, default all): each job's [start, end) tiled.

    A time without an offset (naive) is a wall time in each job's own timezone. Without
    batch_size or chunk_hours, each job's own batch_size (its window policy) is used, else
    a day. Chunks come job by job, each job's in time order; each is stored as returned.
    """
    if batch_size is not None and chunk_hours is not None:
        raise InvalidParameter("give batch_size or chunk_hours, not both", parameter="chunk_hours")
    if batch_size is not None and batch_size not in windows.UNITS:
        raise InvalidParameter(f"batch_size must be one of {', '.join(windows.UNITS)}, not {str(batch_size)[:40]!r}",
                               parameter="batch_size")
    if chunk_hours is not None and not (math.isfinite(chunk_hours) and chunk_hours * 3600 >= 1):
        raise InvalidParameter(f"chunk_hours must be a number of hours of at least one second, not {chunk_hours!r}",
                               parameter="chunk_hours")
    if names is not None and not names:
        raise InvalidParameter("job names no job: leave it out for every job", parameter="job")
    for name in names or ():
        if name not in jobs:
            raise JobNotFound(f"workflow {wf!r} has no job {name!r}", workflow=wf, job=name)
    chunks: list[dict] = []
    for name in names or list(jobs):
        job = jobs[name]
        tz = job_zone(job)
        begin, finish = in_zone(start, tz), in_zone(end, tz)
        if finish <= begin:
            raise InvalidParameter(f"to ({format_time(finish, tz)}) must be later than from ({format_time(begin, tz)})",
                                   parameter="to", workflow=wf, job=name)
        if finish > now:
            raise InvalidParameter(f"to ({format_time(finish, tz)}) is later than now ({format_time(now, tz)}): "
                                   "a backfill reloads the past only", parameter="to", workflow=wf, job=name)
        policy = windows.policy_of(job, settings)
        unit = None if chunk_hours is not None else batch_size or policy.batch_size or DEFAULT_UNIT
        try:
            spans = tile(begin, finish, tz, batch_size=unit, chunk_hours=chunk_hours, week_start=policy.week_start,
                         limit=limit - len(chunks))
        except ValueError:
            step = f"chunk_hours {chunk_hours:g}" if chunk_hours is not None else f"batch_size {unit}"
            raise InvalidParameter(
                f"this backfill would have more than {limit:,} chunks ({step}): use a larger step, a shorter "
                "range or fewer jobs, or split it into several backfills",
                parameter="chunk_hours" if chunk_hours is not None else "batch_size", workflow=wf) from None
        chunks += [{"job": name, "from_date": format_time(low, tz), "to_date": format_time(high, tz),
                    "status": str(ChunkStatus.PENDING), "attempts": 0} for low, high in spans]
    return chunks


# -- the transitions (storage/backfill_lua.py: BACKFILL_LEASE, BACKFILL_FINISH and BACKFILL_CANCEL apply them) ---

def due(chunk: dict, now_ms: int) -> bool:
    """Return whether a lease at now_ms may take chunk: pending, or leased with its lease over."""
    return chunk["status"] == ChunkStatus.PENDING or (
        chunk["status"] == ChunkStatus.LEASED and chunk["lease_until"] <= now_ms)


def lease(chunk: dict, now_ms: int, lease_ms: int, max_attempts: int, cancelled: bool = False,
          token: str | None = None) -> tuple[dict, str]:
    """Return (chunk after a lease takes it at now_ms, "leased" or "expired").

    token (random, new for each lease) is kept with the attempt: only who holds it may
    renew, close or fail that attempt (fenced).

    "expired": a lease ran out on the chunk's last allowed attempt (or after a cancel),
    so it ends failed (or cancelled) instead, and the lease looks at the next chunk.
    """
    new = dict(chunk)
    new.pop("outcome", None)
    if chunk["status"] == ChunkStatus.LEASED and (cancelled or chunk["attempts"] >= max_attempts):
        new.pop("lease_until")
        new.update(status=str(ChunkStatus.CANCELLED if cancelled else ChunkStatus.FAILED),
                   outcome=str(ChunkStatus.FAILED))
        return new, "expired"
    new.update(status=str(ChunkStatus.LEASED), attempts=chunk["attempts"] + 1, lease_until=now_ms + lease_ms)
    if token is not None:
        new["lease_token"] = token
    return new, "leased"


def fenced(chunk: dict, attempt: int, token: str | None) -> bool:
    """Return whether a call naming the chunk's current attempt lacks the token its lease
    answered (a chunk leased before tokens existed has none, and takes any)."""
    return chunk["attempts"] == attempt and bool(chunk.get("lease_token")) and token != chunk["lease_token"]


def finish(chunk: dict, attempt: int, outcome: str, max_attempts: int, cancelled: bool = False,
           token: str | None = None) -> tuple[dict, str]:
    """Return (chunk after attempt ends with outcome "success" or "failed", what the call did).

    What it did: "applied"; "repeated" (this attempt ended so already: a retried call);
    "stale" (another attempt is the chunk's current one); "not_leased"; "wrong_token" (the
    current attempt, without its lease_token: nothing changes).
    """
    if fenced(chunk, attempt, token):
        return chunk, "wrong_token"
    if chunk["status"] != ChunkStatus.LEASED or chunk["attempts"] != attempt:
        if chunk["attempts"] == attempt and chunk.get("outcome") == outcome:
            return chunk, "repeated"
        return chunk, "stale" if chunk["attempts"] != attempt else "not_leased"
    new = dict(chunk, outcome=outcome)
    new.pop("lease_until", None)
    if outcome == ChunkStatus.SUCCESS:
        status = ChunkStatus.SUCCESS
    elif chunk["attempts"] >= max_attempts:
        status = ChunkStatus.FAILED
    else:
        status = ChunkStatus.CANCELLED if cancelled else ChunkStatus.PENDING
    new["status"] = str(status)
    return new, "applied"


def renew(chunk: dict, attempt: int, now_ms: int, lease_ms: int, token: str | None = None) -> tuple[dict, str]:
    """Return (chunk after its worker renews attempt's lease at now_ms, what the call did).

    What it did: "applied" (the lease now ends lease_ms from now, also when it had run out
    but nobody leased the chunk since); "stale" (another attempt holds the chunk);
    "wrong_token"; "not_leased".
    """
    if chunk["attempts"] != attempt:
        return chunk, "stale"
    if fenced(chunk, attempt, token):
        return chunk, "wrong_token"
    if chunk["status"] != ChunkStatus.LEASED:
        return chunk, "not_leased"
    return dict(chunk, lease_until=now_ms + lease_ms), "applied"


def cancel(chunk: dict) -> dict:
    """Return chunk after its backfill is cancelled: a pending chunk is cancelled; others go on."""
    return dict(chunk, status=str(ChunkStatus.CANCELLED)) if chunk["status"] == ChunkStatus.PENDING else chunk


# -- answers -----------------------------------------------------------------------------

def progress(counts: dict[str, int], total: int) -> dict:
    """Return a backfill's progress: chunks per status, and the fraction finished (done)."""
    finished = sum(counts.get(str(s), 0) for s in FINAL)
    return {"chunks": total, **{str(s): counts.get(str(s), 0) for s in CHUNK_STATUSES},
            "done": round(finished / total, 4) if total else 1.0}


def status_of(stored: str, counts: dict[str, int]) -> str:
    """Return a backfill's status: running while a chunk is pending or leased, then success or failed;
    cancelled once cancelled."""
    if stored == CANCELLED:
        return CANCELLED
    if counts.get(ChunkStatus.PENDING, 0) or counts.get(ChunkStatus.LEASED, 0):
        return RUNNING
    return str(ChunkStatus.FAILED if counts.get(ChunkStatus.FAILED, 0) else ChunkStatus.SUCCESS)


def summary(record: dict[str, str], counts: dict[str, int]) -> dict:
    """Return a backfill's description and progress from its stored hash (without its chunks)."""
    total = int(record.get("chunks") or 0)
    return {
        "backfill_id": int(record["backfill_id"]),
        "workflow": record["workflow"],
        "status": status_of(record.get("status", RUNNING), counts),
        "from": record.get("from"),
        "to": record.get("to"),
        "jobs": json.loads(record.get("jobs") or "[]"),
        "batch_size": record.get("batch_size") or None,
        "chunk_hours": float(record["chunk_hours"]) if record.get("chunk_hours") else None,
        "max_attempts": int(record.get("max_attempts") or DEFAULT_MAX_ATTEMPTS),
        "created": record.get("created"),
        "actor": record.get("actor", ""),
        "cancelled": record.get("cancelled") or None,
        "progress": progress(counts, total),
    }


def render_chunk(number: int, chunk: dict, tz=UTC) -> dict:
    """Return a stored chunk as an answer shows it; lease_until (epoch ms) in the job's zone tz."""
    lease_until = chunk.get("lease_until")
    if lease_until is not None:
        lease_until = format_time(datetime.fromtimestamp(lease_until / 1000, UTC), tz)
    return {
        "chunk": number,
        "job": chunk["job"],
        "from_date": chunk["from_date"],
        "to_date": chunk["to_date"],
        "status": chunk["status"],
        "attempts": chunk["attempts"],
        "lease_until": lease_until,
        "records_processed": chunk.get("records_processed"),
        "message": chunk.get("message"),
        **{said: chunk[said] for said in ("checksum", "dq", "dq_message") if chunk.get(said) is not None},
    }
