"""batchy migrate-keys: a deployment moves between the classic and the cluster key style.

On our own redis-server: the cluster style runs on a single Redis too (a hash tag is only
braces there), so a store made with BATCHY_REDIS_CLUSTER=true reads what was migrated.
"""
from __future__ import annotations

import threading

import pytest

from batchy.cli import main
from batchy.storage import keys
from batchy.web.db import services_of

from .conftest import make_app


def state(app) -> dict:
    doc = services_of(app).store.export()
    return doc["workflows"]


@pytest.fixture
def classic(real_redis, cfg_dir, write_cfg, monkeypatch, redis_server):
    monkeypatch.setenv("BATCHY_REDIS_URL", redis_server.url)
    monkeypatch.delenv("BATCHY_REDIS_CLUSTER", raising=False)
    write_cfg("wf_b", "a:\n  from_date: 2023-11-01\n  batch_size: day\n")
    app = make_app(real_redis, cfg_dir)
    client = app.test_client()
    for wf in ("wf1", "wf_b"):
        assert client.post(f"/load_cfg/{wf}").status_code == 200
    for _ in range(3):
        assert client.post("/open_batch/wf1").status_code == 200
        assert client.post("/close_batch/wf1").status_code == 200
    assert client.post("/open_batch/wf_b", headers={"Idempotency-Key": "run-1"}).status_code == 200
    assert client.post("/backfill/wf_b", json={"from": "2023-10-01", "to": "2023-10-03"}).status_code == 201
    assert client.post("/pause/wf_b", query_string={"message": "held"}).status_code == 200
    return app


def test_a_dry_run_changes_nothing(classic, real_redis, capsys):
    before = sorted(real_redis.keys("*"))
    assert main(["migrate-keys", "--to", "cluster", "--dry-run", "--watch", "0"]) == 0
    out = capsys.readouterr().out
    assert "would move" in out and "wf1 -> {wf1}" in out, out
    assert sorted(real_redis.keys("*")) == before


def test_there_and_back_again(classic, real_redis, cfg_dir, capsys):
    before = state(classic)
    assert main(["migrate-keys", "--to", "cluster", "--watch", "0.2"]) == 0
    names = real_redis.keys("*")
    # Every workflow key carries its tag; only service-wide keys are left without one.
    untagged = sorted(k for k in names if "{" not in k)
    assert untagged == ["batchy:pause-history", "batchy:workflows"], untagged
    assert real_redis.exists("{wf1}", "{wf_b}", "batchy:batches:{wf1}") == 3
    cluster_app = make_app(real_redis, cfg_dir, BATCHY_REDIS_CLUSTER=True)
    assert state(cluster_app) == before
    client = cluster_app.test_client()
    last = before["wf1"]["meta"]["last_batch_id"]
    opened = client.post("/open_batch/wf1").get_json()
    assert opened["s_extract"]["batch_id"] > int(last)
    assert client.post("/close_batch/wf1").status_code == 200
    assert client.post("/open_batch/wf_b").status_code == 423  # its pause moved with it
    again = client.post("/open_batch/wf_b", headers={"Idempotency-Key": "run-1"})  # so did the key
    assert again.status_code == 200 and again.get_json()["a"]["batch_id"] == before["wf_b"]["jobs"]["a"]["batch_id"]
    assert len(client.get("/batches?limit=100").get_json()["batches"]) == 5
    assert client.get("/backfills/wf_b").get_json()["backfills"][0]["progress"]["pending"] == 2
    moved = state(cluster_app)

    assert main(["migrate-keys", "--to", "classic", "--watch", "0.2"]) == 0
    assert not [k for k in real_redis.keys("*") if "{" in k]
    back = make_app(real_redis, cfg_dir)
    assert state(back) == moved
    assert len(back.test_client().get("/batches?limit=100").get_json()["batches"]) == 5
    indexed = sorted(f"{wf}-{i}" for wf in ("wf1", "wf_b") for i in real_redis.zrange(keys.history(wf), 0, -1))
    assert sorted(real_redis.zrange(keys.BATCHES, 0, -1)) == indexed and len(indexed) == 5

def test_it_refuses_while_a_service_writes(classic, real_redis, capsys):
    client = classic.test_client()
    assert client.post("/resume/wf_b").status_code == 200
    stop = threading.Event()

    def etl():
        while not stop.is_set():
            client.post("/open_batch/wf1")
            client.post("/close_batch/wf1")

    writer = threading.Thread(target=etl)
    writer.start()
    try:
        before = sorted(real_redis.keys("*"))
        code = main(["migrate-keys", "--to", "cluster", "--watch", "0.5"])
    finally:
        stop.set()
        writer.join()
    assert code != 0
    assert "a live service is writing" in capsys.readouterr().err
    assert not [k for k in real_redis.keys("*") if "{" in k]
    assert len(before) > 5


def test_lineage_queues_cursors_and_lag_episodes_move_with_the_style(classic, real_redis):
    # what a lineage sender and the lateness checker left behind, in the classic style
    real_redis.lpush(keys.LINEAGE_OUTBOX, '{"body": {"run": 1}, "tries": 0}')
    real_redis.hset(keys.LINEAGE_CURSORS, mapping={keys.LINEAGE_SINCE: "1700000000000-0",
                                                   keys.events("wf1"): "1700000000001-0",
                                                   keys.backfill_events("wf_b", "1"): "1700000000002-0"})
    real_redis.hset(keys.lag_episodes("wf1"), "s_extract", "2024-01-01T00:00:00+00:00")
    assert main(["migrate-keys", "--to", "cluster", "--watch", "0"]) == 0
    style = keys.CLUSTER
    assert real_redis.lrange(style.LINEAGE_OUTBOX, 0, -1) == ['{"body": {"run": 1}, "tries": 0}']
    assert real_redis.hgetall(style.LINEAGE_CURSORS) == {
        keys.LINEAGE_SINCE: "1700000000000-0", "batchy:events:{wf1}": "1700000000001-0",
        style.backfill_events("wf_b", "1"): "1700000000002-0"}
    assert real_redis.hgetall(style.lag_episodes("wf1")) == {"s_extract": "2024-01-01T00:00:00+00:00"}
    assert not real_redis.exists(keys.LINEAGE_OUTBOX, keys.LINEAGE_CURSORS, keys.lag_episodes("wf1"))
    assert main(["migrate-keys", "--to", "classic", "--watch", "0"]) == 0
    assert real_redis.hget(keys.LINEAGE_CURSORS, keys.backfill_events("wf_b", "1")) == "1700000000002-0"
    assert real_redis.llen(keys.LINEAGE_OUTBOX) == 1
