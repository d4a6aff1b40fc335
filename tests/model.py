"""A pure reference model of Batchy, written from the documentation only (README concepts,
docs/api.md, docs/workflows.md), for tests/test_model.py.

One dict per workflow; every function takes a workflow and returns a Result: the status
code and error code the service must answer, the workflow after the call (a new dict,
the argument is never changed) and the audit events the call must append. No Redis, no
Flask, nothing imported from batchy.

A workflow:
    {"loaded": bool, "settings": {...}, "jobs": {name: job}, "last_batch_id": int | None,
     "batches": {batch_id: {name: run}}, "paused": bool, "idem": {key: batch_id},
     "gens": int, "ledger": {name: [[start, end], ...]}, "backfills": {backfill_id: backfill},
     "dirty": {name: [[start, end], ...]}, "failed": {name: [[start, end], ...]}}
A job (times are aware datetimes):
    {"status", "batch_id", "from_date", "to_date", "batch_start", "batch_end",
     "next_from_date", "reprocess_hours", "trunc_start", "timezone", "gen",
     "max_window_hours", "settle_minutes", "batch_size", "caught_up", "behind_seconds"}
A run, a job's line in a batch snapshot:
    {"status", "from_date", "to_date", "gen", "operator", "rh", "trunc"}
where gen names the incarnation of the job (a job removed from the file and added back,
or reset, is a new one) and operator/rh/trunc say what may explain an overlap or a gap
before this window: an operator's set_from_date/rewind consumed by this open, the
reprocess_hours and trunc_start it was opened with.

The ledger is the merged union of every successful window of a job (by name: it outlives
a reset and a job's removal), from batches and backfill chunks. Late data and quality
checks (docs/backfills.md) take parts back: "dirty" holds what an invalidation marked of
the covered time, "failed" the windows whose last close said dq=fail; a later successful
window takes its range out of both (into "failed" again if it failed its check too). What
/coverage calls covered is the ledger minus both; a job's "generation" counts the
invalidations that named it. A backfill:
    {"max_attempts": int, "cancelled": bool, "chunks": {number: chunk}}
a chunk: {"job", "from_date", "to_date", "status", "attempts", "outcome"}.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

UTC = timezone.utc
BEGINNING_OF_TIME = datetime(1970, 1, 1, tzinfo=UTC)
FINAL = ("success", "failed", "abandoned")


@dataclass
class Result:
    status: int
    error: str | None = None
    wf: dict | None = None  # the workflow after the call (None: unchanged)
    events: list[dict] = field(default_factory=list)  # audit events the call appends
    answer: dict | None = None  # for an open: {job: job} the body must show
    batch_id: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


def refuse(status: int, error: str) -> Result:
    return Result(status, error)


def empty_workflow() -> dict:
    return {"loaded": False, "settings": {}, "jobs": {}, "last_batch_id": None, "batches": {},
            "paused": False, "idem": {}, "gens": 0, "ledger": {}, "backfills": {},
            "dirty": {}, "failed": {}}


# -- time -------------------------------------------------------------------------------

def zone(name: str | None):
    return UTC if name in (None, "UTC") else ZoneInfo(name)


def file_time(text: str | None, tz_name: str | None) -> datetime | None:
    """A date in a workflow file: without an offset it is a wall time in the job's zone."""
    if text is None:
        return None
    text = text.strip("'\"")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=zone(tz_name))


def operator_time(text: str) -> datetime:
    """A from_date given to set_from_date: ISO-8601 or unix seconds. Without an offset it is
    a wall time read in each job's own timezone (docs/api.md): returned naive."""
    if text.isdigit():
        return datetime.fromtimestamp(int(text), UTC)
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def midnight(moment: datetime, tz_name: str) -> datetime:
    """The first instant of moment's day in the zone (never later than moment)."""
    tz = zone(tz_name)
    local = moment.astimezone(tz)
    return min(datetime.combine(local.date(), time(0), tzinfo=tz).astimezone(UTC), moment)


def watermark(job: dict) -> datetime | None:
    """What the audit log calls a job's watermark: next_from_date once set, else from_date."""
    return job["next_from_date"] or job["from_date"]


