"""Batchy on a real Redis Cluster: three primaries, a replica each, started by the test.

Every key of one workflow lives in one hash slot (`{wf1}`, `{wf1}-<batch_id>`), each commit
is one script in that slot, announcements go out on sharded pub/sub, and a primary can be
killed with no acknowledged change lost when BATCHY_REDIS_WAIT_REPLICAS=1.
"""
from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone

import pytest
import redis

from batchy import create_app
from batchy.storage import keys
from batchy.testing import RedisCluster
from batchy.web.db import services_of

from .conftest import FRESH
from .reliability_helpers import VirtualClock

pytestmark = pytest.mark.slow  # six redis-servers, a cluster to agree, a failover

UTC = timezone.utc
HOURLY = "h:\n  from_date: 2024-03-01T00:00:00Z\n  batch_size: hour\n  max_window_hours: 6\n"


@pytest.fixture(scope="module")
def cluster():
    nodes = RedisCluster(masters=3, replicas=1).start()
    yield nodes
    nodes.cleanup()


@pytest.fixture
def cluster_redis(cluster):
    """A RedisCluster client; every primary is emptied after the test (the cluster is ours alone)."""
    client = cluster.client()
    yield client
    client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    client.close()


def cluster_app(cluster, cfg_dir, **config):
    return create_app({"BATCHY_REDIS_URL": cluster.url, "BATCHY_REDIS_CLUSTER": True,
                       "BATCHY_CFG_DIR": str(cfg_dir), **FRESH, **config})


@pytest.fixture
def app(cluster, cluster_redis, cfg_dir):
    return cluster_app(cluster, cfg_dir)


@pytest.fixture
def client(app):
    return app.test_client()


def slots_of(client: redis.RedisCluster, names) -> set[int]:
    return {client.keyslot(name) for name in names}


def test_the_core_flow_keeps_every_key_of_a_workflow_in_one_slot(client, cluster_redis, write_cfg):
    write_cfg("wf2", "a:\n  from_date: 2024-01-01\n")
    assert client.post("/load_cfg/wf1").status_code == 200
    assert client.post("/load_cfg/wf2").status_code == 200
    opened = client.post("/open_batch/wf1").get_json()
    batch_id = opened["s_extract"]["batch_id"]
    assert client.post("/close_batch/wf1").status_code == 200
    status = client.get("/get_status/wf1").get_json()
    assert {job["status"] for job in status.values()} == {"success"}
    # The keys operators read keep the seed's shape, with the tag.
    assert cluster_redis.exists("{wf1}") and cluster_redis.exists(f"{{wf1}}-{batch_id}")
    assert json.loads(cluster_redis.hget(f"{{wf1}}-{batch_id}", "s_extract"))["status"] == "success"
    wf1_keys = [k for k in cluster_redis.scan_iter(match="*{wf1}*", target_nodes=redis.RedisCluster.PRIMARIES)]
    assert len(wf1_keys) >= 5 and len(slots_of(cluster_redis, wf1_keys)) == 1, wf1_keys
    assert not cluster_redis.exists("wf1", "batchy:batches")  # no classic key, no service-wide batches index
    # Reads across workflows: the index around the commits, the per-workflow batches indexes merged.
    assert [w["workflow"] for w in client.get("/workflows").get_json()["workflows"]] == ["wf1", "wf2"]
    batches = client.get("/batches").get_json()["batches"]
    assert [(b["workflow"], b["batch_id"]) for b in batches] == [("wf1", batch_id)]
    assert client.get("/history/wf1").get_json()["batches"][0]["batch_id"] == batch_id
    assert client.get("/events/wf1").get_json()["events"][0]["action"] == "close"
    assert client.get("/").status_code == 200 and client.get("/metrics").status_code == 200
    # A removal leaves the index too.
    assert client.post("/remove_workflow/wf2").status_code == 200
    assert cluster_redis.smembers("batchy:workflows") == {"wf1"}


