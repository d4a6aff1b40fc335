"""High availability: a real primary, a replica and three sentinels on loopback.

The service connects through Sentinel with BATCHY_REDIS_WAIT_REPLICAS=1; the primary is
killed (-9) in the middle of a loop of open/close calls. The service must carry on after
the failover without a restart, and no acknowledged change may be missing.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time

import pytest
import redis

from batchy import create_app
from batchy.testing import RedisServer, free_port

from .reliability_helpers import wait_until

pytestmark = pytest.mark.slow  # a failover takes seconds

LATER = {"open": {"open", "success", "failed", "abandoned"}, "success": {"success"}}


class Sentinels:
    """Three redis-sentinel processes watching `mymaster`, failing over in about 2 s."""

    def __init__(self, primary_port: int, count: int = 3):
        self.dir = tempfile.mkdtemp(prefix="batchy-sentinel-")
        self.ports = [free_port() for _ in range(count)]
        self.procs = []
        for i, port in enumerate(self.ports):
            conf = os.path.join(self.dir, f"sentinel-{i}.conf")
            with open(conf, "w") as fh:
                fh.write(
                    f"port {port}\nbind 127.0.0.1\ndir {self.dir}\nlogfile {self.dir}/sentinel-{i}.log\n"
                    f"sentinel monitor mymaster 127.0.0.1 {primary_port} 2\n"
                    "sentinel down-after-milliseconds mymaster 1000\n"
                    "sentinel failover-timeout mymaster 5000\n"
                    "sentinel parallel-syncs mymaster 1\n"
                )
            self.procs.append(subprocess.Popen([shutil.which("redis-server"), conf, "--sentinel"],
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def client(self, i: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.ports[i], decode_responses=True, socket_timeout=2)

    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.ports)
        return f"redis+sentinel://{hosts}/mymaster/0"

    def primary_port(self) -> int:
        return int(self.client().sentinel_get_master_addr_by_name("mymaster")[1])

    def cleanup(self):
        for proc in self.procs:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def cluster():
    primary = RedisServer().start()
    replica = RedisServer("--replicaof", "127.0.0.1", str(primary.port)).start()
    sentinels = Sentinels(primary.port)
    try:
        wait_until(lambda: replica.client().info("replication")["master_link_status"] == "up", 10, "replication")
        for i in range(3):  # every sentinel knows the replica and the two other sentinels
            wait_until(lambda i=i: sentinels.client(i).sentinel_master("mymaster")["num-other-sentinels"] == 2
                       and sentinels.client(i).sentinel_master("mymaster")["num-slaves"] == 1, 15, "sentinel discovery")
        yield primary, replica, sentinels
    finally:
        sentinels.cleanup()
        replica.cleanup()
        primary.cleanup()


def _failed_over(sentinels: Sentinels, replica: RedisServer) -> bool:
    try:
        return sentinels.primary_port() == replica.port
    except redis.RedisError:
        return False


def test_service_survives_primary_loss_without_losing_acknowledged_changes(cluster, cfg_dir):
    primary, replica, sentinels = cluster
    app = create_app({"BATCHY_REDIS_URL": sentinels.url(), "BATCHY_CFG_DIR": str(cfg_dir),
                      "BATCHY_REDIS_WAIT_REPLICAS": 1, "BATCHY_HISTORY_KEEP": 10**6})
    client = app.test_client()
    assert client.post("/load_cfg/wf1").status_code == 200
    acked: dict[int, str] = {}  # batch_id -> acknowledged status of all its jobs
    refused = []
    killed_at = None
    restarted = False
    after_failover = 0
    deadline = time.monotonic() + 40
    while after_failover < 30 and time.monotonic() < deadline:
        if killed_at is None and len(acked) >= 30:
            primary.kill()  # mid-loop, kill -9
            killed_at = time.monotonic()
        if killed_at and not restarted and _failed_over(sentinels, replica):
            # The lost host comes back; Sentinel makes it a replica of the new primary. Until
            # then no replica can confirm a change (WAIT 1) and every change answers 503.
            primary.start()
            restarted = True
        resp = client.post("/open_batch/wf1")
        if resp.status_code != 200:
            assert resp.status_code == 503, (resp.status_code, resp.data)
            refused.append(resp.status_code)
            time.sleep(0.1)  # no primary yet: retry as an ETL would, without spinning
            continue
        batch_id = next(iter(resp.get_json().values()))["batch_id"]
        acked[batch_id] = "open"
        resp = client.post("/close_batch/wf1", json={"batch_id": batch_id})
        if resp.status_code == 200:
            acked[batch_id] = "success"
            if killed_at is not None:
                after_failover += 1
        else:
            assert resp.status_code == 503, (resp.status_code, resp.data)
            refused.append(resp.status_code)
    assert killed_at is not None and after_failover >= 30, f"no recovery: {after_failover} calls after failover"
    new_port = sentinels.primary_port()
    assert new_port == replica.port
    print(f"acknowledged {len(acked)} batches, {len(refused)} calls answered 503 during the failover, "
          f"primary moved to :{new_port}")
    # Every acknowledged change is on the new primary.
    store = replica.client()
    lost = []
    for batch_id, status in acked.items():
        raw = store.hgetall(f"wf1-{batch_id}")
        if not raw:
            lost.append(f"wf1-{batch_id} missing")
            continue
        for job, value in raw.items():
            if json.loads(value)["status"] not in LATER[status]:
                lost.append(f"wf1-{batch_id} {job}: acknowledged {status}, stored {json.loads(value)['status']}")
    assert not lost, f"{len(lost)} acknowledged changes lost in the failover: {lost[:10]}"