def watermarks(jobs: dict) -> dict:
    return {name: watermark(job) for name, job in jobs.items()}


# -- the file -----------------------------------------------------------------------------

POLICY_FIELDS = ("max_window_hours", "settle_minutes", "batch_size")
# The longest one unit can be (a DST day: 25 h): a max_window_hours below cannot hold one.
LONGEST_UNIT_HOURS = {"hour": 1, "day": 25}


def params(spec: dict) -> dict:
    """The parameters a job of the file has (defaults filled in)."""
    return {
        "reprocess_hours": spec.get("reprocess_hours") or 0,
        "trunc_start": bool(spec.get("trunc_start")),
        "timezone": spec.get("timezone") or "UTC",
        **{name: spec.get(name) for name in POLICY_FIELDS},
    }


def fresh_job(spec: dict, gen: int) -> dict:
    return {"status": "new", "batch_id": None, "from_date": file_time(spec.get("from_date"), spec.get("timezone")),
            "to_date": None, "batch_start": None, "batch_end": None, "next_from_date": None, "gen": gen,
            "caught_up": None, "behind_seconds": None, **params(spec)}


def policy(job: dict, settings: dict) -> dict:
    """A job's window policy: its own fields over the workflow's .batchy ones; {} for none."""
    merged = {name: settings[name] for name in POLICY_FIELDS if settings.get(name) is not None}
    merged.update({name: job[name] for name in POLICY_FIELDS if job.get(name) is not None})
    return merged if any(merged.values()) else {}  # settle_minutes 0 alone changes nothing


def bad_policy(fields: dict, reprocess_hours: float = 0) -> bool:
    """A policy that cannot hold one unit, or an overlap as long as the window: each window would
    start at or before the one before (docs/workflows.md, Window policy)."""
    size, most = fields.get("batch_size"), fields.get("max_window_hours")
    return most is not None and ((bool(size) and most < LONGEST_UNIT_HOURS[size]) or reprocess_hours >= most)


def boundary(moment: datetime, unit: str, tz_name: str) -> datetime:
    """The last boundary of unit at or before moment: a whole hour, or midnight in the zone."""
    if unit == "hour":
        return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return midnight(moment, tz_name)


def policy_window(start: datetime, now: datetime, fields: dict, tz_name: str) -> tuple[datetime, bool, float]:
    """docs/workflows.md, Window policy: (to_date, caught_up, behind_seconds) of a window from start.

    limit = now - settle_minutes, moved back to a boundary; the window is [start, min(limit,
    start + max_window_hours)), that end moved back to a boundary too; empty and caught up
    when nothing complete is newer than start."""
    unit = fields.get("batch_size")
    limit = now - timedelta(minutes=fields.get("settle_minutes") or 0)
    if unit:
        limit = boundary(limit, unit, tz_name)
    end = limit
    if fields.get("max_window_hours") is not None:
        # Real hours: an aware datetime in a zone adds wall-clock time across a DST change
        # (found by a long run: a 30-hour window over New York's spring-forward).
        cap = start.astimezone(UTC) + timedelta(hours=fields["max_window_hours"])
        if cap < end:
            end = boundary(cap, unit, tz_name) if unit else cap
    if end <= start:
        return start, True, 0.0
    return end, end >= limit, (limit - end).total_seconds()


# -- the coverage ledger ------------------------------------------------------------------

def merge(intervals: list, start: datetime, end: datetime) -> list:
    """intervals (sorted, disjoint [start, end) pairs) with [start, end) merged in."""
    if end <= start:
        return intervals
    result = []
    for low, high in sorted(intervals + [[start, end]]):
        if result and low <= result[-1][1]:
            result[-1][1] = max(result[-1][1], high)
        else:
            result.append([low, high])
    return result


def covers(intervals: list, start: datetime, end: datetime) -> bool:
    return any(low <= start and end <= high for low, high in intervals)


def gaps(intervals: list) -> list:
    return [[intervals[i][1], intervals[i + 1][0]] for i in range(len(intervals) - 1)]


