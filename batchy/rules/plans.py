"""Every state change, planned from a State of the workflow: pure, no Redis, no Flask.

A plan reads a State (state.py: one consistent read of the workflow and the Redis clock
second it was read at) and returns the Change, values only, that storage/commit.py
encodes and applies atomically, or raises a BatchyError. Every change carries its audit
event. Plans never change a job in place: the state may be shared with the cache.

Where each rule lives: the batch id in next_batch_id, the window of each job in
watermark.open_jobs (from_date = watermark.next_from_date, to_date = the open's
moment), the rewind target in rewind_targets, an imported batch's start in
snapshot_start, the audit event in audit_event.
"""
from __future__ import annotations

import functools
from datetime import datetime

from . import coverage, watermark, workflows
from ..errors import CorruptState, InvalidConfig, InvalidParameter, JobNotFound, WorkflowExists
from .jobs import BATCH_SCOPE, Status, snapshot
from .state import SNAPSHOT_NEW, SNAPSHOT_PUT, SNAPSHOT_UPDATE, Book, Change, SnapshotWrite, State
from .times import format_now, in_zone, job_zone, parse_time


def next_batch_id(now: datetime, last_batch_id: int | None, floor: int = 0) -> int:
    """Return the id of a batch opened at now: its epoch second, unless taken.

    Ids strictly increase per workflow, so opens within one second take the next free
    numbers; floor skips past a snapshot key that exists already.
    """
    return max(int(now.timestamp()), (last_batch_id or 0) + 1, floor)


def audited(plan):
    """Attach the audit event to the change a plan returns (a repeated call has none)."""
    @functools.wraps(plan)
    def planned(state: State, *args, **kwargs) -> Change:
        change = plan(state, *args, **kwargs)
        if not change.noop:
            change.audit = audit_event(state, change)
        return change
    return planned


@audited
def plan_load(state: State, config: workflows.Config, *, reset: bool = False) -> Change:
    """Store config as the jobs; unless reset, jobs that have run keep their runtime state.

    A batch still open for a job that a reset or the file drops can never be closed:
    its snapshot ends as abandoned.
    """
    check_from_dates(state, config.jobs, InvalidConfig)
    jobs = dict(config.jobs) if reset else workflows.merge(state.jobs, config.jobs)
    if reset:
        dropped, reason = state.jobs, "abandoned by load_cfg?reset=true"
    else:
        dropped = {name: job for name, job in state.jobs.items() if name not in config.jobs}
        reason = "abandoned: the job was removed from the workflow file"
    book = Book(settings=config.settings)
    if reset:
        try:
            state.last_batch_id
        except CorruptState:  # repaired as well as can be: ids go on from the clock
            book.last_batch_id = int(state.now.timestamp())
    return Change(
        action="reset" if reset else "load",
        writes=jobs,
        replace=True,
        book=book,
        snapshots=[SnapshotWrite(old_id, SNAPSHOT_UPDATE, 0, snap)
                   for old_id, snap in watermark.abandoned_jobs(dropped, None, reason).items()],
    )


def check_from_dates(state: State, jobs: dict[str, dict], error=InvalidParameter) -> None:
    """Refuse jobs (a file or an import) whose from_date or next_from_date is later than now."""
    for name, job in jobs.items():
        for what in ("from_date", "next_from_date"):
            if job.get(what):
                problem = watermark.future_problem(parse_time(job[what], what), state.now, what)
                if problem:
                    raise error(f"job {name!r} of {state.wf!r}: {problem}", workflow=state.wf, job=name, field=what)


