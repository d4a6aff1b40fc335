"""One round trip per state change: the per-process cache, checked by the commit script.

A service process plans a change from the workflow as it last wrote it; the commit script
applies it only if the workflow's version and Redis' clock second are still the ones the
plan was made on, and otherwise answers with the current state to plan again from. These
tests run on a real redis-server with several app instances (as several gunicorn workers).
"""
from __future__ import annotations

import json
import time

import pytest

from batchy import create_app
from batchy.storage import keys, scripts
from batchy.web.db import services_of


def make(redis_server, cfg_dir, **settings):
    return create_app({"BATCHY_REDIS_URL": redis_server.url, "BATCHY_CFG_DIR": str(cfg_dir), **settings})


@pytest.fixture
def two(redis_server, real_redis, cfg_dir):
    """Two app instances on one Redis, wf1 loaded, each with its own cache."""
    a, b = make(redis_server, cfg_dir), make(redis_server, cfg_dir)
    assert a.test_client().post("/load_cfg/wf1").status_code == 200
    return a, b


def store_of(app):
    return services_of(app).store


@pytest.fixture
def sent(monkeypatch):
    """The name of every command sent to Redis, one per round trip (redis-py packs each send)."""
    import redis.connection

    names: list[str] = []
    original = redis.connection.AbstractConnection.send_packed_command

    def counting(conn, command, check_health=True):
        packed = b"".join(command) if isinstance(command, (list, tuple)) else command
        names.append(packed.split(b"\r\n")[2].decode().upper())  # *<n>, $<len>, <name>
        return original(conn, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counting)
    return names


def test_a_warm_change_is_one_round_trip_a_cold_one_two(two, sent):
    a, _b = two
    client = a.test_client()
    client.get("/get_status/wf1")  # the connection's own first commands (HELLO...) out of the way
    sent.clear()
    assert client.post("/open_batch/wf1").status_code == 200  # wrote by load: warm already
    assert client.post("/close_batch/wf1").status_code == 200
    assert sent == ["EVALSHA", "EVALSHA"]
    store_of(a).cache.forget("wf1")
    sent.clear()
    assert client.post("/open_batch/wf1").status_code == 200
    assert sent == ["EVALSHA", "EVALSHA"]  # the read script, then the commit


def test_a_change_by_another_process_is_seen_before_planning(two, real_redis):
    a, b = two
    ca, cb = a.test_client(), b.test_client()
    first = ca.post("/open_batch/wf1").json
    cb.post("/close_batch/wf1")  # a's cache still says: open
    second = ca.post("/open_batch/wf1").json  # must start after b's success, not redo a's window
    assert second["s_extract"]["batch_id"] > first["s_extract"]["batch_id"]
    reprocess = 2 * 3600
    assert second["s_extract"]["from_date"] == _shift(first["s_extract"]["batch_start"], -reprocess)
    history = [int(x) for x in real_redis.zrange(keys.history("wf1"), 0, -1)]
    assert history == [first["s_extract"]["batch_id"], second["s_extract"]["batch_id"]]
    assert json.loads(real_redis.hget(keys.batch("wf1", history[0]), "s_extract"))["status"] == "success"


def test_a_refusal_from_a_stale_cache_is_checked_against_redis(two):
    a, b = two
    ca, cb = a.test_client(), b.test_client()
    ca.post("/open_batch/wf1")
    ca.post("/close_batch/wf1")  # a's cache: nothing open
    opened = cb.post("/open_batch/wf1").json
    r = ca.post("/close_batch/wf1")  # a's cache would say 409 not open; Redis says open
    assert r.status_code == 200, r.json
    assert r.json["s_extract"]["batch_id"] == opened["s_extract"]["batch_id"]
    assert r.json["s_extract"]["status"] == "success"