def minus(intervals: list, taken: list) -> list:
    """The parts of intervals (sorted, disjoint) outside every interval of taken."""
    result = []
    for low, high in intervals:
        pieces = [[low, high]]
        for cut_low, cut_high in taken:
            pieces = [part for a, b in pieces
                      for part in ([[a, min(b, cut_low)]] if a < cut_low else []) + ([[max(a, cut_high), b]]
                                                                                      if b > cut_high else [])
                      if part[0] < part[1]]
        result += pieces
    return result


def inside(intervals: list, low: datetime, high: datetime) -> list:
    """The parts of intervals within [low, high)."""
    return [[max(a, low), min(b, high)] for a, b in intervals if a < high and b > low]


def union_all(intervals: list) -> list:
    result = []
    for low, high in intervals:
        result = merge(result, low, high)
    return result


def covered(wf: dict, name: str) -> list:
    """What /coverage says covered: the ledger less its dirty ranges and quality failures."""
    return minus(wf["ledger"].get(name, []), wf["dirty"].get(name, []) + wf["failed"].get(name, []))


def succeeded(wf: dict, name: str, low: datetime, high: datetime, dq: str | None, cleans: bool = True) -> None:
    """Record a successful window [low, high) of job name in wf (changed in place); cleans=False:
    an invalidation came while it ran, so its dirty ranges stay."""
    if high <= low:
        return
    wf["ledger"][name] = merge(wf["ledger"].get(name, []), low, high)
    for part in ("dirty", "failed") if cleans else ("failed",):
        wf[part][name] = minus(wf[part].get(name, []), [[low, high]])
    if dq == "fail":
        wf["failed"][name] = merge(wf["failed"][name], low, high)


def coverage_of(wf: dict, name: str) -> tuple:
    return (wf["ledger"].get(name, []), wf["dirty"].get(name, []), wf["failed"].get(name, []))


def abandon(wf: dict, jobs: dict) -> None:
    """Record, in place on wf (a copy), every open job of jobs as abandoned in its batch."""
    for name, job in jobs.items():
        if job["status"] == "open" and job["batch_id"] in wf["batches"]:
            line = wf["batches"][job["batch_id"]].get(name)
            if line is not None and line["status"] not in FINAL:  # history is append-only
                line["status"] = "abandoned"


def event(action: str, batch_id, before: dict, after: dict) -> dict:
    return {"action": action, "batch_id": "" if batch_id is None else str(batch_id),
            "jobs": sorted(after), "from_before": watermarks(before), "from_after": watermarks(after)}


# -- the calls ----------------------------------------------------------------------------

def load(wf: dict, spec: dict, settings: dict, now: datetime, *, reset: bool = False) -> Result:
    """load_cfg: jobs that have run keep their runtime state (unless reset); new ones start
    from the file; jobs no longer in it are dropped, their open batch abandoned."""
    for name, job_spec in spec.items():
        moment = file_time(job_spec.get("from_date"), job_spec.get("timezone"))
        if moment is not None and moment > now:
            return refuse(400, "invalid_config")
        if bad_policy(policy(job_spec, settings), job_spec.get("reprocess_hours") or 0):
            return refuse(400, "invalid_config")
    new = copy.deepcopy(wf)
    old = wf["jobs"]
    jobs = {}
    for name, job_spec in spec.items():
        current = None if reset else old.get(name)
        if current is None:
            new["gens"] += 1
            jobs[name] = fresh_job(job_spec, new["gens"])
        elif current["status"] != "new":
            jobs[name] = {**copy.deepcopy(current), **params(job_spec)}
        elif current["next_from_date"]:  # never ran, but an operator set where it starts
            jobs[name] = {**fresh_job(job_spec, current["gen"]), "from_date": current["from_date"],
                          "next_from_date": current["next_from_date"]}
        else:
            jobs[name] = fresh_job(job_spec, current["gen"])
    dropped = old if reset else {name: job for name, job in old.items() if name not in spec}
    abandon(new, dropped)
    new.update(loaded=True, jobs=dict(sorted(jobs.items())), settings=dict(settings))
    return Result(200, wf=new, events=[event("reset" if reset else "load", None, old, jobs)])


