"""Which OpenLineage runs a state change starts or ends, as values. Pure.

Each job's window in a batch is one run of the OpenLineage job `<wf>.<job>`: an open starts
it, a close completes it, a fail fails it, and a batch superseded, reset, replaced or
removed before it closed aborts it. Each backfill chunk attempt is a run of the same job,
its parent the backfill (a run of `<wf>.backfill`). A run's id is derived from what names
it, so every retry and every duplicate delivery carries the same id.

The runs are recorded with the change itself (in its audit event, storage/commit.py), and
storage/lineage.py turns each into an OpenLineage RunEvent with the openlineage client.
"""
from __future__ import annotations

import json
import uuid

from .jobs import Status
from .state import SNAPSHOT_UPDATE, Change, State

START, COMPLETE, FAIL, ABORT = "START", "COMPLETE", "FAIL", "ABORT"

# The chunk events of a backfill's stream (storage/backfill_lua.py) and the state each ends in.
CHUNK_STATES = {"backfill_lease": START, "backfill_close": COMPLETE, "backfill_fail": FAIL,
                "backfill_expire": ABORT}
MAX_MESSAGE = 2000


def job_name(wf: str, job: str) -> str:
    """Return the OpenLineage job name of a Batchy job."""
    return f"{wf}.{job}"


def backfill_job_name(wf: str) -> str:
    """Return the OpenLineage job name the backfills of wf run as (a chunk's parent)."""
    return f"{wf}.backfill"


def batch_run_id(namespace: str, wf: str, batch_id, job: str) -> str:
    """Return the run id of job's window in batch batch_id: the same for its start and its end."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"batchy:{namespace}/{wf}/batch/{batch_id}/{job}"))


def backfill_run_id(namespace: str, wf: str, backfill_id) -> str:
    """Return the run id of a backfill (the parent of its chunks' runs)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"batchy:{namespace}/{wf}/backfill/{backfill_id}"))


def chunk_run_id(namespace: str, wf: str, backfill_id, chunk, attempt) -> str:
    """Return the run id of one attempt at one chunk of a backfill."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL,
                          f"batchy:{namespace}/{wf}/backfill/{backfill_id}/chunk/{chunk}/attempt/{attempt}"))


def _run(job: str, batch_id, state: str, window: dict, message=None) -> dict:
    run = {"job": job, "batch_id": int(batch_id), "state": state,
           "from": window.get("from_date"), "to": window.get("to_date")}
    if message:
        run["message"] = str(message)[:MAX_MESSAGE]
    return run


def runs(state: State, change: Change) -> list[dict]:
    """Return the runs change starts or ends: [{job, batch_id, state, from, to, message?}]."""
    found = []
    # Runs aborted first: an open that supersedes a job's older batch ends that run, then starts its own.
    for write in change.snapshots:
        if write.mode != SNAPSHOT_UPDATE:  # an import's history: runs that ended elsewhere, long ago
            continue
        for name, job in write.jobs.items():
            if job.get("status") == Status.ABANDONED:
                found.append(_run(name, write.batch_id, ABORT, job, job.get("message")))
    for name in sorted(change.writes):
        job = change.writes[name]
        if job.get("batch_id") is None:
            continue
        if change.action == "open" and job.get("status") == Status.OPEN:
            found.append(_run(name, job["batch_id"], START, job))
        elif change.action in ("close", "fail") and job.get("status") == Status.SUCCESS:
            found.append(_run(name, job["batch_id"], COMPLETE, job))
        elif change.action in ("close", "fail") and job.get("status") == Status.FAILED:
            found.append(_run(name, job["batch_id"], FAIL, job, job.get("message") or "failed"))
    return found


def chunk_run(fields: dict) -> dict | None:
    """Return the run a backfill's chunk event starts or ends, or None (not a chunk attempt's event).

    fields: the event as stored in the backfill's stream; a lease after the previous attempt's
    lease ran out also aborts that attempt ("aborts").
    """
    state = CHUNK_STATES.get(fields.get("action"))
    if state is None or not fields.get("chunk") or not fields.get("attempt"):
        return None
    try:
        [job] = json.loads(fields.get("jobs") or "[]")
        attempt = int(fields["attempt"])
    except (ValueError, TypeError):
        return None
    run = {"job": job, "backfill_id": fields.get("backfill_id"), "chunk": fields["chunk"], "attempt": attempt,
           "state": state, "from": fields.get("from_date") or None, "to": fields.get("to_date") or None}
    if state in (FAIL, ABORT) and fields.get("message"):
        run["message"] = fields["message"][:MAX_MESSAGE]
    if state == START and fields.get("expired") == "1" and attempt > 1:
        run["aborts"] = attempt - 1
    return run
