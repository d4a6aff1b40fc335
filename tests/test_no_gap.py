"""No gap, ever: a seeded random ETL played against the real app on a real redis-server.

Each run opens a batch, "extracts" the window [from_date, to_date) it was handed, then
succeeds, fails, crashes, is overtaken by a newer run, or closes job by job; between
runs the config is reloaded and Redis restarts. Two app instances share the Redis.
The invariant, checked at every open and at the end, per job: the acknowledged
successful windows cover [first from_date, last successful batch_start) with no hole,
and any overlap is explained by reprocess_hours, trunc_start, or a rerun.

Replay a failure with BATCHY_SIM_SEED=<seed printed in the failure>; BATCHY_SIM_RUNS
sets how many runs are played (default 2000).
"""
from __future__ import annotations

import heapq
import json
import os
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest

from batchy import create_app
from batchy.testing import RedisServer
from batchy.rules.times import parse_time

from .reliability_helpers import UTC, VirtualClock, raw_client, snapshot

WF = "sim"
ZONES = ["UTC", "Europe/Paris", "Asia/Beirut", "Australia/Lord_Howe", "America/Havana", "Asia/Kolkata",
         "America/Santiago", "America/New_York"]
# Jobs as a YAML author writes them: dates quoted and unquoted, with and without offsets.
BASE_JOBS = {
    "plain": {"from_date": "2024-01-01"},
    "rh": {"from_date": "'2024-01-01 06:00:00+01:00'", "reprocess_hours": "2.5"},
    "paris": {"from_date": "2024-01-01T00:00:00Z", "trunc_start": "true", "timezone": "Europe/Paris",
              "reprocess_hours": "0.75"},
    "beirut": {"from_date": "'2024-01-01 00:00'", "trunc_start": "true", "timezone": "Asia/Beirut"},
    "howe": {"from_date": "'2023-12-31T23:00:00-0500'", "timezone": "Australia/Lord_Howe",
             "reprocess_hours": "0.5"},
    "epoch": {},  # no from_date: extracts from the beginning of time
}
TRUNC_SLACK = timedelta(hours=26)  # back to local midnight, across a DST change


@dataclass
class Window:
    batch_id: int
    start: datetime  # from_date
    end: datetime  # to_date
    outcome: str = "open"  # open -> success | failed | abandoned


@dataclass
class JobModel:
    """What the ETL knows for sure about one job: the windows it extracted and their outcome."""

    windows: list[Window] = field(default_factory=list)
    covered: datetime | None = None  # end of the gapless cover of [first from_date, ...)
    ahead: list = field(default_factory=list)  # heap of successful windows past the cover
    last_success_end: datetime | None = None

    def opened(self, window: Window) -> None:
        if not self.windows:
            self.covered = window.start
        self.windows.append(window)

    def succeeded(self, window: Window) -> None:
        """Add a successful window to the cover (in O(log n): thousands of runs)."""
        window.outcome = "success"
        self.last_success_end = max(self.last_success_end or window.end, window.end)
        heapq.heappush(self.ahead, (window.start, window.end))
        while self.ahead and self.ahead[0][0] <= self.covered:
            self.covered = max(self.covered, heapq.heappop(self.ahead)[1])


@dataclass
class Run:
    batch_id: int
    jobs: dict[str, Window]
    pending: set[str]  # jobs this run has not closed yet