def window_start(job: dict) -> tuple[datetime, bool]:
    """The from_date of the job's next batch, and whether an operator chose it."""
    if job["next_from_date"]:
        return job["next_from_date"], True
    moved = bool(job.get("moved"))  # restored from an older export: an operator's move
    if job["status"] == "success" and job["to_date"]:
        # the previous to_date - reprocess_hours: without a policy to_date is batch_start
        start = job["to_date"] - timedelta(hours=job["reprocess_hours"])
    elif job["from_date"]:
        start = job["from_date"]  # new, failed, or still open (a crash): the same window again
    else:
        start = BEGINNING_OF_TIME
    if job["trunc_start"]:
        start = midnight(start, job["timezone"])
    return start, moved


def next_batch_id(wf: dict, now: datetime) -> int:
    return max(int(now.timestamp()), (wf["last_batch_id"] or 0) + 1)


def open_batch(wf: dict, now: datetime, *, key: str | None = None, dry_run: bool = False,
               jobs: list[str] | None = None) -> Result:
    """open_batch: every job (or each job named) gets its window [from_date, now); a job it
    opens that is still open elsewhere is abandoned there; the other jobs stay as they are."""
    if dry_run and wf["paused"]:
        return refuse(423, "paused")
    if not wf["loaded"]:
        return refuse(404, "workflow_not_found")
    scope = (key, tuple(sorted(set(jobs))) if jobs else None)  # a key is one open of one set of jobs
    if key is not None and scope in wf["idem"]:
        # A retry "answers the batch the first call opened instead of opening another"
        # (BATCHY_IDEMPOTENCY_HOURS, docs/operations.md): so before any refusal a new open
        # would get (exclusive, paused); a batch no job runs in any more is 409 stale_batch.
        opened = wf["idem"][scope]
        moved = [name for name in wf["batches"].get(opened, {}) if name in wf["jobs"]
                 and (wf["jobs"][name]["batch_id"] or 0) > opened]  # a job it opened runs in a newer batch now
        if moved or not any(job["batch_id"] == opened for job in wf["jobs"].values()):
            return refuse(409, "stale_batch")  # superseded by a newer batch of its jobs, or ended by a reset
        return Result(200, answer=wf["jobs"], batch_id=opened)
    if jobs is not None and any(name not in wf["jobs"] for name in jobs):
        return refuse(404, "job_not_found")
    selected = {name: wf["jobs"][name] for name in (sorted(set(jobs)) if jobs else wf["jobs"])}
    opened_now = [job for job in selected.values() if job["status"] == "open"]
    if wf["settings"].get("exclusive") and opened_now:
        lease = wf["settings"].get("lease_hours")
        newest = max(job["batch_start"] for job in opened_now)  # each open job holds a lease of its own
        if lease is None or now - newest <= timedelta(hours=lease):
            return refuse(409, "batch_open")
    batch_id = next_batch_id(wf, now)
    opened, runs = {}, {}
    for name, job in selected.items():
        start, operator = window_start(job)
        if start > now:
            return refuse(409, "from_date_in_future")
        fields = policy(job, wf["settings"])
        end, caught_up, behind = policy_window(start, now, fields, job["timezone"]) if fields else (now, None, None)
        opened[name] = {**job, "status": "open", "batch_id": batch_id, "from_date": start, "to_date": end,
                        "batch_start": now, "batch_end": None, "next_from_date": None, "moved": False,
                        "caught_up": caught_up, "behind_seconds": behind}
        runs[name] = {"status": "open", "from_date": start, "to_date": end, "gen": job["gen"],
                      "operator": operator, "rh": job["reprocess_hours"], "trunc": job["trunc_start"]}
    after = {**wf["jobs"], **opened}
    if dry_run:
        return Result(200, answer=after, batch_id=batch_id)
    if wf["paused"]:
        return refuse(423, "paused")
    new = copy.deepcopy(wf)
    abandon(new, selected)
    new["batches"][batch_id] = runs
    new["jobs"] = after
    new["last_batch_id"] = batch_id
    if key is not None:
        new["idem"][scope] = batch_id
    return Result(200, wf=new, events=[event("open", batch_id, selected, opened)], answer=after, batch_id=batch_id)


