"""Prove it against a model: hypothesis drives the real service and a pure model side by side.

A RuleBasedStateMachine calls two in-process app instances sharing one real redis-server
(append-only file, fsync always) and one virtual clock, and after every call compares
the answer with what tests/model.py (the documented rules, nothing else) predicts. After
every step the invariants are checked against what the service shows:

- no 5xx answer, ever (but a documented 503 redis_unavailable right after a Redis restart,
  and then nothing acknowledged may be lost);
- GET /get_status/<wf> is the model's state (status, batch_id, from_date, to_date,
  batch_start, next_from_date, parameters);
- GET /history/<wf>: batch ids unique and strictly increasing; every snapshot is the model's;
  no window has from_date > to_date; a batch that is not the current one, or a job that left
  the workflow, has a final status (success, failed, abandoned); GET /batch/<wf>/<id> of the
  current batch agrees; GET /batches?status=open lists only the current batch of a workflow;
- successful windows of a job tile time: a gap only after an operator moved from_date
  forward, an overlap only where reprocess_hours, trunc_start or an operator explain it;
- GET /events/<wf> replays the state: the events a call appends are the model's, and each
  event's from_before/from_after is each job's watermark before/after the call;
- GET /coverage/<wf>: each job's ledger is the union of its successful windows (batches and
  backfill chunks), its holes the gaps between them;
- GET /backfill/<wf>/<id>: every chunk has the model's status and attempts (never more than
  max_attempts), the progress counts and the backfill's status follow.

Jobs carry window policies (batch_size, max_window_hours, settle_minutes, also workflow-wide
under .batchy), so every window, caught_up and behind_seconds is checked against the documented
rule. Backfills are created, leased, closed and failed (stale attempts and retries included)
renewed and cancelled; their leases never run out here (lease expiry counts Redis' own TIME, which
the virtual clock does not move: tests/test_backfill.py covers it).

Replay a failure with the BATCHY_MODEL_SEED it prints (or the @reproduce_failure blob).
Longer runs: BATCHY_MODEL_EXAMPLES (a count, or a multiple of the default such as 10x),
BATCHY_MODEL_STEPS (steps per example), BATCHY_MODEL_SHRINK_SECONDS (how long a failure
is shrunk, default 180).
"""
from __future__ import annotations

import copy
import json
import os
import random
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, seed, settings, strategies as st
from hypothesis.internal.conjecture import engine
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule, \
    run_state_machine_as_test

from batchy import create_app, settings as batchy_settings
from batchy.storage.clock import Clock
from batchy.testing import RedisCluster, RedisServer
from batchy.web.db import services_of

from . import model

# Part of every CI run (about two minutes); the defects it found are fixed, each with a test
# of its own in tests/test_robustness.py or tests/test_transfer.py.
pytestmark = pytest.mark.slow

UTC = timezone.utc
START = datetime(2024, 3, 9, 22, 0, tzinfo=UTC)  # the US (Mar 10) and EU (Mar 31) DST changes within reach
DEFAULT_EXAMPLES = 300
DEFAULT_STEPS = 40

WORKFLOWS = ("alpha", "beta", "gamma")
SETTINGS = {"alpha": {}, "beta": {"settle_minutes": 10}, "gamma": {"exclusive": True, "lease_hours": 2}}
JOBS = ("j_plain", "j_rh", "j_tz", "j_bare")
# from_date as a YAML author writes it (None: no from_date, the beginning of time).
FROM_DATES = (None, "2024-01-01", "2024-02-15 10:30:00", "'2024-01-01T06:00:00+01:00'",
              "'2023-12-31T23:00:00Z'", "'2024-03-01'")
ZONES = (None, "UTC", "Europe/Paris", "America/New_York")

job_specs = st.fixed_dictionaries({
    "from_date": st.sampled_from(FROM_DATES),
    "reprocess_hours": st.sampled_from((None, 0, 0.5, 2, 24)),
    "trunc_start": st.sampled_from((None, False, True)),
    "timezone": st.sampled_from(ZONES),
    # The window policy (mostly none, the seed's rule); a 6-hour max with whole days is refused.
    "batch_size": st.sampled_from((None, None, "hour", "day")),
    "max_window_hours": st.sampled_from((None, None, None, 6, 30, 72)),
    "settle_minutes": st.sampled_from((None, None, 0, 45)),
})
files = st.dictionaries(st.sampled_from(JOBS), job_specs, min_size=1, max_size=4)
workflows = st.sampled_from(WORKFLOWS)
apps = st.sampled_from((0, 1))
maybe_job = st.one_of(st.none(), st.sampled_from(JOBS))
transports = st.sampled_from(("get", "json", "form"))
# Jobs on their own schedule: an open of every job, or of one or two named.
job_sets = st.one_of(st.none(), st.lists(st.sampled_from(JOBS), min_size=1, max_size=2, unique=True))


def text(value):
    """A parameter as a query string or a form sends it (a list: the parameter repeated)."""
    if isinstance(value, list):
        return [text(v) for v in value]
    return str(value).lower() if isinstance(value, bool) else str(value)


# Which lease_token a worker's call carries: mostly its lease's, now and then none or a guess.
tokens = st.sampled_from(("right", "right", "right", "missing", "guessed"))
verdicts = st.sampled_from((None, None, "pass", "fail"))  # a success's quality check (dq)


def lease_token(chunk: dict, which: str) -> str | None:
    """Return the lease_token a call carries: the chunk's latest lease's, none, or a guess."""
    return {"right": chunk.get("token"), "missing": None, "guessed": "0123456789abcdef" * 2}[which]


# Virtual time moves by seconds, hours or days.
delays = st.one_of(st.integers(0, 120), st.integers(120, 4 * 3600), st.integers(4 * 3600, 3 * 86400))


def examples() -> int:
    value = os.environ.get("BATCHY_MODEL_EXAMPLES", "").strip()
    if not value:
        return DEFAULT_EXAMPLES
    if value.endswith("x"):
        return int(float(value[:-1]) * DEFAULT_EXAMPLES)
    return int(value)


