"""History, search, most_recent, watermark control, audit, pause and exclusive runs.

Every test runs twice: on fakeredis and on a real redis-server of our own.
"""
import json
from datetime import timedelta

import fakeredis
import pytest

from batchy import create_app
from batchy.storage import keys

from .reliability_helpers import ShiftedClock


@pytest.fixture(params=["fakeredis", "redis-server"])
def env(request, cfg_dir, write_cfg):
    """(client, redis, write_cfg, make) on either backend; make(**config) builds another app."""
    if request.param == "fakeredis":
        redis = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
        base = {"REDIS_CLIENT": redis}
    else:
        server = request.getfixturevalue("redis_server")
        redis = request.getfixturevalue("real_redis")
        base = {"BATCHY_REDIS_URL": server.url}

    def make(**config):
        return create_app({**base, "BATCHY_CFG_DIR": str(cfg_dir), **config}).test_client()

    client = make()
    assert client.get("/load_cfg/wf1").status_code == 200
    return client, redis, write_cfg, make


def run(client, wf="wf1", outcome="close", **query):
    opened = client.get(f"/open_batch/{wf}")
    assert opened.status_code == 200, opened.json
    closed = client.get(f"/{outcome}_batch/{wf}", query_string=query)
    assert closed.status_code == 200, closed.json
    return opened.json["s_extract"]["batch_id"]


def test_history_newest_first_with_pagination_and_batch_lookup(env):
    client, *_ = env
    ids = [run(client, records_processed=n) for n in range(1, 6)]
    page = client.get("/history/wf1?limit=2").json
    assert [b["batch_id"] for b in page["batches"]] == ids[::-1][:2]
    assert page["next_before"] == ids[3]
    rest = client.get(f"/history/wf1?limit=10&before={page['next_before']}").json
    assert [b["batch_id"] for b in rest["batches"]] == ids[::-1][2:] and rest["next_before"] is None
    entry = page["batches"][0]
    assert entry["status"] == "success" and entry["records_processed"] == 5  # a whole close: counted once
    assert entry["jobs"]["s_extract"]["from_date"] and entry["jobs"]["s_extract"]["to_date"]
    assert entry["duration_seconds"] >= 0
    one = client.get(f"/batch/wf1/{ids[0]}").json
    assert one["s_extract"]["status"] == "success" and one["s_extract"]["records_processed"] == 1
    assert client.get("/batch/wf1/123").json["error"] == "batch_not_found"
    assert client.get("/history/nope").status_code == 404


def test_each_count_of_a_history_entry_says_what_it_is(env):
    # Issue 22, item 9: a whole close of 1234 showed 1234 on the batch and on each job, with nothing to tell.
    client, *_ = env
    run(client, records_processed=1234)
    entry = client.get("/history/wf1?limit=1").json["batches"][0]
    assert entry["records_processed"] == 1234
    assert {name: (job["records_processed"], job["records_scope"]) for name, job in entry["jobs"].items()} == {
        "s_extract": (1234, "batch"), "s_load": (1234, "batch")}
    batch_id = client.get("/open_batch/wf1").json["s_extract"]["batch_id"]
    client.get(f"/close_batch/wf1?job=s_extract&records_processed=10&batch_id={batch_id}")
    client.get(f"/close_batch/wf1?records_processed=5&batch_id={batch_id}")  # the one job left: its own count
    entry = client.get("/history/wf1?limit=1").json["batches"][0]
    assert entry["records_processed"] == 15
    assert {name: (job["records_processed"], job["records_scope"]) for name, job in entry["jobs"].items()} == {
        "s_extract": (10, None), "s_load": (5, None)}


def test_batches_search_by_time_status_and_workflow(env):
    client, _redis, write_cfg, _ = env
    write_cfg("wf2", "j:\n")
    client.get("/load_cfg/wf2")
    ok = run(client)
    bad = run(client, outcome="fail")
    client.get("/open_batch/wf2")
    client.get("/close_batch/wf2")
    everything = client.get("/batches").json
    assert len(everything["batches"]) == 3 and everything["next_offset"] is None
    failed = client.get("/batches?status=failed").json["batches"]
    assert [(b["workflow"], b["batch_id"]) for b in failed] == [("wf1", bad)]
    only2 = client.get("/batches?workflow=wf2").json["batches"]
    assert {b["workflow"] for b in only2} == {"wf2"}
    assert client.get("/batches?to=2000-01-01").json["batches"] == []
    assert len(client.get("/batches?from=2000-01-01T00:00:00Z").json["batches"]) == 3
    page = client.get("/batches?limit=1").json
    assert page["batches"][0]["batch_id"] == ok and page["next_offset"] == 1
    assert client.get("/batches?status=bogus").status_code == 400
    assert client.get("/batches?from=last%20week").status_code == 400


def test_retention_deletes_old_snapshots_and_their_index_entries(env):
    _, redis, _, make = env
    client = make(BATCHY_HISTORY_KEEP=3)
    ids = [run(client) for _ in range(6)]
    assert [int(i) for i in redis.zrange(keys.history("wf1"), 0, -1)] == ids[-3:]
    for old in ids[:3]:
        assert not redis.exists(keys.batch("wf1", old))
    for kept in ids[3:]:
        assert redis.exists(keys.batch("wf1", kept))
    assert sorted(redis.zrange(keys.BATCHES, 0, -1)) == sorted(f"wf1-{i}" for i in ids[-3:])