@audited
def plan_open(state: State, idempotency_key: str | None = None, jobs: list[str] | None = None) -> Change:
    """Open a new batch of every job, or of the jobs named (a job on its own schedule); a
    job it opens that is still open in an older batch is abandoned there. Other jobs, their
    open batches included, are left as they are."""
    selected = state.jobs if jobs is None else {  # every job: the state's own mapping, only read
        name: state.jobs[name] for name in target_jobs(state.wf, state.jobs, jobs)}
    watermark.check_exclusive(state.wf, selected, state.now, state.settings, state.last_batch_id)
    batch_id = next_batch_id(state.now, state.last_batch_id, state.floor)
    opened = watermark.open_jobs(selected, state.now, batch_id, state.wf, state.settings)
    snapshots = [SnapshotWrite(batch_id, SNAPSHOT_NEW, state.now.timestamp(),
                               {name: snapshot(job) for name, job in opened.items()})]
    for old_id, superseded in watermark.abandoned_jobs(selected, batch_id).items():
        snapshots.append(SnapshotWrite(old_id, SNAPSHOT_UPDATE, 0, superseded))
    return Change(
        action="open",
        writes=opened,
        book=Book(last_batch_id=batch_id),
        snapshots=snapshots,
        batch_id=batch_id,
        check_pause=True,
        idempotency_key=idempotency_key,
    )


@audited
def plan_close(
    state: State,
    outcome: str,
    *,
    job: str | None = None,
    batch_id: int | None = None,
    records_processed: int | None = None,
    message: str | None = None,
    attested: dict | None = None,
) -> Change:
    """Mark the open jobs (or one job) success or failed, here and in their batch snapshot.

    attested (watermark.attestation): the checksum and quality verdict of a success; a window
    closed with dq=fail moves the watermark but is not covered.
    """
    closed = watermark.close_jobs(
        state.wf,
        state.jobs,
        outcome,
        state.now,
        job=job,
        batch_id=batch_id,
        current_batch_id=state.last_batch_id,
        records_processed=records_processed,
        message=message,
        attested=attested,
    )
    if not closed:  # a retry of a close already applied: answer with the state as it is
        return Change(action="close" if outcome == Status.SUCCESS else "fail", noop=True,
                      batch_id=batch_id or state.last_batch_id)
    by_batch: dict[int, dict[str, dict]] = {}
    for name, new in closed.items():
        by_batch.setdefault(new["batch_id"], {})[name] = snapshot(new)
    marks = watermark.success_marks(closed)
    book = Book(marks=marks)
    for name in marks:
        if closed[name].get("from_date") and closed[name].get("to_date"):
            old = state.coverage(name, cached=True)
            book.put(name, covered(old, closed[name]), old)
    return Change(
        action="close" if outcome == Status.SUCCESS else "fail",
        writes=closed,
        book=book,
        snapshots=[SnapshotWrite(bid, SNAPSHOT_UPDATE, 0, snap) for bid, snap in by_batch.items()],
        # The batch it ends: the one named, else the one its jobs ran in (jobs on their own
        # schedule may be open in several), else the newest.
        batch_id=batch_id or (next(iter(by_batch)) if len(by_batch) == 1 else state.last_batch_id),
    )


def covered(old: coverage.Ledger, job: dict) -> coverage.Ledger:
    """Return a job's coverage old with the window of job (just succeeded) merged in."""
    records = job.get("records_processed") if job.get("records_scope") != BATCH_SCOPE else None
    return coverage.succeeded(old, _epoch(job["from_date"]), _epoch(job["to_date"]), job.get("dq") != "fail",
                              records, cleans=not (old.dirty and _invalidated_during(job)))


def _invalidated_during(job: dict) -> bool:
    """Return True if an invalidation came while the job's run was open (invalidated_in_batch)."""
    return job.get("invalidated_in_batch") is not None and job.get("invalidated_in_batch") == job.get("batch_id")


@functools.lru_cache(maxsize=4096)
def _epoch(text: str) -> float:
    """Return a stored time as epoch seconds (a window's ends recur: the next open's from_date)."""
    return parse_time(text).timestamp()


def target_jobs(wf: str, jobs: dict[str, dict], job: str | list[str] | None) -> list[str]:
    """Return the jobs a call names: one job, several (in name order), or every job when None."""
    if job is None:
        return list(jobs)
    named = [job] if isinstance(job, str) else list(job)
    for name in named:
        if name not in jobs:
            raise JobNotFound(f"workflow {wf!r} has no job {name!r}", workflow=wf, job=name)
    return sorted(set(named))