class Sim:
    def __init__(self, seed: int, apps, server: RedisServer, cfg_dir, clock: VirtualClock):
        self.seed = seed
        self.rng = random.Random(seed)
        self.apps = apps
        self.server = server
        self.cfg_dir = cfg_dir
        self.clock = clock
        self.cfg = {name: dict(params) for name, params in BASE_JOBS.items()}
        self.model: dict[str, JobModel] = {}
        self.runs: dict[int, Run] = {}
        self.active: list[Run] = []
        self.current: int | None = None
        self.stats: Counter = Counter()

    # -- transport ---------------------------------------------------------------

    def call(self, path: str, data: dict | None = None, expect: int | None = 200):
        """Call one of the app instances, with a random transport; check the answer."""
        app = self.rng.choice(self.apps)
        client = app.test_client()
        data = {k: v for k, v in (data or {}).items() if v is not None}
        how = "query" if path.startswith("/get_status") else self.rng.choice(("json", "form", "query"))
        started = time.monotonic()
        if how == "json":
            resp = client.post(path, json=data)
        elif how == "form":
            resp = client.post(path, data={k: str(v) for k, v in data.items()})
        else:
            resp = client.get(path, query_string={k: str(v) for k, v in data.items()})
        elapsed = time.monotonic() - started
        self.stats["requests"] += 1
        assert elapsed < 5, self.why(f"{path} took {elapsed:.1f} s")
        body = resp.get_json()
        if expect is not None:
            assert resp.status_code == expect, self.why(f"{path} {data}: {resp.status_code} {body}")
        return resp.status_code, body

    def why(self, text: str) -> str:
        return f"[BATCHY_SIM_SEED={self.seed}] {text}"

    # -- the ETL -----------------------------------------------------------------

    def write_cfg(self) -> None:
        lines = []
        for name, params in self.cfg.items():
            lines.append(f"{name}:" if params else f"{name}: {{}}")
            lines += [f"  {key}: {value}" for key, value in params.items()]
        (self.cfg_dir / f"{WF}.yaml").write_text("\n".join(lines) + "\n")

    def load(self) -> None:
        before = self.state() if self.model else {}
        self.write_cfg()
        _, body = self.call(f"/load_cfg/{WF}")
        self.stats["reloads"] += 1
        for name, job in body.items():
            if name in before and before[name]["status"] != "new":
                for key in ("status", "batch_id", "from_date", "to_date", "batch_start", "batch_end"):
                    assert job[key] == before[name][key], self.why(f"reload changed {name}.{key}")
            self.model.setdefault(name, JobModel())

    def reconfigure(self) -> None:
        """Change a job's reprocess_hours, trunc_start or timezone, or add a job; reload."""
        rng = self.rng
        what = rng.random()
        if what < 0.1:
            name = f"late{len(self.cfg)}"
            since = self.clock.now() - timedelta(hours=rng.uniform(0, 96))
            form = rng.choice(("'{:%Y-%m-%d %H:%M:%S}'", "{:%Y-%m-%dT%H:%M:%SZ}", "{:%Y-%m-%d}"))
            self.cfg[name] = {"from_date": form.format(since), "reprocess_hours": "1"}
        else:
            name = rng.choice(sorted(self.cfg))
            params = self.cfg[name]
            if what < 0.4:
                params["reprocess_hours"] = rng.choice(("0", "0.25", "1", "2.5", "24", "0.1"))
            elif what < 0.7:
                params["trunc_start"] = rng.choice(("true", "false"))
            else:
                params["timezone"] = rng.choice(ZONES)
        self.load()

    def state(self) -> dict:
        return self.call(f"/get_status/{WF}")[1]

    def open_run(self) -> None:
        rng = self.rng
        self.clock.advance(rng.choice((0, rng.uniform(1, 600), rng.uniform(600, 6 * 3600),
                                       rng.uniform(6 * 3600, 50 * 3600))))
        _, body = self.call(f"/open_batch/{WF}")
        batch_id = {job["batch_id"] for job in body.values()}
        assert len(batch_id) == 1, self.why(f"one batch, one id: {batch_id}")
        batch_id = batch_id.pop()
        assert self.current is None or batch_id > self.current, self.why("batch ids only grow")
        for run in self.runs.values() if self.current is None else [self.runs[self.current]]:
            for name in run.pending:  # the newer batch supersedes the jobs still open
                run.jobs[name].outcome = "abandoned"
        windows = {}
        for name, job in body.items():
            start, end = parse_time(job["from_date"]), parse_time(job["to_date"])
            assert job["status"] == "open" and parse_time(job["batch_start"]) == end, self.why(str(job))
            self.check_window(name, job, start, end)
            windows[name] = Window(batch_id, start, end)
            self.model.setdefault(name, JobModel()).opened(windows[name])
        run = Run(batch_id, windows, set(windows))
        self.runs[batch_id] = run
        self.active.append(run)
        self.current = batch_id
        self.stats["runs"] += 1
        if len(self.active) > 1:
            self.stats["reopened while open"] += 1

    def check_window(self, name: str, job: dict, start: datetime, end: datetime) -> None:
        """The window a new batch hands out: no gap after the cover, overlap explained."""
        model = self.model.get(name)
        assert start <= end, self.why(f"{name}: window [{start}, {end}) runs backwards")
        if model is None or not model.windows:
            return
        covered = model.covered
        assert start <= covered, self.why(
            f"GAP in {name}: new window starts {start}, successful windows only cover up to {covered}"
        )
        last = model.windows[-1]
        if last.outcome == "success":
            base = last.end - timedelta(hours=float(job["reprocess_hours"]))  # reprocessed overlap
        else:
            base = last.start  # a rerun of a window that did not succeed
        slack = TRUNC_SLACK if job["trunc_start"] else timedelta(0)
        assert start >= base - slack, self.why(
            f"{name}: overlap not explained: window starts {start}, expected {base}"
            f" (reprocess_hours {job['reprocess_hours']}, trunc_start {job['trunc_start']}, last {last})"
        )

    def close(self, run: Run, outcome: str, job: str | None = None) -> None:
        data = {"batch_id": run.batch_id, "job": job,
                "records_processed": self.rng.choice((None, self.rng.randrange(10**6))),
                "message": self.rng.choice((None, "ok", "été ✓ line\nbreak"))}
        path = f"/{'close' if outcome == 'success' else 'fail'}_batch/{WF}"
        stale = run.batch_id != self.current
        status, body = self.call(path, data, expect=None)
        targets = [job] if job else sorted(run.pending)
        if stale:
            assert status == 409 and body["error"] == "stale_batch", self.why(f"{path} {data}: {status} {body}")
            self.stats["stale closes refused"] += 1
            run.pending.clear()
            self.active.remove(run)
            return
        assert status == 200, self.why(f"{path} {data}: {status} {body}")
        for name in targets:
            assert body[name]["status"] == outcome and body[name]["batch_id"] == run.batch_id, self.why(str(body))
            if outcome == "success":
                self.model[name].succeeded(run.jobs[name])
            else:
                run.jobs[name].outcome = outcome
            run.pending.discard(name)
        self.stats[f"{outcome} closes"] += 1
        if not run.pending:
            self.active.remove(run)

    def finish_some_run(self) -> None:
        rng = self.rng
        run = self.active[-1] if rng.random() < 0.8 else rng.choice(self.active)
        what = rng.random()
        if what < 0.55:
            self.close(run, "success")
        elif what < 0.70:
            self.close(run, "failed")
        elif what < 0.88:
            self.close(run, rng.choice(("success", "success", "failed")), job=rng.choice(sorted(run.pending)))
        else:  # the ETL dies: nobody ever closes this run
            self.active.remove(run)
            self.stats["crashes"] += 1

    def restart_redis(self) -> None:
        """Stop Redis (cleanly or kill -9), see a call answer 503, start it; nothing may change."""
        client = raw_client(self.server.port)
        before = snapshot(client)
        client.close()
        if self.rng.random() < 0.5:
            self.server.kill()
            self.stats["redis kill -9"] += 1
        else:
            self.server.stop()
            self.stats["redis restarts"] += 1
        path = self.rng.choice((f"/open_batch/{WF}", f"/close_batch/{WF}", f"/get_status/{WF}", f"/load_cfg/{WF}"))
        status, body = self.call(path, expect=None)
        assert status == 503 and body["error"] == "redis_unavailable", self.why(f"{path}: {status} {body}")
        self.server.start()
        client = raw_client(self.server.port)
        after = snapshot(client)
        client.close()
        assert after == before, self.why("Redis restarted with a different state than it had")

    def play(self, runs: int) -> None:
        self.load()
        while self.stats["runs"] < runs:
            if not self.active or self.rng.random() < 0.06:
                self.open_run()
            else:
                self.finish_some_run()
            if self.rng.random() < 0.03:
                self.reconfigure()
            if self.rng.random() < 0.004:
                self.restart_redis()
        self.check_end()

    # -- final checks ------------------------------------------------------------

    def check_end(self) -> None:
        # The next batch, as a dry run, must not open a gap either.
        _, body = self.call(f"/open_batch/{WF}", {"dry_run": "true"})
        for name, job in body.items():
            self.check_window(name, job, parse_time(job["from_date"]), parse_time(job["to_date"]))
        for name, model in self.model.items():
            if model.last_success_end is None:
                continue
            assert not model.ahead and model.covered >= model.last_success_end, self.why(
                f"GAP in {name}: windows cover up to {model.covered}, last success ends {model.last_success_end}"
            )
        # Every batch snapshot <wf>-<batch_id> says what the ETL was told.
        client = raw_client(self.server.port)
        pipe = client.pipeline(transaction=False)
        for batch_id in self.runs:
            pipe.hgetall(f"{WF}-{batch_id}")
        for (batch_id, run), raw in zip(self.runs.items(), pipe.execute()):
            assert raw, self.why(f"snapshot {WF}-{batch_id} is missing")
            for name, window in run.jobs.items():
                stored = json.loads(raw[name.encode()])["status"]
                assert stored == window.outcome, self.why(
                    f"{WF}-{batch_id} {name}: stored {stored}, the ETL was told {window.outcome}"
                )
        client.close()
        self.stats["snapshots checked"] = len(self.runs)
        state = self.state()
        for name, model in self.model.items():
            last = model.windows[-1] if model.windows else None
            expected = "new" if last is None else "open" if last.outcome == "abandoned" else last.outcome
            assert state[name]["status"] == expected, self.why(f"{name}: {state[name]['status']} != {expected}")


