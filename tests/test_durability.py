"""Nothing lost in a crash: every acknowledged change survives kill -9 of an fsync-always Redis."""
from __future__ import annotations

import json
import threading
import time

import pytest

from batchy import create_app
from batchy.testing import RedisServer

from .reliability_helpers import raw_client, wait_until

pytestmark = pytest.mark.slow  # kill -9 under load, three times: seconds

CFG = """
extract:
  from_date: 2024-01-01
  reprocess_hours: 1.5
load:
  trunc_start: true
  timezone: Europe/Paris
"""
# What an acknowledged status may have become since: an acknowledged open batch may
# later be closed by a call whose answer was lost in the crash, or superseded.
LATER = {"open": {"open", "success", "failed", "abandoned"}, "success": {"success"}, "failed": {"failed"}}


@pytest.fixture
def aof_redis():
    """Append-only file, fsync before every reply: the setting that loses nothing on kill -9."""
    server = RedisServer("--appendonly", "yes", "--appendfsync", "always").start()
    yield server
    server.cleanup()


class Writer(threading.Thread):
    """Open and close batches in a loop, recording every change Batchy acknowledged."""

    def __init__(self, client, wf: str):
        super().__init__(daemon=True)
        self.client, self.wf = client, wf
        self.acked: dict[int, dict[str, str]] = {}  # batch_id -> {job: status}
        self.last_state: dict | None = None
        self.errors: list[int] = []
        self.stop = threading.Event()

    def run(self):
        n = 0
        while not self.stop.is_set():
            n += 1
            resp = self.client.post(f"/open_batch/{self.wf}")
            if resp.status_code != 200:
                self.errors.append(resp.status_code)
                time.sleep(0.01)  # Redis is down: do not spin
                continue
            jobs = resp.get_json()
            batch_id = next(iter(jobs.values()))["batch_id"]
            self.acked[batch_id] = {job: "open" for job in jobs}
            self.last_state = jobs
            if n % 7 == 0:
                continue  # the ETL crashed: left open
            outcome = "fail" if n % 5 == 0 else "close"
            resp = self.client.post(f"/{outcome}_batch/{self.wf}", json={"batch_id": batch_id, "records_processed": n})
            if resp.status_code != 200:
                self.errors.append(resp.status_code)
                continue
            self.last_state = resp.get_json()
            self.acked[batch_id] = {job: job_state["status"] for job, job_state in self.last_state.items()}


def check_acknowledged(server: RedisServer, wf: str, writer: Writer):
    """Every acknowledged batch and status is in Redis (a call whose answer was lost may have gone further)."""
    client = raw_client(server.port)
    pipe = client.pipeline(transaction=False)
    for batch_id in writer.acked:
        pipe.hgetall(f"{wf}-{batch_id}")
    pipe.hgetall(wf)
    pipe.zrange(f"batchy:history:{wf}", 0, -1)
    *snapshots, current, history = pipe.execute()
    client.close()
    history = {int(x) for x in history}
    lost = []
    for (batch_id, acked), raw in zip(writer.acked.items(), snapshots):
        if not raw or batch_id not in history:
            lost.append(f"{wf}-{batch_id} missing")
            continue
        for job, status in acked.items():
            stored = json.loads(raw[job.encode()])["status"]
            if stored not in LATER[status]:
                lost.append(f"{wf}-{batch_id} {job}: acknowledged {status}, stored {stored}")
    last_id = max(writer.acked)
    for job, value in current.items():
        stored = json.loads(value)
        acked = writer.last_state[job.decode()]
        if stored["batch_id"] < last_id or (stored["batch_id"] == last_id and stored["status"] not in LATER[acked["status"]]):
            lost.append(f"{wf} {job.decode()}: acknowledged batch {last_id}, stored {stored}")
    assert not lost, f"{len(lost)} acknowledged changes lost: {lost[:10]}"


def test_acknowledged_changes_survive_kill_9(aof_redis, cfg_dir, write_cfg):
    write_cfg("dur", CFG)
    app = create_app({"BATCHY_REDIS_URL": aof_redis.url, "BATCHY_CFG_DIR": str(cfg_dir), "BATCHY_HISTORY_KEEP": 10**6})
    client = app.test_client()
    assert client.post("/load_cfg/dur").status_code == 200
    writer = Writer(client, "dur")
    writer.start()

    def acknowledges(more: int, what: str) -> None:
        goal = len(writer.acked) + more
        wait_until(lambda: len(writer.acked) >= goal, 30, f"the writer to acknowledge {more} batches {what}")

    # kill -9 Redis under load, three times, while the writer keeps going.
    for outage in range(3):
        acknowledges(30, "before the kill" if not outage else "after Redis came back")
        refused = len(writer.errors)
        aof_redis.kill()
        wait_until(lambda: len(writer.errors) > refused, 10, "the writer to see the outage")
        aof_redis.start()
    acknowledges(30, "after the last restart")
    writer.stop.set()
    writer.join(10)
    aof_redis.kill()
    aof_redis.start()
    print(f"acknowledged batches: {len(writer.acked)}, calls refused during outages: {len(writer.errors)}")
    assert len(writer.acked) > 50 and writer.errors, "the loop must run and see the outages"
    assert set(writer.errors) <= {503}, writer.errors
    check_acknowledged(aof_redis, "dur", writer)