@audited
def plan_set_from_date(state: State, moment: datetime, *, job: str | None = None, force: bool = False) -> Change:
    """Make the next batch of the workflow (or one job) extract from moment exactly."""
    targets = {}
    for name in target_jobs(state.wf, state.jobs, job):
        # A time without an offset is a wall time in each job's own zone.
        targets[name] = in_zone(moment, job_zone(state.jobs[name]))
        problem = watermark.future_problem(targets[name], state.now, "from_date")
        if problem:
            raise InvalidParameter(problem, parameter="from_date", workflow=state.wf, job=name)
    changed = watermark.set_next_from_date(state.wf, state.jobs, targets, force=force)
    return Change(action="set", writes=changed, batch_id=state.last_batch_id)


def rewind_targets(wf: str, jobs: dict[str, dict], snapshot_jobs: dict[str, dict], batch_id: int,
                   job: str | None = None) -> dict[str, datetime]:
    """Return {job: from_date of batch batch_id} for the jobs a rewind moves back.

    A whole-workflow rewind moves the jobs that batch ran; one named job must be in it.
    """
    targets = {}
    for name in target_jobs(wf, jobs, job):
        if name in snapshot_jobs and snapshot_jobs[name].get("from_date"):
            targets[name] = parse_time(snapshot_jobs[name]["from_date"])
        elif job is not None:
            raise JobNotFound(f"batch {batch_id} of {wf!r} has no job {name!r}", workflow=wf, job=name)
    return targets


@audited
def plan_rewind(state: State, batch_id: int, snapshot_jobs: dict[str, dict], *, job: str | None = None,
                force: bool = False) -> Change:
    """Make the next batch (of one job) extract from where batch batch_id did."""
    targets = rewind_targets(state.wf, state.jobs, snapshot_jobs, batch_id, job)
    for name, moment in targets.items():
        problem = watermark.future_problem(moment, state.now, f"batch {batch_id}'s from_date of {name!r}")
        if problem:
            raise InvalidParameter(problem, workflow=state.wf, job=name, batch_id=batch_id)
    changed = watermark.set_next_from_date(state.wf, state.jobs, targets, force=force)
    return Change(action="rewind", writes=changed, batch_id=batch_id)


def snapshot_start(batch_id: int | str, jobs: dict[str, dict]) -> float:
    """Return when an imported batch started: its earliest batch_start, else its id."""
    stamps = [parse_time(j["batch_start"]).timestamp() for j in jobs.values() if j.get("batch_start")]
    return min(stamps) if stamps else float(batch_id)