def close_batch(wf: dict, outcome: str, now: datetime, *, job: str | None = None,
                batch_id: int | None = None, dq: str | None = None) -> Result:
    """close_batch (outcome success) / fail_batch (failed): the open jobs, or one.

    With batch_id: the jobs (or the one) that run in that batch, none is 409 stale_batch; a
    repeat whose jobs already ended with this outcome is 200 and changes nothing. Nothing
    open is 409 not_open."""
    if not wf["loaded"]:
        return refuse(404, "workflow_not_found")
    jobs = wf["jobs"]
    if job is not None and job not in jobs:
        return refuse(404, "job_not_found")
    targets = [job] if job is not None else list(jobs)
    if batch_id is not None:
        targets = [name for name in targets if jobs[name]["batch_id"] == batch_id]
        if not targets:
            return refuse(409, "stale_batch")
    open_targets = [name for name in targets if jobs[name]["status"] == "open"]
    if not open_targets:
        ran = [jobs[name] for name in targets if batch_id is not None and jobs[name]["batch_id"] == batch_id]
        if ran and all(j["status"] == outcome for j in ran):
            return Result(200)  # a retry of a close that went through
        return refuse(409, "not_open")
    new = copy.deepcopy(wf)
    closed = {}
    for name in open_targets:
        changed = new["jobs"][name]
        changed.update(status=outcome, batch_end=now)
        if outcome == "success":
            succeeded(new, name, changed["from_date"], changed["to_date"], dq,
                      cleans=changed.get("invalidated_in_batch") != changed["batch_id"])
        line = new["batches"].get(changed["batch_id"], {}).get(name)
        if line is not None and line["status"] not in FINAL:  # a final line is history: never rewritten
            line["status"] = outcome
        closed[name] = changed
    before = {name: jobs[name] for name in open_targets}
    ran_in = {closed[name]["batch_id"] for name in closed}
    ended = batch_id or (ran_in.pop() if len(ran_in) == 1 else wf["last_batch_id"])
    return Result(200, wf=new, events=[event("close" if outcome == "success" else "fail", ended, before, closed)])


def invalidate(wf: dict, low: datetime, high: datetime, *, jobs: list | None = None) -> Result:
    """POST /invalidate: the covered part of [low, high) of each job named (default every job) is
    dirty (less what failed its quality check already); each one's generation goes up."""
    if not wf["loaded"]:
        return refuse(404, "workflow_not_found")
    if any(name not in wf["jobs"] for name in jobs or []):
        return refuse(404, "job_not_found")
    if high <= low:
        return refuse(400, "invalid_parameter")
    new = copy.deepcopy(wf)
    named = sorted(set(jobs)) if jobs else list(wf["jobs"])
    for name in named:
        spoiled = minus(inside(new["ledger"].get(name, []), low, high), new["failed"].get(name, []))
        job = new["jobs"][name]
        if job["status"] == "open":  # the run in flight may have read before the late rows: its
            # window's part is dirty too, and its close leaves every dirty range as it is
            spoiled += minus(inside([[job["from_date"], job["to_date"]]], low, high), new["failed"].get(name, []))
            job["invalidated_in_batch"] = job["batch_id"]
        new["dirty"][name] = union_all(new["dirty"].get(name, []) + spoiled)
        job["generation"] = job.get("generation", 0) + 1
    before = {name: wf["jobs"][name] for name in named}
    return Result(200, wf=new, events=[event("invalidate", wf["last_batch_id"], before,
                                             {name: new["jobs"][name] for name in named})])


def _set_next(wf: dict, targets: dict, force: bool, action: str, batch_id) -> Result:
    busy = [name for name in targets if wf["jobs"][name]["status"] == "open"]
    if busy and not force:
        return refuse(409, "batch_open")
    new = copy.deepcopy(wf)
    for name, moment in targets.items():
        changed = new["jobs"][name]
        changed["next_from_date"] = moment
        if changed["status"] == "new":
            changed["from_date"] = moment
    before = {name: wf["jobs"][name] for name in targets}
    after = {name: new["jobs"][name] for name in targets}
    return Result(200, wf=new, events=[event(action, batch_id, before, after)])