def render(spec: dict, workflow_settings: dict) -> str:
    """The YAML text of a workflow file."""
    lines = []
    if workflow_settings:
        lines.append(".batchy:")
        lines += [f"  {k}: {json.dumps(v)}" for k, v in workflow_settings.items()]
    for job, params in spec.items():
        lines.append(f"{job}:")
        for key, value in params.items():
            if value is not None:
                lines.append(f"  {key}: {json.dumps(value) if isinstance(value, bool) else value}")
    return "\n".join(lines) + "\n"


def when(text):
    return None if text is None else datetime.fromisoformat(text)


class FrozenClock(Clock):
    """Redis' clock, read as a virtual time that moves only when the test says so."""

    def __init__(self, start: datetime):
        super().__init__()
        self.virtual = start

    def moment(self, seconds: int) -> datetime:
        return self.virtual


class World:
    """The redis-server, the cfg folder, the clock and the two app instances of a run."""

    cluster = False

    def __init__(self):
        # The append-only file on tmpfs when there is one: fsync per write then costs 0.1 ms, not
        # 1 ms, and a restart of the process still replays it (a machine crash is not simulated).
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        self.server = RedisServer("--appendonly", "yes", "--appendfsync", "always",
                                  directory=tempfile.mkdtemp(prefix="batchy-model-redis-", dir=shm))
        self.cfg_dir = Path(tempfile.mkdtemp(prefix="batchy-model-cfg-"))
        self.clock = FrozenClock(START)
        self.apps = []
        self.stats: Counter = Counter()
        try:
            self.server.start()
            # Every setting at its default whatever the environment says (the model assumes them).
            config = {**batchy_settings.load(environ={}), "BATCHY_REDIS_URL": self.server.url,
                      "BATCHY_CFG_DIR": str(self.cfg_dir), "CLOCK": self.clock}
            self.apps = [create_app(config), create_app(config)]
        except BaseException:
            self.close()
            raise
        self.clients = [app.test_client() for app in self.apps]

    def stores(self):
        return [services_of(app).store for app in self.apps]

    def reset(self) -> None:
        """A fresh start for one example: empty Redis, forgetful processes, START o'clock."""
        client = self.server.client()
        try:
            client.flushdb()  # the redis-server this test started itself (self.server), database 0
        finally:
            client.close()
        for store in self.stores():
            store.cache.clear()
        self.clock.virtual = START
        for path in self.cfg_dir.glob("*.yaml"):
            path.unlink()

    def close(self) -> None:
        """Stop the redis-server and remove every file of the run."""
        try:
            for store in self.stores():
                store.transport.close()
        finally:
            self.server.cleanup()
            shutil.rmtree(self.cfg_dir, ignore_errors=True)