def test_a_service_pause_reaches_every_slot_and_a_workflow_pause_its_own(client, cluster_redis, write_cfg):
    names = [f"w{i}" for i in range(6)]
    for wf in names:
        write_cfg(wf, "a:\n  from_date: 2024-01-01\n")
        assert client.post(f"/load_cfg/{wf}").status_code == 200
    assert len({cluster_redis.keyslot("{" + wf + "}") for wf in names}) == 6
    assert client.post("/pause", query_string={"message": "maintenance"}).status_code == 200
    # The commit script of each workflow sees the pause in its own slot's marker.
    assert all(cluster_redis.exists(keys.CLUSTER.pause_marker(wf)) for wf in names)
    for wf in names:
        resp = client.post(f"/open_batch/{wf}")
        assert resp.status_code == 423 and "maintenance" in resp.get_json()["message"], resp.get_json()
    # A workflow loaded during the pause is paused too: the marker is its slot's, not its own.
    write_cfg("late_comer", "a:\n  from_date: 2024-01-01\n  batch_size: day\n")
    assert client.post("/load_cfg/late_comer").status_code == 200
    assert client.post("/open_batch/late_comer").status_code == 423
    made = client.post("/backfill/late_comer", json={"from": "2023-12-01", "to": "2023-12-03"})
    assert made.status_code == 201
    assert client.post(f"/backfill/late_comer/{made.get_json()['backfill_id']}/lease").status_code == 423
    assert client.post("/resume").status_code == 200
    assert not any(cluster_redis.exists(k) for k in keys.CLUSTER.pause_markers()[:64])
    assert all(client.post(f"/open_batch/{wf}").status_code == 200 for wf in names)
    assert client.post("/pause/w0").status_code == 200
    assert client.post("/close_batch/w1").status_code == 200
    assert client.post("/open_batch/w1").status_code == 200
    assert client.post("/close_batch/w0").status_code == 200  # a close is never refused by a pause
    assert client.post("/open_batch/w0").status_code == 423


def test_windows_coverage_and_gates_on_a_cluster(cluster, cluster_redis, cfg_dir, write_cfg):
    clock = VirtualClock(datetime(2024, 3, 2, 0, 30, tzinfo=UTC))
    client = cluster_app(cluster, cfg_dir, CLOCK=clock).test_client()
    write_cfg("up", HOURLY)
    assert client.post("/load_cfg/up").status_code == 200
    gate = "/wait/up?through=2024-03-02T00:00:00Z&timeout=0"
    windows = []
    for _ in range(4):
        job = client.post("/open_batch/up").get_json()["h"]
        windows.append((job["from_date"], job["to_date"]))
        assert client.post("/close_batch/up").status_code == 200
    assert windows[0][0].startswith("2024-03-01T00:00:00") and windows[-1][1].startswith("2024-03-02T00:00:00")
    assert all(a[1] == b[0] for a, b in zip(windows, windows[1:])), windows  # no gap, no overlap
    answer = client.get(gate).get_json()
    assert answer["state"] == "ready" and answer["jobs"]["h"]["holes"] == [], answer
    coverage = client.get("/coverage/up").get_json()
    assert coverage["h"] == {"covered": [["2024-03-01T00:00:00+00:00", "2024-03-02T00:00:00+00:00"]], "holes": [],
                             "dirty": [], "failed_quality": [], "generation": 0}


def test_backfills_on_a_cluster(client, cluster_redis, write_cfg):
    write_cfg("bf", "a:\n  from_date: 2024-01-01\n  batch_size: day\n")
    assert client.post("/load_cfg/bf").status_code == 200
    made = client.post("/backfill/bf", json={"from": "2023-12-01", "to": "2023-12-04"})
    assert made.status_code == 201, made.get_json()
    bid = made.get_json()["backfill_id"]
    done = 0
    while (resp := client.post(f"/backfill/bf/{bid}/lease")).status_code == 200:
        chunk = resp.get_json()
        closed = client.post(f"/backfill/bf/{bid}/close", query_string={
            "chunk": chunk["chunk"], "attempt": chunk["attempt"], "lease_token": chunk["lease_token"]})
        assert closed.status_code == 200, closed.get_json()
        done += 1
    assert done == 3
    progress = client.get(f"/backfill/bf/{bid}").get_json()
    assert progress["status"] == "success" and progress["progress"]["success"] == 3, progress
    assert len(slots_of(cluster_redis, cluster_redis.scan_iter(match="*{bf}*",
                                                             target_nodes=redis.RedisCluster.PRIMARIES))) == 1
    ledger = client.get("/coverage/bf").get_json()["a"]
    assert ["2023-12-01T00:00:00+00:00", "2023-12-04T00:00:00+00:00"] in ledger["covered"], ledger