def set_from_date(wf: dict, moment: datetime, now: datetime, *, job: str | None = None,
                  force: bool = False) -> Result:
    """set_from_date: the next batch starts exactly at moment (a naive moment: in each job's
    zone); never in the future."""
    if not wf["loaded"]:
        return refuse(404, "workflow_not_found")
    if job is not None and job not in wf["jobs"]:
        return refuse(404, "job_not_found")
    targets = {}
    for name in ([job] if job is not None else list(wf["jobs"])):
        targets[name] = moment if moment.tzinfo else moment.replace(tzinfo=zone(wf["jobs"][name]["timezone"]))
        if targets[name] > now:
            return refuse(400, "invalid_parameter")
    return _set_next(wf, targets, force, "set", wf["last_batch_id"])


def rewind(wf: dict, batch_id: int, now: datetime, *, job: str | None = None, force: bool = False) -> Result:
    """rewind: the next batch of the jobs batch_id ran starts where that batch did."""
    if batch_id not in wf["batches"]:
        return refuse(404, "batch_not_found")
    if not wf["loaded"]:
        return refuse(404, "workflow_not_found")
    if job is not None and job not in wf["jobs"]:
        return refuse(404, "job_not_found")
    runs = wf["batches"][batch_id]
    targets = {}
    for name in ([job] if job is not None else list(wf["jobs"])):
        if name in runs:
            targets[name] = runs[name]["from_date"]
        elif job is not None:
            return refuse(404, "job_not_found")
    if any(moment > now for moment in targets.values()):
        return refuse(400, "invalid_parameter")
    return _set_next(wf, targets, force, "rewind", batch_id)


def pause(wf: dict) -> Result:
    if not wf["loaded"]:
        return refuse(404, "workflow_not_found")
    return Result(200, wf={**wf, "paused": True}, events=[{"action": "pause"}])


def resume(wf: dict) -> Result:
    if not wf["loaded"] and not wf["paused"]:
        return refuse(404, "workflow_not_found")
    return Result(200, wf={**wf, "paused": False}, events=[{"action": "resume"}])


def restore(wf: dict, backup: dict, now: datetime) -> Result:
    """import --replace of an export taken when the workflow was backup: its jobs and
    settings come back, its batch snapshots are written but never over a final line,
    newer snapshots stay, batch ids keep increasing."""
    new = copy.deepcopy(wf)
    new["jobs"] = copy.deepcopy(backup["jobs"])
    for name, job in new["jobs"].items():
        current = wf["jobs"].get(name)
        # A move an open has not consumed yet stays one (restoring the same backup twice).
        job["moved"] = job.get("moved") or current is None or current.get("moved") or \
            {**current, "moved": False} != {**job, "moved": False}
    new["settings"] = dict(backup["settings"])
    for name, intervals in backup["ledger"].items():  # merged in, never written over
        for low, high in intervals:
            new["ledger"][name] = merge(new["ledger"].get(name, []), low, high)
    for part in ("dirty", "failed"):  # still holes, on either side
        for name, intervals in backup[part].items():
            new[part][name] = union_all(new[part].get(name, []) + intervals)
    # A batch open here that the import replaces can never close: it ends abandoned, unless
    # the export carries that batch (its lines are written just below).
    for name, current in wf["jobs"].items():
        bid = current.get("batch_id")
        if current["status"] == "open" and bid in new["batches"] and name in new["batches"][bid] \
                and bid not in backup["batches"]:
            new["batches"][bid][name] = {**new["batches"][bid][name], "status": "abandoned"}
    # History is append-only: the export's lines are written, except over a line that is final
    # here (success, failed, abandoned); lines the export lacks stay.
    for batch_id, runs in backup["batches"].items():
        here = new["batches"].get(batch_id, {})
        new["batches"][batch_id] = {**copy.deepcopy(runs), **{
            name: line for name, line in here.items() if line["status"] in FINAL or name not in runs}}
    known = [*backup["batches"], backup["last_batch_id"] or 0, wf["last_batch_id"] or 0]
    new["last_batch_id"] = max(known) or None
    # A job the export shows open in a batch it has ended or moved past here since can never be
    # closed by its run: it comes back failed, so its next open reruns the identical window,
    # and its line in that batch is abandoned (unless final here: history). A job open in a
    # batch it still runs in here (its own schedule) stays open.
    for name, job in new["jobs"].items():
        here = wf["jobs"].get(name)
        if job["status"] == "open" and here is not None and here["batch_id"] is not None \
                and job["batch_id"] is not None and (here["batch_id"] > job["batch_id"] or (
                    here["batch_id"] == job["batch_id"] and here["status"] != "open")):
            job.update(status="failed", batch_end=now)
            line = new["batches"].get(job["batch_id"], {}).get(name)
            if line is not None and line["status"] not in FINAL:
                line["status"] = "abandoned"
    new["loaded"] = True
    return Result(200, wf=new, events=[event("import", None, wf["jobs"], new["jobs"])])