@audited
def plan_import(state: State, jobs: dict[str, dict], batches: dict[str, dict], book: Book, *,
                replace: bool = False) -> Change:
    """Restore a workflow from an export entry; an existing one only with replace."""
    if state.jobs and not replace:
        raise WorkflowExists(f"workflow {state.wf!r} already exists here; import with --replace to overwrite",
                             workflow=state.wf)
    check_from_dates(state, jobs)
    # Batch ids stay strictly increasing: never below what either side used.
    known = [int(b) for b in batches] + [book.last_batch_id or 0, state.last_batch_id or 0] + [
        int(job["batch_id"]) for job in jobs.values() if job.get("batch_id") is not None]
    last = max(known)
    # A workflow that never opened a batch has no last batch id.
    # History is append-only: a restore never takes back a success recorded here since (the
    # newer mark stays) nor makes a counter go down.
    marks = {job: mark for job, mark in book.marks.items()
             if _batch_of(mark) >= _batch_of(state.mark(job))}
    counts = {action: count for action, count in book.counts.items() if count > state.counts.get(action, 0)}
    book = Book(last_batch_id=last or None, settings=book.settings, marks=marks, ledgers=dict(book.ledgers),
                counts=counts, dirty=dict(book.dirty), failed=dict(book.failed), records=dict(book.records))
    # The ledger records windows that succeeded, here or where the export was taken: an
    # import (an older backup, say) merges its ledgers into these, never forgets one.
    for job, ledger in book.ledgers.items():
        try:
            mine = state.ledger(job)
        except CorruptState:
            mine = []  # a broken ledger here: the export's replaces it
        if mine:
            book.ledgers[job] = coverage.union(ledger, mine)
            if book.ledgers[job] == mine:  # nothing new: the rows kept here stay
                book.records.pop(job, None)
            elif book.ledgers[job] != ledger:  # merged intervals of both: their rows are not known
                book.records[job] = [None] * len(book.ledgers[job])
    # Dirty ranges and quality failures of either side stay holes until a window covers them.
    for job in set(book.dirty) | set(book.failed):
        try:
            here = state.coverage(job)
        except CorruptState:
            here = coverage.Ledger([])
        book.dirty[job] = coverage.union(book.dirty.get(job) or [], here.dirty)
        book.failed[job] = coverage.union(book.failed.get(job) or [], here.failed)
    # A batch open here that the import replaces can never close: it ends abandoned (unless
    # the export carries that batch, whose snapshot then replaces it whole).
    replaced = watermark.abandoned_jobs(state.jobs, None, "abandoned: the workflow was replaced by an import")
    jobs, batches = stale_open_jobs(jobs, batches, state.jobs, state.now)
    given = {str(b) for b in batches}
    return Change(
        action="import",
        writes=jobs,
        replace=True,
        book=book,
        snapshots=[SnapshotWrite(b, SNAPSHOT_UPDATE, 0, snap)
                   for b, snap in replaced.items() if str(b) not in given]
        + [SnapshotWrite(b, SNAPSHOT_PUT, snapshot_start(b, snap), snap) for b, snap in batches.items()],
    )


def _batch_of(mark: dict | None) -> int:
    try:
        return int(mark["batch_id"]) if mark else -1
    except (KeyError, TypeError, ValueError):
        return -1


def moved_on(job: dict, here: dict | None) -> bool:
    """Return True if a job an export shows open in its batch has ended that batch here since, or
    opened a newer one: its run can no longer close it, and what happened here is history."""
    if here is None or here.get("batch_id") is None or job.get("batch_id") is None:
        return False
    mine, theirs = int(here["batch_id"]), int(job["batch_id"])
    return mine > theirs or (mine == theirs and here.get("status") != Status.OPEN)


def stale_open_jobs(jobs: dict[str, dict], batches: dict[str, dict], here: dict[str, dict],
                    now: datetime) -> tuple[dict[str, dict], dict[str, dict]]:
    """Return the imported jobs and batches with every job still open in a batch that the job
    has ended or moved past here since the export (here: the jobs as they are) ended too: the
    job comes back failed (its next open reruns the identical window) and its line in that
    batch's snapshot abandoned, unless a final line here keeps what happened (the commit never
    rewrites one). A job open in a batch it still runs in here, on its own schedule, stays open."""
    stale = {name: job for name, job in jobs.items()
             if job.get("status") == Status.OPEN and moved_on(job, here.get(name))}
    if not stale:
        return jobs, batches
    jobs = {**jobs, **{name: dict(job, status=Status.FAILED, batch_end=format_now(now, job_zone(job)),
                                  message=_moved_message(job, here[name])) for name, job in stale.items()}}
    batches = dict(batches)
    for name, job in stale.items():
        bid = str(job["batch_id"])
        if bid in batches and name in batches[bid]:
            batches[bid] = {**batches[bid], name: dict(batches[bid][name], status=Status.ABANDONED,
                                                       message=jobs[name]["message"])}
    return jobs, batches


def _moved_message(job: dict, here: dict) -> str:
    if int(here["batch_id"]) > int(job["batch_id"]):
        return f"abandoned: batch {here['batch_id']} was opened here after this export's batch"
    return f"abandoned: batch {job['batch_id']} ended here ({here.get('status')}) after this export was taken"