def test_a_stale_cache_cannot_close_what_another_process_closed(two):
    a, b = two
    ca, cb = a.test_client(), b.test_client()
    ca.post("/open_batch/wf1")  # a's cache: open
    assert cb.post("/close_batch/wf1").status_code == 200
    r = ca.post("/close_batch/wf1")
    assert r.status_code == 409 and r.json["error"] == "not_open", r.json


def test_the_version_is_never_reused_even_when_its_count_goes_back(two, real_redis):
    """A Redis restart or failover can lose the last writes: the count goes back, and
    another process may reach the same count with different content. The version's
    random token tells them apart, so the cache is not trusted by mistake."""
    a, _b = two
    client = a.test_client()
    client.post("/open_batch/wf1")
    version = real_redis.hget(keys.meta("wf1"), "version")
    count, token = version.split("-")
    # Another history with the same count: the batch was closed there.
    real_redis.hset(keys.meta("wf1"), "version", f"{count}-{'0' * len(token)}")
    for name, text in real_redis.hgetall("wf1").items():
        job = json.loads(text)
        real_redis.hset("wf1", name, json.dumps({**job, "status": "success", "batch_end": job["batch_start"]}))
    r = client.post("/close_batch/wf1")  # the cache says open; Redis says success
    assert r.status_code == 409 and r.json["error"] == "not_open", r.json


def test_a_hand_edit_is_picked_up_once_the_version_is_deleted(two, real_redis):
    """docs/operations.md: edit a workflow hash by hand only with HDEL batchy:wf:<wf> version after."""
    a, _b = two
    client = a.test_client()
    client.post("/open_batch/wf1")
    client.post("/close_batch/wf1")
    job = json.loads(real_redis.hget("wf1", "s_extract"))
    real_redis.hset("wf1", "s_extract", json.dumps({**job, "next_from_date": "2020-05-05T00:00:00+00:00"}))
    real_redis.hdel(keys.meta("wf1"), "version")
    opened = client.post("/open_batch/wf1").json
    assert opened["s_extract"]["from_date"] == "2020-05-05T00:00:00+00:00"
    assert real_redis.hget(keys.meta("wf1"), "version").startswith("1-")


def test_times_come_from_redis_even_when_this_host_clock_is_off(two, real_redis):
    a, _b = two
    store = store_of(a)
    store.clock.offset = 3 * 3600.0  # as if this host's clock were three hours late
    opened = a.test_client().post("/open_batch/wf1").json
    redis_now = real_redis.time()[0]
    start = _epoch(opened["s_extract"]["batch_start"])
    assert redis_now - 5 <= start <= redis_now
    assert abs(store.clock.offset) < 5  # learned from the refusal's TIME


def test_a_deleted_workflow_is_not_recreated_from_the_cache(two, real_redis):
    a, _b = two
    client = a.test_client()
    client.post("/open_batch/wf1")
    real_redis.delete("wf1")
    r = client.post("/close_batch/wf1")
    assert r.status_code == 404 and r.json["error"] == "workflow_not_found", r.json
    assert not real_redis.exists("wf1")


def test_the_cache_can_be_turned_off(redis_server, real_redis, cfg_dir, sent):
    app = make(redis_server, cfg_dir, BATCHY_STATE_CACHE=0)
    client = app.test_client()
    client.post("/load_cfg/wf1")
    sent.clear()
    assert client.post("/open_batch/wf1").status_code == 200
    assert client.post("/close_batch/wf1").status_code == 200
    assert sent == ["EVALSHA"] * 4  # read + commit, twice
    assert len(store_of(app).cache) == 0


def test_the_cache_keeps_at_most_its_size(redis_server, real_redis, cfg_dir, write_cfg):
    for n in range(5):
        write_cfg(f"w{n}", "s:\n  reprocess_hours: 1\n")
    app = make(redis_server, cfg_dir, BATCHY_STATE_CACHE=3)
    client = app.test_client()
    for n in range(5):
        assert client.post(f"/load_cfg/w{n}").status_code == 200
    assert store_of(app).cache.names() == ["w2", "w3", "w4"]  # the least recently written go first