def test_a_wait_is_woken_by_sharded_pub_sub(client, cluster_redis):
    assert client.post("/load_cfg/wf1").status_code == 200
    assert client.post("/open_batch/wf1").status_code == 200
    today = client.get("/get_status/wf1").get_json()["s_extract"]["to_date"][:10]
    answers = {}

    def wait():
        started = time.monotonic()
        answers["verdict"] = client.get(f"/wait/wf1?timeout=20&date={today}").get_json()
        answers["waited"] = time.monotonic() - started

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(1.0)  # the waiter is subscribed and holding
    assert "verdict" not in answers
    closed_at = time.monotonic()
    assert client.post("/close_batch/wf1").status_code == 200
    waiter.join(25)
    assert answers["verdict"]["ready"], answers
    assert time.monotonic() - closed_at < 2.0, "woken by the change, not by the timeout"


def test_a_workflow_missing_from_the_index_is_restored_by_reconcile(app, client, cluster_redis):
    assert client.post("/load_cfg/wf1").status_code == 200
    cluster_redis.srem("batchy:workflows", "wf1")  # a process died between the commit and the SADD
    assert client.get("/workflows").get_json()["workflows"] == []
    # Its commits never read the index: the workflow goes on, window after window.
    assert client.post("/open_batch/wf1").status_code == 200
    assert client.post("/close_batch/wf1").status_code == 200
    cluster_redis.sadd("batchy:workflows", "ghost")
    assert services_of(app).store.reconcile_index() == {"added": ["wf1"], "dropped": ["ghost"]}
    assert [w["workflow"] for w in client.get("/workflows").get_json()["workflows"]] == ["wf1"]


LATER = {"open": {"open", "success", "failed", "abandoned"}, "success": {"success"}}


def test_a_primary_killed_mid_loop_loses_no_acknowledged_change(cfg_dir):
    """Kill -9 the primary of wf1's slot between open/close calls; its replica takes over.

    With BATCHY_REDIS_WAIT_REPLICAS=1 a change is acknowledged only once the replica has
    it, so every acknowledged batch is on the new primary. Until the killed node comes back
    (as the new primary's replica) no replica can confirm, and changes answer 503.
    """
    own = RedisCluster(masters=3, replicas=1).start()  # its own: this test breaks it
    try:
        app = cluster_app(own, cfg_dir, BATCHY_REDIS_WAIT_REPLICAS=1, BATCHY_HISTORY_KEEP=10**6)
        client = app.test_client()
        assert client.post("/load_cfg/wf1").status_code == 200
        acked: dict[int, str] = {}
        refused = 0
        victim = None
        after = 0
        deadline = time.monotonic() + 90
        while after < 20 and time.monotonic() < deadline:
            if victim is None and len(acked) >= 20:
                victim = own.fail_over("{wf1}")  # kill -9; returns once the replica serves the slot
                victim.start()  # the lost host comes back, as the new primary's replica
            resp = client.post("/open_batch/wf1")
            if resp.status_code != 200:
                assert resp.status_code == 503, (resp.status_code, resp.get_json())
                refused += 1
                time.sleep(0.1)
                continue
            batch_id = resp.get_json()["s_extract"]["batch_id"]
            acked[batch_id] = "open"
            resp = client.post("/close_batch/wf1", json={"batch_id": batch_id})
            if resp.status_code == 200:
                acked[batch_id] = "success"
                after += victim is not None
            else:
                assert resp.status_code in (503, 409), (resp.status_code, resp.get_json())
                refused += 1
        assert victim is not None and after >= 20, f"no recovery: {after} batches after the failover"
        print(f"acknowledged {len(acked)} batches, {refused} calls refused during the failover")
        store = own.client()
        lost = []
        for batch_id, status in acked.items():
            raw = store.hgetall(f"{{wf1}}-{batch_id}")
            if not raw:
                lost.append(f"{{wf1}}-{batch_id} missing")
                continue
            for job, value in raw.items():
                if json.loads(value)["status"] not in LATER[status]:
                    lost.append(f"{{wf1}}-{batch_id} {job}: acknowledged {status}, stored {json.loads(value)['status']}")
        assert not lost, f"{len(lost)} acknowledged changes lost in the failover: {lost[:10]}"
    finally:
        own.cleanup()


