"""A pure reference model of Batchy, written from the documentation only (README concepts,
docs/api.md, docs/workflows.md), for tests/test_model.py.

One dict per workflow; every function takes a workflow and returns a Result: the status
code and error code the service must answer, the workflow after the call (a new dict,
the argument is never changed) and the audit events the call must append. No Redis, no
Flask, nothing imported from batchy.

A workflow:
    {"loaded": bool, "settings": {...}, "jobs": {name: job}, "last_batch_id": int | None,
     "batches": {batch_id: {name: run}}, "paused": bool, "idem": {key: batch_id},
     "gens": int}
A job (times are aware datetimes):
    {"status", "batch_id", "from_date", "to_date", "batch_start", "batch_end",
     "next_from_date", "reprocess_hours", "trunc_start", "timezone", "gen"}
A run, a job's line in a batch snapshot:
    {"status", "from_date", "to_date", "gen", "operator", "rh", "trunc"}
where gen names the incarnation of the job (a job removed from the file and added back,
or reset, is a new one) and operator/rh/trunc say what may explain an overlap or a gap
before this window: an operator's set_from_date/rewind consumed by this open, the
reprocess_hours and trunc_start it was opened with.
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
            "paused": False, "idem": {}, "gens": 0}


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

def params(spec: dict) -> dict:
    """The parameters a job of the file has (defaults filled in)."""
    return {
        "reprocess_hours": spec.get("reprocess_hours") or 0,
        "trunc_start": bool(spec.get("trunc_start")),
        "timezone": spec.get("timezone") or "UTC",
    }


def fresh_job(spec: dict, gen: int) -> dict:
    return {"status": "new", "batch_id": None, "from_date": file_time(spec.get("from_date"), spec.get("timezone")),
            "to_date": None, "batch_start": None, "batch_end": None, "next_from_date": None, "gen": gen,
            **params(spec)}


def abandon(wf: dict, jobs: dict) -> None:
    """Record, in place on wf (a copy), every open job of jobs as abandoned in its batch."""
    for name, job in jobs.items():
        if job["status"] == "open" and job["batch_id"] in wf["batches"]:
            wf["batches"][job["batch_id"]][name]["status"] = "abandoned"


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
    if job["status"] == "success" and job["batch_start"]:
        start = job["batch_start"] - timedelta(hours=job["reprocess_hours"])
    elif job["from_date"]:
        start = job["from_date"]  # new, failed, or still open (a crash): the same window again
    else:
        start = BEGINNING_OF_TIME
    if job["trunc_start"]:
        start = midnight(start, job["timezone"])
    return start, moved


def next_batch_id(wf: dict, now: datetime) -> int:
    return max(int(now.timestamp()), (wf["last_batch_id"] or 0) + 1)


def open_batch(wf: dict, now: datetime, *, key: str | None = None, dry_run: bool = False) -> Result:
    """open_batch: every job gets its window [from_date, now); open jobs are abandoned."""
    if dry_run and wf["paused"]:
        return refuse(423, "paused")
    if not wf["loaded"]:
        return refuse(404, "workflow_not_found")
    if key is not None and key in wf["idem"]:
        # A retry "answers the batch the first call opened instead of opening another"
        # (BATCHY_IDEMPOTENCY_HOURS, docs/operations.md): so before any refusal a new open
        # would get (exclusive, paused); a batch superseded since is 409 stale_batch.
        if wf["idem"][key] != wf["last_batch_id"]:
            return refuse(409, "stale_batch")
        return Result(200, answer=wf["jobs"], batch_id=wf["last_batch_id"])
    opened_now = [job for job in wf["jobs"].values() if job["status"] == "open"]
    if wf["settings"].get("exclusive") and opened_now:
        lease = wf["settings"].get("lease_hours")
        oldest = min(job["batch_start"] for job in opened_now)
        if lease is None or now - oldest <= timedelta(hours=lease):
            return refuse(409, "batch_open")
    batch_id = next_batch_id(wf, now)
    jobs, runs = {}, {}
    for name, job in wf["jobs"].items():
        start, operator = window_start(job)
        if start > now:
            return refuse(409, "from_date_in_future")
        jobs[name] = {**job, "status": "open", "batch_id": batch_id, "from_date": start, "to_date": now,
                      "batch_start": now, "batch_end": None, "next_from_date": None, "moved": False}
        runs[name] = {"status": "open", "from_date": start, "to_date": now, "gen": job["gen"],
                      "operator": operator, "rh": job["reprocess_hours"], "trunc": job["trunc_start"]}
    if dry_run:
        return Result(200, answer=jobs, batch_id=batch_id)
    if wf["paused"]:
        return refuse(423, "paused")
    new = copy.deepcopy(wf)
    abandon(new, wf["jobs"])
    new["batches"][batch_id] = runs
    new["jobs"] = jobs
    new["last_batch_id"] = batch_id
    if key is not None:
        new["idem"][key] = batch_id
    return Result(200, wf=new, events=[event("open", batch_id, wf["jobs"], jobs)], answer=jobs, batch_id=batch_id)


def close_batch(wf: dict, outcome: str, now: datetime, *, job: str | None = None,
                batch_id: int | None = None) -> Result:
    """close_batch (outcome success) / fail_batch (failed): the open jobs, or one.

    With batch_id: a stale one is 409 stale_batch; a repeat whose jobs already ended with
    this outcome is 200 and changes nothing. Nothing open is 409 not_open."""
    if not wf["loaded"]:
        return refuse(404, "workflow_not_found")
    jobs = wf["jobs"]
    if job is not None and job not in jobs:
        return refuse(404, "job_not_found")
    if batch_id is not None and batch_id != wf["last_batch_id"]:
        return refuse(409, "stale_batch")
    targets = [job] if job is not None else list(jobs)
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
        if changed["batch_id"] in new["batches"]:
            new["batches"][changed["batch_id"]][name]["status"] = outcome
        closed[name] = changed
    before = {name: jobs[name] for name in open_targets}
    return Result(200, wf=new, events=[event("close" if outcome == "success" else "fail", wf["last_batch_id"],
                                             before, closed)])


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


def restore(wf: dict, backup: dict) -> Result:
    """import --replace of an export taken when the workflow was backup: its jobs and
    settings come back, its batch snapshots are written over, newer snapshots stay,
    batch ids keep increasing."""
    new = copy.deepcopy(wf)
    new["jobs"] = copy.deepcopy(backup["jobs"])
    for name, job in new["jobs"].items():
        current = wf["jobs"].get(name)
        job["moved"] = job.get("moved") or current is None or {**current, "moved": False} != {**job, "moved": False}
    new["settings"] = dict(backup["settings"])
    # A batch open here that the import replaces can never close: it ends abandoned, unless
    # the export carries that batch (its snapshot then replaces it whole, just below).
    for name, current in wf["jobs"].items():
        bid = current.get("batch_id")
        if current["status"] == "open" and bid in new["batches"] and name in new["batches"][bid]:
            new["batches"][bid][name] = {**new["batches"][bid][name], "status": "abandoned"}
    for batch_id, runs in backup["batches"].items():
        new["batches"][batch_id] = copy.deepcopy(runs)
    known = [*backup["batches"], backup["last_batch_id"] or 0, wf["last_batch_id"] or 0]
    # A workflow that never opened a batch comes back with last batch id 0, not none (so a
    # later audit event names batch "0"): undocumented, harmless, reported, mirrored here.
    new["last_batch_id"] = max(known)
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
    """The batches /batches?status=open must list for the workflow: at most its current one."""
    return {bid for bid, runs in wf["batches"].items() if batch_status(runs) == "open"}