class BatchyMachine(RuleBasedStateMachine):
    def __init__(self, world: World):
        super().__init__()
        self.w = world
        world.reset()
        world.stats["examples"] += 1
        self.model = {wf: model.empty_workflow() for wf in WORKFLOWS}
        self.pending = {wf: [] for wf in WORKFLOWS}  # audit events the calls since the last check appended
        self.seen = {wf: (0, 0) for wf in WORKFLOWS}  # the last audit event id checked
        self.fresh: set[int] = set()  # apps that have not reached Redis since it restarted
        self.backups: dict[str, tuple[dict, dict]] = {}
        # a restart costs about 0.1 s: a few per example (none on a cluster: its failover has its own test)
        self.restarts_left = 0 if world.cluster else 2
        self.touched = set(WORKFLOWS)  # workflows the invariants check next: those a step called
        self.reads = 0

    # -- talking to the service ------------------------------------------------------------

    @property
    def now(self) -> datetime:
        return self.w.clock.virtual

    def call(self, app: int, path: str, params: dict | None = None, via: str = "get", headers=None):
        client = self.w.clients[app]
        params = {k: v for k, v in (params or {}).items() if v is not None}
        if via == "json":
            resp = client.post(path, json=params, headers=headers)
        elif via == "form":
            resp = client.post(path, data={k: text(v) for k, v in params.items()}, headers=headers)
        else:
            query = {k: text(v) for k, v in params.items()}
            resp = client.get(path, query_string=query or None, headers=headers)
        body = resp.get_json(silent=True)
        self.w.stats["requests"] += 1
        if resp.status_code == 503 and app in self.fresh:
            assert body and body.get("error") == "redis_unavailable", \
                f"{path}: a 503 after a Redis restart must be the documented redis_unavailable, not {body}"
            self.w.stats["503 right after a Redis restart"] += 1
            return resp
        assert resp.status_code < 500, f"no 5xx, ever: {via} {path} {params} answered {resp.status_code} {body}"
        self.fresh.discard(app)
        return resp

    def read(self, path: str, app: int | None = None):
        """A GET that must answer (the invariants' reads), through either instance."""
        if app is None:
            self.reads += 1
            app = self.reads % 2
        resp = self.call(app, path)
        deadline = time.monotonic() + 10
        while resp.status_code == 503 and time.monotonic() < deadline:  # only right after a restart
            time.sleep(0.05)
            resp = self.call(app, path)
        assert resp.status_code != 503, f"{path}: still 503 10 s after Redis came back"
        return resp

    def expect(self, wf: str, resp, result: model.Result, what: str) -> None:
        """Check an answer against the model's prediction; on success the model moves on."""
        body = resp.get_json(silent=True)
        name = what.split("(")[0]
        self.touched.add(wf)
        if resp.status_code == 503:  # right after a restart: applied or not, never half
            self.reconcile(wf, result, what)
            return
        self.w.stats[f"{name} -> {resp.status_code}{' ' + result.error if result.error else ''}"] += 1
        assert (resp.status_code, body.get("error") if resp.status_code != 200 else None) == \
            (result.status, result.error), \
            f"{what}: the model expects {result.status} {result.error or ''}, the service answered " \
            f"{resp.status_code} {body}"
        if result.ok:
            if result.wf is not None:
                self.model[wf] = result.wf
            self.pending[wf] += result.events
            if result.answer is not None:
                self.compare_jobs(body, result.answer, f"{what}: the answer")
            elif name not in ("pause", "resume"):
                self.compare_jobs(body, self.model[wf]["jobs"], f"{what}: the answer")

    def reconcile(self, wf: str, result: model.Result, what: str) -> None:
        """A 503 after a restart is ambiguous: the state must be the model's before or after."""
        status = self.read(f"/get_status/{wf}").get_json()
        before = self.model[wf]["jobs"]
        after = result.wf["jobs"] if result.ok and result.wf is not None else before
        if not self.mismatches(status, after):
            if result.ok and result.wf is not None:
                self.model[wf] = result.wf
                self.pending[wf] += result.events
            self.w.stats[f"{what.split('(')[0]} -> 503, applied"] += 1
            return
        assert not self.mismatches(status, before), \
            f"{what} answered 503 and left a state that is neither before nor after it: {status}"
        self.w.stats[f"{what.split('(')[0]} -> 503, not applied"] += 1

    # -- comparing -----------------------------------------------------------------------

    FIELDS = ("status", "batch_id", "from_date", "to_date", "batch_start", "next_from_date",
              "reprocess_hours", "trunc_start", "timezone", *model.POLICY_FIELDS, "caught_up", "behind_seconds")
    TIMES = ("from_date", "to_date", "batch_start", "next_from_date")

    def mismatches(self, actual: dict, expected: dict) -> list[str]:
        found = []
        if sorted(actual) != sorted(expected):
            return [f"jobs {sorted(actual)} != model {sorted(expected)}"]
        for name, job in expected.items():
            got = actual[name]
            for key in self.FIELDS:
                value = when(got.get(key)) if key in self.TIMES else got.get(key)
                if value != job[key]:
                    found.append(f"{name}.{key}: service {got.get(key)!r}, model {job[key]!r}")
            if got.get("from_date") and got.get("to_date"):
                if when(got["from_date"]) > when(got["to_date"]):
                    found.append(f"{name}: from_date {got['from_date']} > to_date {got['to_date']}")
        return found

    def compare_jobs(self, actual: dict, expected: dict, where: str) -> None:
        found = self.mismatches(actual, expected)
        assert not found, f"{where} differs from the model:\n  " + "\n  ".join(found)

    # -- setup ---------------------------------------------------------------------------

    @initialize(alpha=files, beta=files, gamma=files)
    def load_every_workflow(self, alpha, beta, gamma):
        for wf, spec in zip(WORKFLOWS, (alpha, beta, gamma)):
            self.write_file(wf, spec)
            self.load(wf, 0, None, False, "get")

    def write_file(self, wf: str, spec: dict) -> None:
        (self.w.cfg_dir / f"{wf}.yaml").write_text(render(spec, SETTINGS[wf]))
        self.model[wf]["file"] = spec

    # -- rules ---------------------------------------------------------------------------

    @rule(seconds=delays)
    def time_passes(self, seconds):
        self.w.clock.virtual += timedelta(seconds=seconds)

    @rule(wf=workflows, app=apps, new_file=st.none() | files, reset=st.booleans(), via=transports)
    def load(self, wf, app, new_file, reset, via):
        """load_cfg, after the file was edited (jobs added, removed, parameters changed) or not."""
        if new_file is not None:
            self.write_file(wf, new_file)
        result = model.load(self.model[wf], self.model[wf]["file"], SETTINGS[wf], self.now, reset=reset)
        if result.wf is not None:
            result.wf["file"] = self.model[wf]["file"]
        resp = self.call(app, f"/load_cfg/{wf}", {"reset": reset or None}, via)
        self.expect(wf, resp, result, f"load(wf={wf!r}, reset={reset})")

    @rule(wf=workflows, app=apps, via=transports)
    def open(self, wf, app, via):
        result = model.open_batch(self.model[wf], self.now)
        self.expect(wf, self.call(app, f"/open_batch/{wf}", via=via), result, f"open(wf={wf!r})")

    @rule(wf=workflows, app=apps, jobs=job_sets.filter(bool), via=transports)
    def open_jobs(self, wf, app, jobs, via):
        """open_batch?job=...: only those jobs get a new batch; the others stay as they are."""
        result = model.open_batch(self.model[wf], self.now, jobs=jobs)
        resp = self.call(app, f"/open_batch/{wf}", {"job": jobs}, via)
        self.expect(wf, resp, result, f"open_jobs(wf={wf!r}, jobs={jobs})")

    @rule(wf=workflows, app=apps, key=st.sampled_from(("run-1", "run-2")), jobs=job_sets)
    def open_with_key(self, wf, app, key, jobs):
        """open_batch with an Idempotency-Key: a reused key is a retry of the open it made (per set of jobs)."""
        result = model.open_batch(self.model[wf], self.now, key=key, jobs=jobs)
        resp = self.call(app, f"/open_batch/{wf}", {"job": jobs}, via="json", headers={"Idempotency-Key": key})
        self.expect(wf, resp, result, f"open_with_key(wf={wf!r}, key={key!r}, jobs={jobs})")

    @rule(wf=workflows, app=apps)
    def open_dry_run(self, wf, app):
        result = model.open_batch(self.model[wf], self.now, dry_run=True)
        resp = self.call(app, f"/open_batch/{wf}", {"dry_run": True})
        self.expect(wf, resp, result, f"open_dry_run(wf={wf!r})")

    @rule(wf=workflows, app=apps, outcome=st.sampled_from(("success", "failed")), job=maybe_job,
          which=st.sampled_from(("none", "current", "own", "older")), repeat=st.booleans(), via=transports,
          dq=verdicts)
    def close(self, wf, app, outcome, job, which, repeat, via, dq=None):
        """close_batch / fail_batch, of the workflow or one job, with or without batch_id, maybe twice;
        a success maybe with a quality verdict (dq=fail: not covered)."""
        dq = dq if outcome == "success" else None
        m = self.model[wf]
        own = m["jobs"][job]["batch_id"] if job in m["jobs"] else None  # a job's own batch (its own schedule)
        batch_id = {"none": None, "current": m["last_batch_id"], "own": own,
                    "older": max((b for b in m["batches"] if b != m["last_batch_id"]), default=1)}[which]
        path = f"/{'close' if outcome == 'success' else 'fail'}_batch/{wf}"
        for attempt in range(2 if repeat else 1):
            result = model.close_batch(self.model[wf], outcome, self.now, job=job, batch_id=batch_id, dq=dq)
            resp = self.call(app, path, {"job": job, "batch_id": batch_id, "dq": dq}, via)
            self.expect(wf, resp, result, f"close(wf={wf!r}, outcome={outcome!r}, job={job!r}, "
                                          f"batch_id={batch_id}, dq={dq!r}, attempt={attempt + 1})")

    @rule(wf=workflows, app=apps, job=maybe_job, back=st.integers(-86400, 40 * 86400),
          form=st.sampled_from(("utc", "naive", "paris", "unix")), force=st.booleans(), via=transports)
    def set_from_date(self, wf, app, job, back, form, force, via):
        """set_from_date, back seconds before now (a negative back: in the future, a 400)."""
        moment = self.now - timedelta(seconds=back)
        text = {"utc": moment.isoformat(), "naive": moment.strftime("%Y-%m-%dT%H:%M:%S"),
                "paris": moment.astimezone(timezone(timedelta(hours=1))).isoformat(),
                "unix": str(int(moment.timestamp()))}[form]
        result = model.set_from_date(self.model[wf], model.operator_time(text), self.now, job=job, force=force)
        resp = self.call(app, f"/set_from_date/{wf}", {"from_date": text, "job": job, "force": force or None}, via)
        self.expect(wf, resp, result, f"set_from_date(wf={wf!r}, from_date={text!r}, job={job!r}, force={force})")

    @rule(wf=workflows, app=apps, pick=st.integers(-1, 30), job=maybe_job, force=st.booleans())
    def rewind(self, wf, app, pick, job, force):
        """rewind to a past batch (pick counts back from the newest; -1: a batch that never was)."""
        ids = sorted(self.model[wf]["batches"], reverse=True)
        batch_id = ids[pick % len(ids)] if ids and pick >= 0 else 1234567
        result = model.rewind(self.model[wf], batch_id, self.now, job=job, force=force)
        resp = self.call(app, f"/rewind/{wf}", {"batch_id": batch_id, "job": job, "force": force or None})
        self.expect(wf, resp, result, f"rewind(wf={wf!r}, batch_id={batch_id}, job={job!r}, force={force})")

    @rule(wf=workflows, app=apps)
    def pause(self, wf, app):
        self.expect(wf, self.call(app, f"/pause/{wf}", {"message": "model"}), model.pause(self.model[wf]),
                    f"pause(wf={wf!r})")

    @rule(wf=workflows, app=apps)
    def resume(self, wf, app):
        self.expect(wf, self.call(app, f"/resume/{wf}"), model.resume(self.model[wf]), f"resume(wf={wf!r})")

    @rule(wf=workflows, app=apps, job=maybe_job, back=st.integers(-3600, 40 * 86400), hours=st.integers(-2, 72),
          reason=st.none() | st.just("late rows"), within=st.none() | st.floats(0, 1))
    def invalidate(self, wf, app, job, back, hours, reason, within):
        """Late data: invalidate [now - back, + hours) of every job or one (a backwards range: a 400), or
        (within) a range starting inside what the jobs' ledgers hold."""
        low = self.now - timedelta(seconds=back)
        spans = [span for name in sorted(self.model[wf]["jobs"]) for span in self.model[wf]["ledger"].get(name, [])]
        if within is not None and spans:
            first, last = spans[int(within * (len(spans) - 1))]
            low = first + (last - first) * within
            low = low.replace(microsecond=0)
        high = low + timedelta(hours=hours)
        result = model.invalidate(self.model[wf], low, high, jobs=[job] if job else None)
        resp = self.call(app, f"/invalidate/{wf}", {"from": low.isoformat(), "to": high.isoformat(), "job": job,
                                                    "reason": reason}, "form")
        self.expect(wf, resp, result, f"invalidate(wf={wf!r}, from={low.isoformat()}, to={high.isoformat()}, "
                                      f"job={job!r})")

    @rule(wf=workflows, app=apps, seconds=delays, outcome=st.sampled_from(("success", "success", "failed")),
          per_job=st.booleans())
    def etl_run(self, wf, app, seconds, outcome, per_job):
        """A whole ETL run: open, extract for a while, close (or fail) with its batch_id, whole or job by job."""
        before = self.model[wf]["last_batch_id"]
        self.open(wf, app, "json")
        batch_id = self.model[wf]["last_batch_id"]
        if batch_id == before:
            return  # refused (paused, exclusive)
        self.time_passes(seconds)
        path = f"/{'close' if outcome == 'success' else 'fail'}_batch/{wf}"
        for job in sorted(self.model[wf]["jobs"]) if per_job else [None]:
            result = model.close_batch(self.model[wf], outcome, self.now, job=job, batch_id=batch_id)
            resp = self.call(1 - app, path, {"job": job, "batch_id": batch_id}, "form")
            self.expect(wf, resp, result, f"close(wf={wf!r}, outcome={outcome!r}, job={job!r}, batch_id={batch_id})")

    @rule(wf=workflows, first=apps, second=apps, seconds=delays)
    def crash(self, wf, first, second, seconds):
        """An ETL opens and dies without closing; later the next run opens the workflow."""
        self.open(wf, first, "get")
        self.time_passes(seconds)
        self.open(wf, second, "json")

    @precondition(lambda self: self.restarts_left > 0)
    @rule(kill=st.booleans(), first=st.sampled_from(("status", "open", "close", "set_from_date")),
          wf=workflows, app=apps)
    def redis_restarts(self, kill, first, wf, app):
        """Redis stops (SIGTERM, or SIGKILL as a crash) and starts again on its append-only file.

        The apps reconnect by themselves: their first call answers, or gives the documented
        503 and leaves the change applied whole or not at all; nothing acknowledged is lost.
        """
        self.restarts_left -= 1
        (self.w.server.kill if kill else self.w.server.stop)()
        self.w.server.start()
        self.w.stats["redis restarts"] += 1
        self.fresh = {0, 1}
        self.touched.update(WORKFLOWS)  # nothing acknowledged may be lost, anywhere
        if first == "status":
            resp = self.call(app, f"/get_status/{wf}")
            if resp.status_code != 503:
                expected = model.Result(200) if self.model[wf]["loaded"] else model.refuse(404, "workflow_not_found")
                self.expect(wf, resp, expected, f"first call after restart: get_status(wf={wf!r})")
        elif first == "open":
            self.open(wf, app, "get")
        elif first == "close":
            self.close(wf, app, "success", None, "current", False, "get")
        else:
            self.set_from_date(wf, app, None, 3600, "utc", True, "get")
        for other in (0, 1):  # the other paths of both apps (their pools) answer too
            self.read("/readyz", other)
            self.read(f"/history/{wf}?limit=1", other)
        self.fresh.clear()

    @rule(wf=workflows, app=apps)
    def export_import(self, wf, app):
        """export([wf]) and import_(doc, replace=True) at once: nothing changes but an import event."""
        store = self.w.stores()[app]
        if not self.model[wf]["loaded"]:
            return
        doc = json.loads(json.dumps(store.export([wf])))  # as the command line writes and reads it
        assert store.import_(doc, replace=True) == [wf]
        result = model.restore(self.model[wf], self.model[wf], self.now)
        self.touched.add(wf)
        self.model[wf] = result.wf
        self.pending[wf] += result.events
        self.w.stats["export_import"] += 1

    @rule(wf=workflows, app=apps)
    def backup(self, wf, app):
        """export([wf]) kept aside, with the model of the workflow at that moment."""
        if self.model[wf]["loaded"]:
            doc = json.loads(json.dumps(self.w.stores()[app].export([wf])))
            self.backups[wf] = (doc, copy.deepcopy(self.model[wf]))

    @rule(wf=workflows, app=apps)
    def restore_backup(self, wf, app):
        """import_(an older export, replace=True): the workflow goes back to it; ids keep increasing."""
        if wf not in self.backups:
            return
        doc, then = self.backups[wf]
        assert self.w.stores()[app].import_(doc, replace=True) == [wf]
        result = model.restore(self.model[wf], then, self.now)
        self.touched.add(wf)
        self.model[wf] = result.wf
        self.pending[wf] += result.events
        self.w.stats["restore_backup"] += 1

    # -- backfills ----------------------------------------------------------------------------

    def backfill_call(self, wf: str, resp, result: model.Result, what: str) -> dict | None:
        """Check a backfill call's status (and error) against the model; on success the model moves on."""
        body = resp.get_json(silent=True) or {}
        self.touched.add(wf)
        self.w.stats[f"{what.split('(')[0]} -> {resp.status_code}{' ' + result.error if result.error else ''}"] += 1
        assert (resp.status_code, body.get("error") if resp.status_code >= 400 else None) == \
            (result.status, result.error), \
            f"{what}: the model expects {result.status} {result.error or ''}, the service answered " \
            f"{resp.status_code} {body}"
        if resp.status_code < 300:
            if result.wf is not None:
                self.model[wf] = result.wf
            self.pending[wf] += result.events
        return body

    def pick_backfill(self, wf: str, pick: int) -> int | None:
        """One of the workflow's backfills (pick counts back from the newest), or one that never was
        (pick -1); None when the workflow has none (the rule then does nothing)."""
        ids = sorted(self.model[wf]["backfills"], reverse=True)
        if pick < 0:
            return 99
        return ids[pick % len(ids)] if ids else None

    @rule(wf=workflows, app=apps, job=maybe_job, days_back=st.integers(-1, 5), hours=st.integers(1, 60),
          step=st.sampled_from((None, "hour", "day", 5, 12)), max_attempts=st.integers(1, 3), via=transports)
    def backfill_create(self, wf, app, job, days_back, hours, step, max_attempts, via):
        """POST /backfill: a past range of a job (or all), in chunks of a unit, of hours, or of each job's own unit."""
        end = self.now.replace(second=0) - timedelta(days=days_back)  # days_back -1: a `to` in the future
        start = end - timedelta(hours=hours)
        unit = step if isinstance(step, str) else None
        chunk_hours = step if isinstance(step, int) else None
        result, spans = model.backfill_create(self.model[wf], start, end, self.now, job=job, batch_size=unit,
                                              chunk_hours=chunk_hours)
        params = {"from": start.isoformat(), "to": end.isoformat(), "job": job, "batch_size": unit,
                  "chunk_hours": chunk_hours, "max_attempts": max_attempts}
        resp = self.call(app, f"/backfill/{wf}", params, via if via != "get" else "json")
        what = f"backfill_create(wf={wf!r}, job={job!r}, from={start}, to={end}, step={step!r})"
        body = self.backfill_call(wf, resp, result, what)
        if resp.status_code != 201:
            return
        got = sorted((c["job"], when(c["from_date"]), when(c["to_date"])) for c in body["chunks"])
        assert got == sorted(spans), f"{what}: chunks {got}, the model {sorted(spans)}"
        backfill_id = body["backfill_id"]
        assert backfill_id not in self.model[wf]["backfills"] and \
            all(backfill_id > other for other in self.model[wf]["backfills"]), f"{what}: id {backfill_id} reused"
        self.model[wf]["backfills"][backfill_id] = {
            "max_attempts": max_attempts, "cancelled": False,
            "chunks": {c["chunk"]: {"job": c["job"], "from_date": when(c["from_date"]), "to_date": when(c["to_date"]),
                                    "status": "pending", "attempts": 0, "outcome": None} for c in body["chunks"]}}
        self.w.stats["backfill chunks created"] += len(body["chunks"])

    @rule(wf=workflows, app=apps, pick=st.integers(-1, 3))
    def backfill_lease(self, wf, app, pick):
        """A worker leases the next chunk due: the lowest-numbered pending one."""
        backfill_id = self.pick_backfill(wf, pick)
        if backfill_id is None:
            return
        result, number = model.backfill_lease(self.model[wf], backfill_id)
        resp = self.call(app, f"/backfill/{wf}/{backfill_id}/lease", {"lease_seconds": 3600}, "form")
        what = f"backfill_lease(wf={wf!r}, backfill_id={backfill_id})"
        body = self.backfill_call(wf, resp, result, what)
        if number is not None:
            chunk = self.model[wf]["backfills"][backfill_id]["chunks"][number]
            assert len(body["lease_token"]) >= 32, f"{what}: a lease_token of less than 128 bits: {body}"
            chunk["token"] = body["lease_token"]
            assert (body["chunk"], body["job"], when(body["from_date"]), when(body["to_date"]), body["attempt"]) == \
                (number, chunk["job"], chunk["from_date"], chunk["to_date"], chunk["attempts"]), \
                f"{what}: leased {body}, the model chunk {number} {chunk}"

    @rule(wf=workflows, app=apps, pick=st.integers(-1, 3), which=st.integers(0, 10_000),
          leased=st.booleans(), outcome=st.sampled_from(("success", "success", "failed")),
          attempt_off=st.sampled_from((0, 0, 0, -1, 1)), repeat=st.booleans(), token=tokens, dq=verdicts)
    def backfill_finish(self, wf, app, pick, which, leased, outcome, attempt_off, repeat, token, dq=None):
        """A worker closes or fails its chunk's attempt (maybe a stale attempt, maybe twice)."""
        backfill_id = self.pick_backfill(wf, pick)
        if backfill_id is None:
            return
        fill = self.model[wf]["backfills"].get(backfill_id)
        numbers = sorted(fill["chunks"]) if fill else [0]
        if fill and leased:
            numbers = [n for n in numbers if fill["chunks"][n]["status"] == "leased"] or numbers
        number = numbers[which % len(numbers)]
        attempt = (fill["chunks"][number]["attempts"] if fill else 1) + attempt_off
        token = lease_token(fill["chunks"][number] if fill else {}, token)
        path = f"/backfill/{wf}/{backfill_id}/{'close' if outcome == 'success' else 'fail'}"
        for _ in range(2 if repeat else 1):
            dq = dq if outcome == "success" else None
            result = model.backfill_finish(self.model[wf], backfill_id, number, attempt, outcome, token, dq)
            resp = self.call(1 - app, path, {"chunk": number, "attempt": attempt, "records_processed": 7,
                                             "lease_token": token, "dq": dq}, "form")
            self.backfill_call(wf, resp, result, f"backfill_finish(wf={wf!r}, backfill_id={backfill_id}, "
                                                 f"chunk={number}, attempt={attempt}, outcome={outcome!r})")

    @rule(wf=workflows, app=apps, pick=st.integers(-1, 3), which=st.integers(0, 10_000),
          attempt_off=st.sampled_from((0, 0, -1, 1)), token=tokens)
    def backfill_renew(self, wf, app, pick, which, attempt_off, token):
        """A worker's heartbeat: renew a chunk's lease (maybe not its attempt's, maybe ended)."""
        backfill_id = self.pick_backfill(wf, pick)
        if backfill_id is None:
            return
        fill = self.model[wf]["backfills"].get(backfill_id)
        numbers = sorted(fill["chunks"]) if fill else [0]
        number = numbers[which % len(numbers)]
        attempt = (fill["chunks"][number]["attempts"] if fill else 1) + attempt_off
        token = lease_token(fill["chunks"][number] if fill else {}, token)
        resp = self.call(app, f"/backfill/{wf}/{backfill_id}/renew", {"chunk": number, "attempt": attempt,
                                                                      "lease_token": token}, "form")
        self.backfill_call(wf, resp, model.backfill_renew(self.model[wf], backfill_id, number, attempt, token),
                           f"backfill_renew(wf={wf!r}, backfill_id={backfill_id}, chunk={number}, attempt={attempt})")

    @rule(wf=workflows, app=apps, pick=st.integers(0, 3),
          outcomes=st.lists(st.sampled_from(("success", "failed")), min_size=1, max_size=6), repeat=st.booleans())
    def backfill_worker(self, wf, app, pick, outcomes, repeat):
        """`batchy backfill run`'s loop: lease a chunk, run it, close or fail it with the attempt leased."""
        backfill_id = self.pick_backfill(wf, pick)
        if backfill_id is None:
            return
        for outcome in outcomes:
            before = self.model[wf]
            self.backfill_lease(wf, app, pick)
            if self.model[wf] is before:
                return  # nothing due (204), or paused
            number = next(n for n, c in sorted(self.model[wf]["backfills"][backfill_id]["chunks"].items())
                          if c["status"] == "leased" and before["backfills"][backfill_id]["chunks"][n]["status"]
                          == "pending")
            attempt = self.model[wf]["backfills"][backfill_id]["chunks"][number]["attempts"]
            token = self.model[wf]["backfills"][backfill_id]["chunks"][number]["token"]
            path = f"/backfill/{wf}/{backfill_id}/{'close' if outcome == 'success' else 'fail'}"
            for _ in range(2 if repeat else 1):  # a retry after a lost answer
                result = model.backfill_finish(self.model[wf], backfill_id, number, attempt, outcome, token)
                resp = self.call(1 - app, path, {"chunk": number, "attempt": attempt, "lease_token": token}, "json")
                self.backfill_call(wf, resp, result, f"backfill_worker(wf={wf!r}, backfill_id={backfill_id}, "
                                                     f"chunk={number}, attempt={attempt}, outcome={outcome!r})")

    @rule(wf=workflows, app=apps, pick=st.integers(-1, 3))
    def backfill_cancel(self, wf, app, pick):
        backfill_id = self.pick_backfill(wf, pick)
        if backfill_id is None:
            return
        resp = self.call(app, f"/backfill/{wf}/{backfill_id}/cancel")
        self.backfill_call(wf, resp, model.backfill_cancel(self.model[wf], backfill_id),
                           f"backfill_cancel(wf={wf!r}, backfill_id={backfill_id})")

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def service_agrees_with_model(self):
        """After every step: the workflows it called (a restart: all) agree with the model."""
        self.w.stats["steps"] += 1
        if not self.touched:
            return  # time passed, or a backup was taken: nothing the service shows has changed
        for wf in sorted(self.touched):
            self.check_workflow(wf)
        self.touched.clear()
        self.check_open_batches()
        self.w.stats["steps checked"] += 1

    def check_workflow(self, wf: str) -> None:
        m = self.model[wf]
        resp = self.read(f"/get_status/{wf}")
        if not m["loaded"]:
            assert resp.status_code == 404, f"{wf} is not loaded, yet get_status answered {resp.status_code}"
            return
        assert resp.status_code == 200, resp.get_json()
        self.compare_jobs(resp.get_json(), m["jobs"], f"GET /get_status/{wf}")
        batches = self.read(f"/history/{wf}?limit=1000").get_json()["batches"]
        self.check_history(wf, batches)
        self.check_tiling(wf, batches)
        self.check_events(wf)
        self.check_coverage(wf)
        self.check_backfills(wf)
        if m["last_batch_id"] is not None and m["last_batch_id"] in m["batches"]:
            snap = self.read(f"/batch/{wf}/{m['last_batch_id']}").get_json()
            entry = next(b for b in batches if b["batch_id"] == m["last_batch_id"])
            for name, run in entry["jobs"].items():
                for key in ("status", "from_date", "to_date"):
                    assert snap[name].get(key) == run[key], \
                        f"GET /batch/{wf}/{m['last_batch_id']} {name}.{key} = {snap[name].get(key)!r}, " \
                        f"history says {run[key]!r}"

    def check_history(self, wf: str, batches: list[dict]) -> None:
        m = self.model[wf]
        ids = [b["batch_id"] for b in batches]
        assert ids == sorted(set(ids), reverse=True), f"{wf}: batch ids not unique and increasing: {ids}"
        assert ids == sorted(m["batches"], reverse=True), \
            f"{wf}: history lists batches {ids}, the model {sorted(m['batches'], reverse=True)}"
        for entry in batches:
            bid = entry["batch_id"]
            runs = m["batches"][bid]
            assert sorted(entry["jobs"]) == sorted(runs), f"{wf} batch {bid}: jobs {sorted(entry['jobs'])}"
            for name, run in entry["jobs"].items():
                start, end = when(run["from_date"]), when(run["to_date"])
                assert start <= end, f"{wf} batch {bid} {name}: from_date {start} > to_date {end}"
                expected = runs[name]
                assert (run["status"], start, end) == (expected["status"], expected["from_date"], expected["to_date"]), \
                    f"{wf} batch {bid} {name}: service {run['status']} [{run['from_date']}, {run['to_date']}), " \
                    f"model {expected['status']} [{expected['from_date']}, {expected['to_date']})"
                current = m["jobs"].get(name)
                # Jobs run on their own schedules: a line stays open only while its job runs in that batch.
                still_running = (current is not None and current["batch_id"] == bid
                                 and current["gen"] == expected["gen"])
                assert still_running or run["status"] in model.FINAL, \
                    f"{wf} batch {bid} {name} is {run['status']!r}, not final, though " + (
                        "the job left the workflow" if current is None else
                        f"the workflow's {name} is not running in it (status {current['status']}, "
                        f"batch {current['batch_id']})")
            assert entry["status"] == model.batch_status(runs), \
                f"{wf} batch {bid}: status {entry['status']!r}, model {model.batch_status(runs)!r}"

    def check_tiling(self, wf: str, batches: list[dict]) -> None:
        """Successful windows of each job (incarnation) leave no unexplained gap or overlap."""
        runs = self.model[wf]["batches"]
        sequences = defaultdict(list)
        for entry in sorted(batches, key=lambda b: b["batch_id"]):
            for name, run in entry["jobs"].items():
                sequences[(name, runs[entry["batch_id"]][name]["gen"])].append(
                    (entry["batch_id"], run, runs[entry["batch_id"]][name]))
        for (name, _gen), sequence in sequences.items():
            previous, since = None, []
            for bid, run, why in sequence:
                since.append(why)
                if run["status"] != "success":
                    continue
                if previous is not None:
                    self.w.stats["tiling: consecutive successes checked"] += 1
                    start, end = when(run["from_date"]), when(previous[1]["to_date"])
                    operator = any(w["operator"] for w in since)
                    where = f"{wf}.{name}: success window of batch {bid} starts {run['from_date']}, the " \
                            f"previous success (batch {previous[0]}) ended {previous[1]['to_date']}"
                    assert start <= end or operator, f"{where}: a gap no operator made"
                    self.w.stats[f"tiling: {'gap' if start > end else 'overlap' if start < end else 'exact'}"
                                 f"{' (operator)' if operator else ''}"] += 1
                    if start < end and not operator:
                        hours = max(w["rh"] for w in since)
                        trunc = any(w["trunc"] for w in since)
                        assert hours or trunc, f"{where}: an overlap neither reprocess_hours nor trunc_start explain"
                        floor = end - timedelta(hours=hours) - (timedelta(hours=26) if trunc else timedelta(0))
                        assert start >= floor, f"{where}: an overlap longer than reprocess_hours ({hours} h)"
                previous, since = (bid, run), []

    def check_events(self, wf: str) -> None:
        events = self.read(f"/events/{wf}?limit=200").get_json()["events"]
        key = lambda e: tuple(int(p) for p in e["id"].split("-"))  # noqa: E731
        new = sorted((e for e in events if key(e) > self.seen[wf]), key=key)
        expected = self.pending[wf]
        assert [e["action"] for e in new] == [e["action"] for e in expected], \
            f"{wf}: the audit log got {[e['action'] for e in new]}, the model expects {[e['action'] for e in expected]}"
        for got, want in zip(new, expected):
            if "from_after" not in want:
                continue
            assert got["batch_id"] == want["batch_id"] and got["jobs"] == want["jobs"], \
                f"{wf}: audit event {got} != model {want}"
            for part in ("from_before", "from_after"):
                actual = {job: when(value) for job, value in got[part].items()}
                assert actual == want[part], f"{wf}: {got['action']} event {part} {got[part]}, model {want[part]}"
        if new:
            self.seen[wf] = key(new[-1])
        self.pending[wf] = []

    def check_coverage(self, wf: str) -> None:
        """The ledger is the union of the job's successful windows (batches and backfill chunks)."""
        m = self.model[wf]
        ledgers = self.read(f"/coverage/{wf}").get_json()
        assert sorted(ledgers) == sorted(m["jobs"]), f"/coverage/{wf} lists {sorted(ledgers)}"
        for name, ledger in ledgers.items():
            covered = [[when(low), when(high)] for low, high in ledger["covered"]]
            holes = [[when(low), when(high)] for low, high in ledger["holes"]]
            # covered: the union of the successful, passing windows, less the ranges invalidated since
            expected = model.covered(m, name)
            extent = m["ledger"].get(name, [])
            assert covered == expected, f"/coverage/{wf} {name}: covered {ledger['covered']}, the model {expected}"
            expected_holes = model.minus([[extent[0][0], extent[-1][1]]], expected) if extent else []
            assert holes == expected_holes, f"/coverage/{wf} {name}: holes {ledger['holes']}, model {expected_holes}"
            for part, shown in (("dirty", "dirty"), ("failed", "failed_quality")):
                found = [[when(low), when(high)] for low, high in ledger[shown]]
                assert found == m[part].get(name, []), \
                    f"/coverage/{wf} {name}: {shown} {ledger[shown]}, the model {m[part].get(name, [])}"
            generation = m["jobs"][name].get("generation", 0)
            assert ledger["generation"] == generation, f"/coverage/{wf} {name}: generation {ledger['generation']}"
            self.w.stats["coverage: holes seen"] += len(holes)
            self.w.stats["coverage: dirty ranges seen"] += len(ledger["dirty"])
            self.w.stats["coverage: quality failures seen"] += len(ledger["failed_quality"])

    def check_backfills(self, wf: str) -> None:
        """Each backfill's chunks: the model's statuses and attempts, the counts and status that follow."""
        for backfill_id, fill in self.model[wf]["backfills"].items():
            body = self.read(f"/backfill/{wf}/{backfill_id}").get_json()
            got = {c["chunk"]: (c["status"], c["attempts"]) for c in body["chunks"]}
            expected = {n: (c["status"], c["attempts"]) for n, c in fill["chunks"].items()}
            assert got == expected, f"backfill {wf}/{backfill_id}: chunks {got}, the model {expected}"
            assert body["status"] == model.backfill_status(fill), \
                f"backfill {wf}/{backfill_id}: status {body['status']}, the model {model.backfill_status(fill)}"
            counts = Counter(c["status"] for c in fill["chunks"].values())
            assert all(body["progress"][status] == counts[status] for status in
                       ("pending", "leased", "success", "failed", "cancelled")), \
                f"backfill {wf}/{backfill_id}: progress {body['progress']}, the model {dict(counts)}"
            assert all(c["attempts"] <= fill["max_attempts"] for c in fill["chunks"].values())

    def check_open_batches(self) -> None:
        found = self.read("/batches?status=open&limit=1000").get_json()["batches"]
        listed = sorted((b["workflow"], b["batch_id"]) for b in found)
        expected = sorted((wf, bid) for wf in WORKFLOWS for bid in model.open_batches(self.model[wf]))
        assert listed == expected, f"/batches?status=open lists {listed}, the model {expected}"
        for wf, bid in listed:  # jobs on their own schedules: each open batch is some open job's own
            running = {job["batch_id"] for job in self.model[wf]["jobs"].values() if job["status"] == "open"}
            assert bid in running, \
                f"/batches?status=open lists {wf} batch {bid}, which no open job runs in ({sorted(running)})"