def test_a_commit_that_may_not_have_run_forgets_the_cache(two, monkeypatch):
    import redis

    a, _b = two
    store = store_of(a)
    a.test_client().post("/open_batch/wf1")
    assert "wf1" in store.cache

    def timeout(*args, **kwargs):
        raise redis.TimeoutError("simulated")

    monkeypatch.setattr(store.transport, "run", timeout)
    assert a.test_client().post("/close_batch/wf1").status_code == 503
    assert "wf1" not in store.cache


# -- the turn: a writer that keeps losing is not starved ------------------------------


def commit_args(expected: str, token: str, insist: bool, second: str = "") -> list:
    """A commit that changes nothing but the version: no jobs, meta, batches or event."""
    return [expected, token, second, "1" if insist else "0", "0", "0", 0, 0, 0, 10, "t-", 0, 10, 0, "c", "test"]


def commit_keys(wf: str) -> tuple[str, ...]:
    return keys.commit_keys(wf)


def test_a_writer_that_insists_takes_the_turn_and_others_wait(real_redis):
    commit = real_redis.register_script(scripts.COMMIT)
    real_redis.hset("t", "s", "{}")
    real_redis.hset(keys.meta("t"), "version", "7-aaaa")
    # The loser insists: refused (stale version) but it now has the turn, for 200 ms at most.
    reply = commit(keys=commit_keys("t"), args=commit_args("6-old", "loser", insist=True))
    assert reply[0] == scripts.Reply.REFUSED and reply[1] == "7-aaaa" and reply[5] == 0
    assert real_redis.get(keys.turn("t")) == "loser"
    assert 0 < real_redis.pttl(keys.turn("t")) <= 200
    # Another writer with the right version is refused while the turn is taken, told to wait.
    reply = commit(keys=commit_keys("t"), args=commit_args("7-aaaa", "other", insist=False))
    assert reply[0] == 0 and reply[5] == 1
    # The loser commits, and gives the turn back.
    reply = commit(keys=commit_keys("t"), args=commit_args("7-aaaa", "loser", insist=True))
    assert reply[0] == 1 and reply[1] == "8-loser"
    assert not real_redis.exists(keys.turn("t"))
    reply = commit(keys=commit_keys("t"), args=commit_args("8-loser", "other", insist=False))
    assert reply[0] == 1 and reply[1] == "9-other"


def test_a_commit_for_another_second_is_refused_with_the_clock(real_redis):
    commit = real_redis.register_script(scripts.COMMIT)
    real_redis.hset("t", "s", "{}")
    seconds = int(real_redis.time()[0])
    reply = commit(keys=commit_keys("t"), args=commit_args("0", "x", False, second=str(seconds - 10)))
    assert reply[0] == 0 and int(reply[2][0]) >= seconds
    assert reply[3] == ["s", "{}"]  # the state to plan again from
    assert real_redis.hget(keys.meta("t"), "version") is None


def _epoch(text: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(text).timestamp())


def _shift(text: str, seconds: int) -> str:
    from datetime import datetime, timedelta

    return (datetime.fromisoformat(text) + timedelta(seconds=seconds)).isoformat()