def test_retention_keeps_a_batch_a_job_still_runs_until_it_ends(env):
    """A job on its own schedule may run while many shorter batches open and end: retention
    must not delete the record of its run before it ends (it did: the close then wrote nowhere)."""
    _, redis, _, make = env
    client = make(BATCHY_HISTORY_KEEP=3)
    long_run = client.post("/open_batch/wf1?job=s_load").json["s_load"]["batch_id"]
    short = []
    for _ in range(4):
        batch_id = client.post("/open_batch/wf1?job=s_extract").json["s_extract"]["batch_id"]
        assert client.post(f"/close_batch/wf1?job=s_extract&batch_id={batch_id}").status_code == 200
        short.append(batch_id)
    # It counts against the 3 kept: the two newest short batches are kept beside it.
    assert [int(i) for i in redis.zrange(keys.history("wf1"), 0, -1)] == [long_run, *short[-2:]]
    assert client.get(f"/batch/wf1/{long_run}").json["s_load"]["status"] == "open"
    closed = client.post(f"/close_batch/wf1?job=s_load&batch_id={long_run}&records_processed=10")
    assert closed.status_code == 200
    entry = client.get(f"/batch/wf1/{long_run}").json["s_load"]
    assert entry["status"] == "success" and entry["records_processed"] == 10
    assert long_run in [b["batch_id"] for b in client.get("/history/wf1").json["batches"]]
    # Ended, it is the oldest: the next batch indexed drops it as any other.
    run_id = client.post("/open_batch/wf1?job=s_extract").json["s_extract"]["batch_id"]
    assert [int(i) for i in redis.zrange(keys.history("wf1"), 0, -1)] == [*short[-2:], run_id]
    assert not redis.exists(keys.batch("wf1", long_run))
    assert f"wf1-{long_run}" not in redis.zrange(keys.BATCHES, 0, -1)


def test_retention_keeps_every_running_batch_when_more_run_than_it_keeps(env, write_cfg):
    """Three jobs each on its own batch, two kept: the index holds all three until they end
    (the newest was deleted at its open when the two older ones ran)."""
    _, redis, write_cfg_, make = env
    write_cfg_("tri", "a: {}\nb: {}\nc: {}\n")
    client = make(BATCHY_HISTORY_KEEP=2)
    assert client.post("/load_cfg/tri").status_code == 200
    ids = {job: client.post(f"/open_batch/tri?job={job}").json[job]["batch_id"] for job in "abc"}
    assert sorted(int(i) for i in redis.zrange(keys.history("tri"), 0, -1)) == sorted(ids.values())
    for job, batch_id in ids.items():
        assert client.get(f"/batch/tri/{batch_id}").json[job]["status"] == "open"
        assert client.post(f"/close_batch/tri?job={job}&batch_id={batch_id}").status_code == 200
    assert {b["batch_id"] for b in client.get("/history/tri").json["batches"]} == set(ids.values())
    newest = client.post("/open_batch/tri?job=a").json["a"]["batch_id"]  # all ended: back to two
    assert [int(i) for i in redis.zrange(keys.history("tri"), 0, -1)] == [ids["c"], newest]


def test_most_recent_survives_a_later_failure(env):
    client, *_ = env
    assert client.get("/most_recent/wf1").json["most_recent"] is None
    good = run(client)
    start = client.get(f"/batch/wf1/{good}").json["s_extract"]["batch_start"]
    run(client, outcome="fail")
    client.get("/open_batch/wf1")  # and one in progress
    body = client.get("/most_recent/wf1?job=s_extract").json
    assert body["most_recent"] == start and body["batch_id"] == good
    assert abs(body["timestamp"] - good) <= 1
    assert client.get("/most_recent/wf1").json["batch_id"] == good
    assert client.get("/most_recent/wf1?job=nope").status_code == 404


def test_set_from_date_is_exact_audited_and_refused_while_open(env):
    client, *_ = env
    client.get("/open_batch/wf1")
    r = client.post("/set_from_date/wf1", json={"from_date": "2023-05-01T10:00:00+02:00"})
    assert r.status_code == 409 and r.json["error"] == "batch_open"
    client.get("/close_batch/wf1")
    r = client.post("/set_from_date/wf1", json={"from_date": "2023-05-01T10:00:00+02:00", "job": "s_extract"})
    assert r.status_code == 200 and r.json["s_extract"]["next_from_date"] == "2023-05-01T08:00:00+00:00"
    opened = client.get("/open_batch/wf1").json
    assert opened["s_extract"]["from_date"] == "2023-05-01T08:00:00+00:00"
    assert "next_from_date" not in opened["s_extract"]
    assert client.post("/set_from_date/wf1?force=true", json={"from_date": "2023-01-01"}).status_code == 200
    events = client.get("/events/wf1?limit=10").json["events"]
    set_events = [e for e in events if e["action"] == "set"]
    assert len(set_events) == 2
    first_set = set_events[-1]
    assert first_set["from_after"]["s_extract"] == "2023-05-01T08:00:00+00:00"
    assert first_set["from_before"]["s_extract"] == "2024-01-01T00:00:00+00:00"
    assert first_set["actor"] == "127.0.0.1"
    assert client.post("/set_from_date/wf1", json={}).status_code == 400
    assert client.post("/set_from_date/wf1", json={"from_date": "soon"}).status_code == 400