@audited
def plan_remove(state: State, purge: bool = False) -> Change:
    """Remove the workflow (purge: its history too): batches still open can never close, so they end abandoned."""
    abandoned = watermark.abandoned_jobs(state.jobs, None, "abandoned: the workflow was removed")
    return Change(action="remove", replace=True, purge=purge,
                  snapshots=[SnapshotWrite(old_id, SNAPSHOT_UPDATE, 0, snap)
                             for old_id, snap in abandoned.items()])


def watermarks(jobs: dict[str, dict]) -> dict[str, str | None]:
    """Return each job's watermark: the from_date its next batch starts from once an
    operator set one, else the from_date of its latest window."""
    return {name: job.get("next_from_date") or job.get("from_date") for name, job in jobs.items()}


def audit_event(state: State, change: Change) -> dict:
    """Return the audit event of a change: what moved each job's watermark (storage adds who)."""
    writes, replace = change.writes, change.replace
    before = {name: job.get("next_from_date") or job.get("from_date")  # watermarks() of the jobs it writes
              for name, job in state.jobs.items() if replace or name in writes}
    return {
        "time": format_now(state.now),
        "action": change.action,
        "batch_id": "" if change.batch_id is None else str(change.batch_id),
        # A removal writes no job: it names every job it removed.
        "jobs": sorted(state.jobs if change.action == "remove" else writes),
        "from_before": before,
        "from_after": watermarks(writes),
        **({"message": change.reason} if change.reason else {}),
    }


def plan_backfill_coverage(state: State, job: str, start: datetime, end: datetime, *, passed: bool = True,
                           records: int | None = None) -> Change:
    """Merge a backfill chunk's window [start, end), just recorded successful, into job's coverage ledger.

    passed: the chunk's quality verdict (dq=fail: the range stays a hole, as a quality failure).
    Not audited in the workflow's stream: the chunk's event goes to its backfill's own stream
    (storage/backfill_lua.BACKFILL_NOTE), so chunk traffic never evicts the operator's trail.
    Nothing to write when the coverage is that already (a retried close) or the job is gone.
    """
    if job not in state.jobs:
        return Change(action="backfill_coverage", noop=True)
    old = state.coverage(job)
    new = coverage.succeeded(old, start.timestamp(), end.timestamp(), passed, records)
    if new[:3] == old[:3]:
        return Change(action="backfill_coverage", noop=True)
    book = Book()
    book.put(job, new, old)
    return Change(action="backfill_coverage", book=book)


@audited
def plan_invalidate(state: State, start: datetime, end: datetime, jobs: list[str] | None = None,
                    reason: str | None = None) -> Change:
    """Mark [start, end) of each job named (default: every job) dirty, and bump its generation.

    Late data arrived for that range: what covered it no longer counts until a successful,
    passing window (the next runs, or a backfill chunk) covers it again.
    """
    book, writes = Book(), {}
    for name in target_jobs(state.wf, state.jobs, jobs):
        # A time without an offset is a wall time in each job's own zone.
        low, high = (in_zone(moment, job_zone(state.jobs[name])).timestamp() for moment in (start, end))
        if high <= low:
            raise InvalidParameter("to must be later than from", parameter="to", workflow=state.wf)
        old = state.coverage(name)
        job = state.jobs[name]
        new = coverage.invalidated(old, low, high)
        writes[name] = dict(job, generation=(job.get("generation") or 0) + 1)
        if job.get("status") == Status.OPEN and job.get("from_date") and job.get("to_date"):
            # The run in flight may have read its window before the late rows: the part of
            # the range it loads is dirty too, and its close does not clean it.
            window = coverage.clip([[low, high]], _epoch(job["from_date"]), _epoch(job["to_date"]))
            if window:
                new = new._replace(dirty=coverage.union(new.dirty, coverage.subtract(window, new.failed)))
            writes[name]["invalidated_in_batch"] = job.get("batch_id")
        book.put(name, new, old)
    return Change(action="invalidate", writes=writes, book=book, batch_id=state.last_batch_id,
                  reason=reason or "")