class ClusterWorld(World):
    """The same run on a Redis Cluster of our own (three primaries, a replica each)."""

    cluster = True

    def __init__(self):
        self.server = RedisCluster(masters=3, replicas=1)
        self.cfg_dir = Path(tempfile.mkdtemp(prefix="batchy-model-cfg-"))
        self.clock = FrozenClock(START)
        self.apps = []
        self.stats: Counter = Counter()
        try:
            self.server.start()
            config = {**batchy_settings.load(environ={}), "BATCHY_REDIS_URL": self.server.url,
                      "BATCHY_REDIS_CLUSTER": True, "BATCHY_CFG_DIR": str(self.cfg_dir), "CLOCK": self.clock}
            self.apps = [create_app(config), create_app(config)]
        except BaseException:
            self.close()
            raise
        self.clients = [app.test_client() for app in self.apps]

    def reset(self) -> None:
        client = self.server.client()
        try:
            client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)  # the cluster this test started itself
        finally:
            client.close()
        for store in self.stores():
            store.cache.clear()
        self.clock.virtual = START
        for path in self.cfg_dir.glob("*.yaml"):
            path.unlink()


@pytest.fixture(scope="module")
def world():
    w = World()
    yield w
    w.close()


def test_the_service_behaves_as_the_model(world, monkeypatch, capsys):
    run_model(world, monkeypatch, capsys, examples())