def test_batchy_serve_and_waitsy_on_a_cluster(cluster, cluster_redis, cfg_dir):
    """`batchy serve` (gunicorn, two workers) with BATCHY_REDIS_CLUSTER=true; Waitsy blocks on
    /wait while the batch is open and exits soon after the close, pushed by sharded pub/sub."""
    from batchy.client import Batchy
    from batchy.testing import ServiceProcess
    from waitsy import cli as waitsy

    svc = ServiceProcess(cluster.url, str(cfg_dir), env={"BATCHY_REDIS_CLUSTER": "true"}).start()
    try:
        client = Batchy(svc.url)
        client.load("wf1", reset=True)
        client.open("wf1")
        code: list = []
        # --interval 30: only the push can make it exit within the bound below.
        thread = threading.Thread(target=lambda: code.append(
            waitsy.main(["-wf", "wf1", "--url", svc.url, "--timeout", "60", "--interval", "30", "--quiet"])),
            daemon=True)
        thread.start()
        time.sleep(1.5)
        assert thread.is_alive(), "waitsy exited while the batch was open"
        closed_at = time.monotonic()
        client.close("wf1")
        thread.join(10)
        assert code == [0] and time.monotonic() - closed_at < 5
        assert cluster_redis.exists("{wf1}") and not cluster_redis.exists("wf1")
    finally:
        svc.stop()


def test_migrate_keys_on_a_cluster_there_and_back(app, client, cluster, cluster_redis, monkeypatch, capsys):
    from batchy.cli import main

    assert client.post("/load_cfg/wf1").status_code == 200
    for _ in range(2):
        assert client.post("/open_batch/wf1").status_code == 200
        assert client.post("/close_batch/wf1").status_code == 200
    before = services_of(app).store.export()["workflows"]
    monkeypatch.setenv("BATCHY_REDIS_URL", cluster.url)
    monkeypatch.setenv("BATCHY_REDIS_CLUSTER", "true")
    assert main(["migrate-keys", "--to", "classic", "--watch", "0.2"]) == 0
    assert cluster_redis.exists("wf1", "batchy:batches") == 2 and not cluster_redis.exists("{wf1}")
    assert main(["migrate-keys", "--to", "cluster", "--watch", "0.2"]) == 0
    assert cluster_redis.exists("{wf1}") and not cluster_redis.exists("wf1", "batchy:batches")
    services_of(app).store.cache.clear()
    assert services_of(app).store.export()["workflows"] == before
    assert client.post("/open_batch/wf1").status_code == 200
    assert len(client.get("/batches").get_json()["batches"]) == 3


def test_late_data_auto_backfill_and_lineage_on_a_cluster(cluster, cluster_redis, cfg_dir, write_cfg):
    """The late-data scenario on a cluster: invalidate, the gate waits, the repairer's backfill
    runs, the gate opens; the lineage queues and cursors live in one slot and every run is sent."""
    from datetime import timedelta

    from batchy.rules.times import format_time
    from batchy.storage.repair import Repairer

    from .test_late_data import hourly
    from .test_lineage import Collector

    collector = Collector()
    app = cluster_app(cluster, cfg_dir, BATCHY_OPENLINEAGE_URL=collector.url, BATCHY_OPENLINEAGE_INTERVAL=3600)
    client, found = app.test_client(), services_of(app)
    try:
        start = hourly(write_cfg, client, "  auto_backfill: true\n  max_coverage_lag_hours: 48\n")
        day = {"since": format_time(start), "through": format_time(start + timedelta(days=1)), "timeout": 0}
        late = [format_time(start + timedelta(hours=10)), format_time(start + timedelta(hours=12))]
        assert client.post("/invalidate/up", json={"from": late[0], "to": late[1]}).status_code == 200
        assert client.get("/wait/up", query_string=day).json["state"] == "waiting"
        made = Repairer(found.store, found.backfills, found.fleet, interval=60.0).round()
        assert [(m["from"], m["to"]) for m in made] == [tuple(late)]
        bid = made[0]["backfill_id"]
        while (lease := client.post(f"/backfill/up/{bid}/lease")).status_code == 200:
            assert client.post(f"/backfill/up/{bid}/close", json={
                "chunk": lease.json["chunk"], "attempt": lease.json["attempt"],
                "lease_token": lease.json["lease_token"], "dq": "pass"}).status_code == 200
        assert client.get("/wait/up", query_string=day).json["state"] == "ready"
        assert [i for i in client.get("/late").json if i["kind"] == "coverage_lag"] == []

        assert found.lineage.round() == 6  # the first window's START and COMPLETE, two chunks' START and COMPLETE
        assert collector.invalid == []
        style = found.store.keys
        queues = [style.LINEAGE_OUTBOX, style.LINEAGE_INFLIGHT, style.LINEAGE_SENDING, style.LINEAGE_CURSORS]
        assert len(slots_of(cluster_redis, queues)) == 1
        assert {style.stream_owner(name) for name in cluster_redis.hkeys(style.LINEAGE_CURSORS)
                if name != keys.LINEAGE_SINCE} == {("up", None), ("up", str(bid))}
    finally:
        found.lineage.stop()
        collector.close()