# -- what the history shows -----------------------------------------------------------------

def batch_status(runs: dict) -> str:
    """One status for a batch: open if a job is, else failed, abandoned, success."""
    statuses = {run["status"] for run in runs.values()}
    for status in ("open", "failed", "abandoned", "success"):
        if status in statuses:
            return status
    return "new"


def open_batches(wf: dict) -> set[int]:
    """The batches /batches?status=open must list for the workflow: those an open job runs in."""
    return {bid for bid, runs in wf["batches"].items() if batch_status(runs) == "open"}


# -- backfills (docs/backfills.md) ----------------------------------------------------------

def next_boundary(moment: datetime, unit: str, tz_name: str) -> datetime:
    """The first boundary of unit after moment: the next whole hour, or the next midnight in the zone."""
    if unit == "hour":
        return boundary(moment, unit, tz_name) + timedelta(hours=1)
    local = moment.astimezone(zone(tz_name))
    return midnight(datetime.combine(local.date() + timedelta(days=1), time(12), tzinfo=zone(tz_name)), tz_name)


def tile(start: datetime, end: datetime, tz_name: str, unit: str | None, chunk_hours: float | None) -> list:
    """[start, end) cut into chunks: chunk_hours long from start, or ending on each unit boundary."""
    spans, cursor = [], start
    while cursor < end:
        following = cursor + timedelta(hours=chunk_hours) if chunk_hours else next_boundary(cursor, unit, tz_name)
        spans.append((cursor, min(following, end)))
        cursor = spans[-1][1]
    return spans


def backfill_create(wf: dict, start: datetime, end: datetime, now: datetime, *, job: str | None,
                    batch_size: str | None, chunk_hours: float | None) -> tuple[Result, list]:
    """POST /backfill: (the result, the chunks' (job, from_date, to_date) in any order)."""
    if not wf["loaded"]:
        return refuse(404, "workflow_not_found"), []
    if job is not None and job not in wf["jobs"]:
        return refuse(404, "job_not_found"), []
    if end > now:
        return refuse(400, "invalid_parameter"), []
    spans = []
    for name in [job] if job is not None else sorted(wf["jobs"]):
        unit = None if chunk_hours else batch_size or policy(wf["jobs"][name], wf["settings"]).get("batch_size") \
            or "day"
        spans += [(name, low, high) for low, high in tile(start, end, wf["jobs"][name]["timezone"], unit, chunk_hours)]
    return Result(201, events=[{"action": "backfill_create"}]), spans


def backfill_lease(wf: dict, backfill_id: int) -> tuple[Result, int | None]:
    """POST .../lease: (the result, the chunk leased or None). Leases here never run out."""
    fill = wf["backfills"].get(backfill_id)
    if not wf["loaded"]:
        return refuse(404, "workflow_not_found"), None
    if fill is None:
        return refuse(404, "backfill_not_found"), None
    if wf["paused"]:
        return refuse(423, "paused"), None
    due = [n for n, chunk in sorted(fill["chunks"].items()) if chunk["status"] == "pending"]
    if not due:
        return Result(204), None
    new = copy.deepcopy(wf)
    chunk = new["backfills"][backfill_id]["chunks"][due[0]]
    chunk.update(status="leased", attempts=chunk["attempts"] + 1, outcome=None, token=None)  # the caller sets token
    return Result(200, wf=new, events=[{"action": "backfill_lease"}]), due[0]