def run_model(world, monkeypatch, capsys, max_examples: int):
    # A failure is shrunk for at most this long (Hypothesis' own cap, 300 s, is documented
    # as monkeypatchable): a failing CI run stays within a few minutes.
    monkeypatch.setattr(engine, "MAX_SHRINKING_SECONDS", int(os.environ.get("BATCHY_MODEL_SHRINK_SECONDS") or 180))
    run_seed = int(os.environ.get("BATCHY_MODEL_SEED") or random.SystemRandom().randrange(2**32))
    with capsys.disabled():  # at the start, uncaptured: a run killed midway still names its seed
        print(f"\nBATCHY_MODEL_SEED={run_seed} (replay: BATCHY_MODEL_SEED={run_seed} pytest {__file__})", flush=True)

    @seed(run_seed)
    def machine():
        return BatchyMachine(world)

    started = time.monotonic()
    try:
        run_state_machine_as_test(machine, settings=settings(
            max_examples=max_examples,
            stateful_step_count=int(os.environ.get("BATCHY_MODEL_STEPS") or DEFAULT_STEPS),
            deadline=None,
            database=None,
            print_blob=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        ))
    except BaseException as exc:
        exc.add_note(f"replay with BATCHY_MODEL_SEED={run_seed}")
        raise
    finally:
        stats = world.stats
        print(f"\nBATCHY_MODEL_SEED={run_seed}: {stats['examples']} examples, {stats['steps']} steps "
              f"({stats['steps checked']} checked against the service), "
              f"{stats['requests']} requests in {time.monotonic() - started:.0f} s")
        for name, count in sorted(stats.items()):
            print(f"  {name}: {count}")


@pytest.fixture(scope="module")
def cluster_world():
    w = ClusterWorld()
    yield w
    w.close()


def test_the_service_behaves_as_the_model_on_a_cluster(cluster_world, monkeypatch, capsys):
    """The same model, on a Redis Cluster with cluster-style keys: a smaller budget
    (BATCHY_MODEL_CLUSTER_EXAMPLES, default 20)."""
    run_model(cluster_world, monkeypatch, capsys, int(os.environ.get("BATCHY_MODEL_CLUSTER_EXAMPLES") or 20))