def test_rewind_to_a_past_batch(env):
    client, *_ = env
    first = run(client)
    first_from = client.get(f"/batch/wf1/{first}").json["s_extract"]["from_date"]
    for _ in range(2):
        run(client)
    r = client.post("/rewind/wf1", json={"batch_id": first})
    assert r.status_code == 200
    opened = client.get("/open_batch/wf1").json
    assert opened["s_extract"]["from_date"] == first_from
    assert client.post("/rewind/wf1", json={"batch_id": first}).status_code == 409  # open now
    assert client.post("/rewind/wf1", json={"batch_id": 42}).status_code == 404
    assert client.post("/rewind/wf1", json={}).status_code == 400
    actions = [e["action"] for e in client.get("/events/wf1").json["events"]]
    assert actions[:2] == ["open", "rewind"] and actions[-1] == "load"


def test_events_paginate_newest_first(env):
    client, *_ = env
    run(client)
    events = client.get("/events/wf1").json["events"]
    assert [e["action"] for e in events] == ["close", "open", "load"]
    older = client.get(f"/events/wf1?before={events[0]['id']}&limit=1").json["events"]
    assert [e["action"] for e in older] == ["open"]
    assert client.get("/events/wf1?before=junk").status_code == 400


def test_pause_refuses_open_with_423_and_keeps_a_history(env):
    client, *_ = env
    assert client.post("/pause", json={"message": "upgrading Redis"}).status_code == 200
    r = client.get("/open_batch/wf1")
    assert r.status_code == 423 and "upgrading Redis" in r.json["message"]
    assert client.get("/open_batch/wf1?dry_run=true").status_code == 423
    assert client.get("/pause_status").json["service"]["message"] == "upgrading Redis"
    client.post("/resume")
    client.post("/pause/wf1", json={"message": "bad source data"})
    r = client.get("/open_batch/wf1")
    assert r.status_code == 423 and "bad source data" in r.json["message"]
    assert client.get("/pause_status").json["workflows"]["wf1"]["message"] == "bad source data"
    client.post("/resume/wf1")
    assert client.get("/open_batch/wf1").status_code == 200
    history = client.get("/pause_history").json["history"]
    assert [(h["action"], h["scope"]) for h in history] == [
        ("resume", "wf1"), ("pause", "wf1"), ("resume", "*"), ("pause", "*")]
    assert [e["action"] for e in client.get("/events/wf1").json["events"]][:3] == ["open", "resume", "pause"]
    assert client.post("/pause/nope").status_code == 404


def test_exclusive_workflow_refuses_a_second_open_until_the_lease_expires(env):
    _, redis, write_cfg, make = env
    write_cfg("ex", ".batchy:\n  exclusive: true\n  lease_hours: 2\nj:\n  from_date: 2024-01-01\n")
    clock = ShiftedClock(timedelta(0))  # Redis' clock, read as late as the test says
    client = make(CLOCK=clock)
    client.get("/load_cfg/ex")
    first = client.get("/open_batch/ex").json["j"]
    clock.delta = timedelta(hours=1, minutes=59)  # still within the lease
    r = client.get("/open_batch/ex")
    assert r.status_code == 409 and r.json["error"] == "batch_open" and r.json["batch_id"] == first["batch_id"]
    clock.delta = timedelta(hours=2, seconds=1)  # the lease is over: whoever opened it crashed
    second = client.get("/open_batch/ex")
    assert second.status_code == 200
    assert second.json["j"]["from_date"] == first["from_date"]  # the crashed window is reused
    old = json.loads(redis.hget(keys.batch("ex", first["batch_id"]), "j"))
    assert old["status"] == "abandoned"


def test_export_then_import_into_another_store(env, cfg_dir):
    client, redis, _, _ = env
    ids = [run(client) for _ in range(2)]
    app = client.application
    with app.app_context():
        from batchy.web.db import get_store
        doc = json.loads(json.dumps(get_store().export()))
    target_redis = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    target = create_app({"REDIS_CLIENT": target_redis, "BATCHY_CFG_DIR": str(cfg_dir)})
    with target.app_context():
        from batchy.web.db import get_store
        assert get_store().import_(doc) == ["wf1"]
        with pytest.raises(Exception) as err:
            get_store().import_(doc)
        assert "replace" in str(err.value)
    tc = target.test_client()
    assert tc.get("/get_status/wf1").json == client.get("/get_status/wf1").json
    assert [b["batch_id"] for b in tc.get("/history/wf1").json["batches"]] == ids[::-1]
    nxt = tc.get("/open_batch/wf1").json["s_extract"]["batch_id"]
    assert nxt > ids[-1]