def fenced(chunk: dict, attempt: int, token: str | None) -> bool:
    """A call naming the chunk's current attempt without the lease_token its lease answered."""
    return chunk["attempts"] == attempt and bool(chunk.get("token")) and token != chunk["token"]


def chunk_refusal(wf: dict, backfill_id: int, attempt: int) -> Result | None:
    """The refusal of a call naming a chunk's attempt before the chunk is looked at, if any."""
    if attempt < 1:
        return refuse(400, "invalid_parameter")  # "the attempt the lease answered": 1 or more
    if not wf["loaded"]:
        return refuse(404, "workflow_not_found")
    if backfill_id not in wf["backfills"]:
        return refuse(404, "backfill_not_found")
    return None


def backfill_finish(wf: dict, backfill_id: int, number: int, attempt: int, outcome: str,
                    token: str | None = None, dq: str | None = None) -> Result:
    """POST .../close (outcome success) or .../fail (failed) of a chunk's attempt, with a lease_token."""
    refused = chunk_refusal(wf, backfill_id, attempt)
    if refused:
        return refused
    fill = wf["backfills"][backfill_id]
    chunk = fill["chunks"][number]
    if fenced(chunk, attempt, token):
        return refuse(409, "wrong_lease_token")
    if chunk["status"] != "leased" or chunk["attempts"] != attempt:
        if chunk["attempts"] == attempt and chunk["outcome"] == outcome:
            return Result(200)  # a retry of the same close or fail
        return refuse(409, "stale_attempt" if chunk["attempts"] != attempt else "not_leased")
    new = copy.deepcopy(wf)
    changed = new["backfills"][backfill_id]["chunks"][number]
    events = [{"action": "backfill_close" if outcome == "success" else "backfill_fail"}]
    if outcome == "success":
        status = "success"
        name, low, high = changed["job"], changed["from_date"], changed["to_date"]
        if name in new["jobs"]:
            before = copy.deepcopy(coverage_of(new, name))
            succeeded(new, name, low, high, dq)
            if coverage_of(new, name) != before:
                events.append({"action": "backfill_coverage"})
    elif chunk["attempts"] >= fill["max_attempts"]:
        status = "failed"
    else:
        status = "cancelled" if fill["cancelled"] else "pending"
    changed.update(status=status, outcome=outcome)
    return Result(200, wf=new, events=events)


def backfill_renew(wf: dict, backfill_id: int, number: int, attempt: int, token: str | None = None) -> Result:
    """POST .../renew: the attempt holding a leased chunk renews its lease (no outcome, no event)."""
    refused = chunk_refusal(wf, backfill_id, attempt)
    if refused:
        return refused
    chunk = wf["backfills"][backfill_id]["chunks"][number]
    if chunk["attempts"] != attempt:
        return refuse(409, "stale_attempt")
    if fenced(chunk, attempt, token):
        return refuse(409, "wrong_lease_token")
    if chunk["status"] != "leased":
        return refuse(409, "not_leased")
    return Result(200)


def backfill_cancel(wf: dict, backfill_id: int) -> Result:
    fill = wf["backfills"].get(backfill_id)
    if not wf["loaded"]:
        return refuse(404, "workflow_not_found")
    if fill is None:
        return refuse(404, "backfill_not_found")
    if fill["cancelled"]:
        return Result(200)  # cancelled already: nothing changes, nothing is logged
    new = copy.deepcopy(wf)
    target = new["backfills"][backfill_id]
    target["cancelled"] = True
    for chunk in target["chunks"].values():
        if chunk["status"] == "pending":
            chunk["status"] = "cancelled"
    return Result(200, wf=new, events=[{"action": "backfill_cancel"}])


def backfill_status(fill: dict) -> str:
    statuses = {chunk["status"] for chunk in fill["chunks"].values()}
    if fill["cancelled"]:
        return "cancelled"
    if statuses & {"pending", "leased"}:
        return "running"
    return "failed" if "failed" in statuses else "success"