@pytest.fixture(scope="module")
def persistent_redis():
    """A redis-server of our own that keeps its state across restarts (AOF, fsync always)."""
    server = RedisServer("--appendonly", "yes", "--appendfsync", "always").start()
    yield server
    server.cleanup()


@pytest.mark.slow  # 2,000 runs against a real redis-server
def test_no_gap_in_any_watermark(persistent_redis, tmp_path):
    seed = int(os.environ.get("BATCHY_SIM_SEED") or random.randrange(2**32))
    runs = int(os.environ.get("BATCHY_SIM_RUNS") or 2000)
    print(f"BATCHY_SIM_SEED={seed} BATCHY_SIM_RUNS={runs}")
    # Start just before the 2024 DST changes of Havana, Santiago, Beirut and Paris.
    clock = VirtualClock(datetime(2024, 3, 1, 12, 0, tzinfo=UTC))
    config = {"BATCHY_REDIS_URL": persistent_redis.url, "BATCHY_CFG_DIR": str(tmp_path), "BATCHY_HISTORY_KEEP": 10**6,
              "CLOCK": clock}
    apps = [create_app(config), create_app(config)]  # two instances, one Redis, one clock
    sim = Sim(seed, apps, persistent_redis, tmp_path, clock)
    started = time.monotonic()
    sim.play(runs)
    print(f"{dict(sim.stats)} in {time.monotonic() - started:.1f} s, virtual time reached {clock.now()}")
    assert sim.stats["runs"] >= runs
    assert sim.stats["success closes"] and sim.stats["crashes"] and sim.stats["reloads"] > 1