@pytest.mark.slow  # three seconds of contention on purpose
def test_a_busy_workflow_still_answers_every_writer(redis_server, real_redis, cfg_dir):
    """Two processes, quick closers and a slow opener on one workflow: no 409 busy."""
    import threading

    apps = [make(redis_server, cfg_dir) for _ in range(2)]
    apps[0].test_client().post("/load_cfg/wf1")
    errors: list = []
    deadline = time.monotonic() + 3

    def closer(app):
        client = app.test_client()
        while time.monotonic() < deadline:
            r = client.post("/close_batch/wf1?job=s_load")
            if r.status_code not in (200, 409) or (r.status_code == 409 and r.json["error"] != "not_open"):
                errors.append(r.json)

    def opener(app):
        client = app.test_client()
        while time.monotonic() < deadline:
            r = client.post("/open_batch/wf1")
            if r.status_code != 200:
                errors.append(r.json)

    threads = [threading.Thread(target=opener, args=(apps[0],))]
    threads += [threading.Thread(target=closer, args=(apps[n % 2],)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []


# -- the one-round-trip send: what redis-py's command layer did, it still does -----------


def test_a_change_after_redis_lost_its_scripts_still_applies(two, real_redis):
    a, _b = two
    client = a.test_client()
    client.post("/open_batch/wf1")
    real_redis.script_flush()  # as after a restart without persistence of scripts
    r = client.post("/close_batch/wf1")
    assert r.status_code == 200, r.json
    assert json.loads(real_redis.hget("wf1", "s_extract"))["status"] == "success"


def test_the_first_change_after_a_redis_restart_applies(cfg_dir):
    from batchy.testing import RedisServer

    server = RedisServer("--appendonly", "yes").start()
    try:
        app = make(server, cfg_dir)
        client = app.test_client()
        assert client.post("/load_cfg/wf1").status_code == 200
        assert client.post("/open_batch/wf1").status_code == 200
        server.stop()
        server.start()  # the pooled socket is dead; redis-py's one retry on a fresh one
        r = client.post("/close_batch/wf1")
        assert r.status_code == 200, r.json
        assert r.json["s_extract"]["status"] == "success"
    finally:
        server.cleanup()


def test_a_change_planned_on_a_fresh_read_answers_in_name_order(redis_server, real_redis, cfg_dir, write_cfg):
    """Redis' HGETALL of a hash past 128 fields follows no order: the answer still lists jobs by name."""
    names = [f"job{n:03d}" for n in range(150)]
    write_cfg("big", "".join(f"{name}:\n  p: 1\n" for name in names))
    assert make(redis_server, cfg_dir).test_client().post("/load_cfg/big").status_code == 200
    assert list(real_redis.hgetall("big")) != names  # Redis' own order, not the names'
    fresh = make(redis_server, cfg_dir).test_client()  # no cache: plans from what Redis returns
    for path in ("/open_batch/big", "/close_batch/big?job=job007", "/open_batch/big"):
        r = fresh.post(path)
        assert r.status_code == 200
        assert list(r.get_json()) == names, path


def test_a_turn_left_behind_never_fails_a_writer(two, real_redis):
    """A writer that took the turn and stopped (its plan refused) used to leave it for 200 ms,
    while other writers gave up after ~80 ms with 409 busy."""
    a, _b = two
    real_redis.set(keys.turn("wf1"), "gone-writer", px=300)
    started = time.monotonic()
    r = a.test_client().post("/open_batch/wf1")
    assert r.status_code == 200, r.json
    assert time.monotonic() - started < 1.5


def test_a_writer_whose_plan_refuses_gives_the_turn_back(two, real_redis):
    """Another process keeps changing the workflow, so this writer insists and takes the turn;
    its plan then refuses (nothing left open to close): the turn must not outlive the call."""
    a, b = two
    client_a, client_b = a.test_client(), b.test_client()
    assert client_a.post("/open_batch/wf1").status_code == 200
    store = store_of(b)
    real_run = store.transport.run
    commits = []

    def run(script, script_keys, args):
        if script.script == scripts.COMMIT:
            commits.append(args[3])  # insist
            # another process writes between this writer's read and its commit
            if len(commits) < 3:
                assert client_a.post("/open_batch/wf1").status_code == 200
            elif len(commits) == 3:
                assert client_a.post("/close_batch/wf1").status_code == 200
        return real_run(script, script_keys, args)

    store.transport.run = run
    try:
        r = client_b.post("/close_batch/wf1?job=s_extract")
    finally:
        store.transport.run = real_run
    assert commits == ["0", "0", "1"]  # lost twice, then insisted (and took the turn)
    assert r.status_code == 409 and r.json["error"] == "not_open", r.json
    assert not real_redis.exists(keys.turn("wf1"))
