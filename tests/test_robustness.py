"""The promise at its edges: each defect a tester found, as a test that failed before its fix."""
from __future__ import annotations

import json

import pytest

from batchy.storage import keys
from batchy.web.db import services_of

from .conftest import make_app


def plain(ledger: dict) -> dict:
    """Return what a job's /coverage answer says of its covered intervals and holes (no late data here)."""
    assert ledger.get("dirty", []) == [] and ledger.get("failed_quality", []) == []
    return {"covered": ledger["covered"], "holes": ledger["holes"]}


@pytest.fixture(params=["fakeredis", "redis-server"])
def any_client(request, fake_redis, cfg_dir):
    """A test client on the embedded store, then on a real redis-server of our own."""
    if request.param == "fakeredis":
        return make_app(fake_redis, cfg_dir).test_client()
    request.getfixturevalue("real_redis")
    server = request.getfixturevalue("redis_server")
    from batchy import create_app

    return create_app({"BATCHY_REDIS_URL": server.url, "BATCHY_CFG_DIR": str(cfg_dir)}).test_client()


def redis_of(client):
    return services_of(client.application).store.redis


# -- 2. no from_date later than now, no backwards window -----------------------------


def test_set_from_date_in_the_future_is_refused(any_client):
    any_client.post("/load_cfg/wf1")
    for force in ("false", "true"):
        r = any_client.post(f"/set_from_date/wf1?from_date=2062-01-01&force={force}")
        assert r.status_code == 400, r.json
        assert r.json["parameter"] == "from_date" and "later than now" in r.json["message"]
    assert any_client.get("/get_status/wf1").json["s_extract"]["from_date"].startswith("2024-01-01")


def test_a_workflow_file_with_a_future_from_date_is_refused(any_client, write_cfg):
    write_cfg("future", "a:\n  from_date: 2099-01-01\n")
    r = any_client.post("/load_cfg/future")
    assert r.status_code == 400 and r.json["job"] == "a" and "later than now" in r.json["message"], r.json
    assert any_client.get("/get_status/future").status_code == 404


def test_a_stored_future_from_date_never_opens_a_backwards_window(any_client):
    any_client.post("/load_cfg/wf1")
    redis = redis_of(any_client)
    job = json.loads(redis.hget("wf1", "s_extract"))
    redis.hset("wf1", "s_extract", json.dumps({**job, "from_date": "2062-01-01T00:00:00+00:00"}))
    redis.hdel(keys.meta("wf1"), "version")
    r = any_client.post("/open_batch/wf1")
    assert r.status_code == 409 and r.json["error"] == "from_date_in_future" and r.json["job"] == "s_extract"
    assert json.loads(redis.hget("wf1", "s_load"))["status"] == "new"  # nothing opened


def test_rewind_cannot_reach_the_future(any_client):
    any_client.post("/load_cfg/wf1")
    batch_id = any_client.post("/open_batch/wf1").json["s_extract"]["batch_id"]
    any_client.post("/close_batch/wf1")
    redis = redis_of(any_client)
    snap = json.loads(redis.hget(keys.batch("wf1", batch_id), "s_extract"))
    redis.hset(keys.batch("wf1", batch_id), "s_extract", json.dumps({**snap, "from_date": "2090-01-01T00:00:00Z"}))
    r = any_client.post(f"/rewind/wf1?batch_id={batch_id}&job=s_extract")
    assert r.status_code == 400 and "later than now" in r.json["message"], r.json


# -- 3. every snapshot reaches a final status --------------------------------------------


def test_a_reset_abandons_the_open_batch_in_history(any_client):
    any_client.post("/load_cfg/wf1")
    batch_id = any_client.post("/open_batch/wf1").json["s_extract"]["batch_id"]
    assert any_client.post("/load_cfg/wf1?reset=true").status_code == 200
    entry = any_client.get("/history/wf1").json["batches"][0]
    assert entry["batch_id"] == batch_id and entry["status"] == "abandoned"
    assert "reset" in entry["jobs"]["s_extract"]["message"]
    assert any_client.get("/batches?status=open").json["batches"] == []


def test_a_job_dropped_from_the_file_abandons_its_open_batch(any_client, write_cfg):
    write_cfg("two", "a: {}\nb: {}\n")
    any_client.post("/load_cfg/two")
    batch_id = any_client.post("/open_batch/two").json["a"]["batch_id"]
    any_client.post("/close_batch/two?job=a")
    write_cfg("two", "a: {}\n")
    assert list(any_client.post("/load_cfg/two").json) == ["a"]
    entry = any_client.get("/history/two").json["batches"][0]
    assert entry["batch_id"] == batch_id
    assert entry["jobs"]["a"]["status"] == "success"
    assert entry["jobs"]["b"]["status"] == "abandoned" and "removed" in entry["jobs"]["b"]["message"]


# -- 5. one malformed stored value ----------------------------------------------------------


@pytest.mark.parametrize("value", ['{"status": "open"', "[]", '{"status": "opened"}', '{"from_date": "soon"}'])
def test_a_malformed_value_is_reported_for_its_workflow_only(any_client, write_cfg, value):
    write_cfg("me", "a: {}\n")
    for wf in ("wf1", "me"):
        any_client.post(f"/load_cfg/{wf}")
    redis = redis_of(any_client)
    redis.hset("me", "a", value)
    redis.hdel(keys.meta("me"), "version")
    for method, path in (("POST", "/open_batch/me"), ("GET", "/wait/me?timeout=0")):
        r = any_client.open(path, method=method)
        assert r.status_code == 409 and r.json["error"] == "corrupt_state", (path, r.json)
        assert r.json["workflow"] == "me" and r.json["job"] == "a" and "reset=true" in r.json["message"]
    status = any_client.get("/get_status/me")
    if value in ('{"status": "open"', "[]"):
        assert status.status_code == 409  # never an answer that is not JSON
    else:
        assert status.status_code == 200 and status.json["a"]  # valid JSON: shown as stored
    page = any_client.get("/")
    assert page.status_code == 200 and b'data-corrupt="me"' in page.data and b'data-workflow="wf1"' in page.data
    metrics = any_client.get("/metrics").data.decode()
    assert "batchy_redis_up 1.0" in metrics and 'batchy_workflow_corrupt{workflow="me"} 1.0' in metrics
    assert any_client.post("/open_batch/wf1").status_code == 200  # the others keep working
    repaired = any_client.post("/load_cfg/me?reset=true")
    assert repaired.status_code == 200 and repaired.json["a"]["status"] == "new", repaired.json
    assert any_client.post("/open_batch/me").status_code == 200


@pytest.mark.parametrize("field, value", [("reprocess_hours", 1e300), ("reprocess_hours", -2),
                                          ("settle_minutes", "x"), ("settle_minutes", -600),
                                          ("max_window_hours", -1), ("batch_size", "year"), ("trunc_start", "yes")])
def test_a_window_setting_a_hand_edit_broke_is_corrupt_state_not_a_window(client, write_cfg, field, value):
    """Each was a 500 (reprocess_hours 1e300, settle_minutes "x", batch_size "year") or a wrong
    window used silently (settle_minutes -600: a to_date ten hours ahead; a negative max window)."""
    write_cfg("me", "a:\n  from_date: 2024-01-01\n")
    client.post("/load_cfg/me")
    redis = redis_of(client)
    job = json.loads(redis.hget("me", "a"))
    redis.hset("me", "a", json.dumps({**job, field: value}))
    redis.hdel(keys.meta("me"), "version")
    for method, path in (("POST", "/open_batch/me"), ("POST", "/open_batch/me?dry_run=true"),
                         ("POST", "/open_batch/me/infa"), ("GET", "/wait/me?timeout=0"),
                         ("POST", "/backfill/me?from=2024-01-01&to=2024-01-02")):
        r = client.open(path, method=method)
        assert r.status_code == 409 and r.json["error"] == "corrupt_state", (path, r.json)
        assert r.json["job"] == "a" and field in r.json["message"] and "reset=true" in r.json["message"], r.json
    assert client.post("/load_cfg/me?reset=true").status_code == 200
    assert client.post("/open_batch/me").status_code == 200


@pytest.mark.parametrize("settings", [{"settle_minutes": "x"}, {"settle_minutes": -600}, {"max_window_hours": "x"},
                                      {"max_window_hours": -5}, {"batch_size": "year"}, {"lease_hours": "x"}])
def test_a_workflow_setting_a_hand_edit_broke_is_corrupt_state_not_a_window(client, write_cfg, settings):
    write_cfg("me", ".batchy:\n  exclusive: true\na:\n  from_date: 2024-01-01\n")
    client.post("/load_cfg/me")
    redis = redis_of(client)
    redis.hset(keys.meta("me"), mapping={"settings": json.dumps({"exclusive": True, **settings})})
    redis.hdel(keys.meta("me"), "version")
    for path in ("/open_batch/me", "/open_batch/me?dry_run=true", "/backfill/me?from=2024-01-01&to=2024-01-02"):
        r = client.post(path)
        assert r.status_code == 409 and r.json["error"] == "corrupt_state", (path, r.json)
        assert "settings" in r.json["message"] and "reset=true" in r.json["message"], r.json
    assert client.post("/load_cfg/me?reset=true").status_code == 200
    assert client.post("/open_batch/me").status_code == 200


@pytest.mark.parametrize("field, value", [("coverage:s_extract", "[[1e300, 1e301]]"), ("success:s_extract", "garbage"),
                                          ("success:s_extract", '{"batch_id": "x", "start": "y"}')])
def test_a_malformed_ledger_or_last_success_is_corrupt_state_not_a_500(client, field, value):
    """Each was a 500 on /coverage or /most_recent. A reset keeps them (they record what was
    loaded), so the answer says to repair the field by hand, and that repairs it."""
    client.post("/load_cfg/wf1")
    client.post("/open_batch/wf1")
    client.post("/close_batch/wf1")
    redis = redis_of(client)
    redis.hset(keys.meta("wf1"), field, value)
    broken = ["/coverage/wf1", "/coverage/wf1?job=s_extract"] if field.startswith("coverage") else \
        ["/most_recent/wf1", "/most_recent/wf1?job=s_extract"]
    for path in broken:
        r = client.get(path)
        assert r.status_code == 409 and r.json["error"] == "corrupt_state", (path, r.status_code, r.data[:300])
        assert field in r.json["message"] and "HDEL" in r.json["message"] and r.json["job"] == "s_extract", r.json
    for path in ("/coverage/wf1", "/most_recent/wf1", "/coverage/wf1/view", "/get_status/wf1"):
        assert client.get(path).status_code in (200, 409), path  # never a 500
    assert client.post("/close_batch/wf1").status_code == 409  # nothing open: not_open, as before
    redis.hdel(keys.meta("wf1"), field, "version")
    for path in ("/coverage/wf1", "/most_recent/wf1", "/coverage/wf1/view"):
        assert client.get(path).status_code == 200, path


def test_a_malformed_meta_field_is_repaired_by_a_reset(any_client):
    any_client.post("/load_cfg/wf1")
    redis = redis_of(any_client)
    redis.hset(keys.meta("wf1"), mapping={keys.LAST_BATCH_ID: "soon", keys.VERSION: "x"})
    r = any_client.post("/open_batch/wf1")
    assert r.status_code == 409 and r.json["error"] == "corrupt_state", r.json
    assert any_client.post("/load_cfg/wf1?reset=true").status_code == 200
    assert any_client.post("/open_batch/wf1").status_code == 200


# -- 12. a typo is a 400, never a real change -------------------------------------------------


@pytest.mark.parametrize("path, typo, meant", [
    ("/open_batch/wf1?dryrun=true", "dryrun", "dry_run"),
    ("/close_batch/wf1?records=503", "records", "records_processed"),
    ("/close_batch/wf1?batchid=1", "batchid", "batch_id"),
    ("/set_from_date/wf1?fromdate=2024-01-01", "fromdate", "from_date"),
    ("/load_cfg/wf1?rest=true", "rest", "reset"),
])
def test_unknown_parameters_are_refused_before_anything_changes(any_client, path, typo, meant):
    any_client.post("/load_cfg/wf1")
    any_client.post("/open_batch/wf1")
    before = any_client.get("/get_status/wf1").json
    r = any_client.post(path)
    assert r.status_code == 400 and r.json["parameter"] == typo, r.json
    assert f"did you mean {meant!r}" in r.json["message"]
    assert any_client.get("/get_status/wf1").json == before
    r = any_client.post(path.split("?")[0], json={typo: "1"})  # in a JSON body too
    assert r.status_code == 400 and r.json["parameter"] == typo


@pytest.mark.parametrize("path", ["/get_status/wf1?x=1", "/history/wf1?limt=5", "/?refreh=5", "/metrics?x=1",
                                  "/wait/wf1?timout=1", "/pause_status?x=1"])
def test_reads_refuse_unknown_parameters_too(any_client, path):
    any_client.post("/load_cfg/wf1")
    r = any_client.get(path)
    assert r.status_code == 400 and r.json["error"] == "invalid_parameter", (path, r.data[:200])


@pytest.mark.parametrize("limit", ["abc", "0", "1001", "-1"])
def test_a_bad_limit_is_told_the_range_whatever_it_is(client, limit):
    client.post("/load_cfg/wf1")
    r = client.get(f"/history/wf1?limit={limit}")
    assert r.status_code == 400 and r.json["parameter"] == "limit", r.json
    assert f"limit must be a whole number from 1 to 1000, not '{limit}'" == r.json["message"], r.json


def test_a_mistyped_workflow_name_suggests_the_loaded_one(client):
    client.post("/load_cfg/wf1")
    for method, path in (("GET", "/get_status/wf_1"), ("POST", "/open_batch/wf_1"), ("GET", "/coverage/Wf1")):
        r = client.open(path, method=method)
        assert r.status_code == 404 and r.json["error"] == "workflow_not_found", (path, r.json)
        assert "did you mean 'wf1'?" in r.json["message"], r.json
    far = client.get("/get_status/orders").json
    assert "did you mean" not in far["message"] and "add orders.yaml" in far["message"], far


# -- 13. a parameter given twice, or in both places, is a 400: never one of them picked -------

FORM = {"content_type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize("path, body, name", [
    ("/fail_batch/wf1?job=s_extract&job=s_load", None, "job"),  # read as job=s_extract, s_load was closed later
    ("/close_batch/wf1?batch_id=1&batch_id=2", None, "batch_id"),
    ("/fail_batch/wf1?job=s_extract", {"json": {"job": "s_load"}}, "job"),  # the body won before
    ("/fail_batch/wf1", {"data": "job=s_extract&job=s_load", **FORM}, "job"),
    ("/fail_batch/wf1", {"data": '{"job": "s_extract", "job": "s_load"}', "content_type": "application/json"}, "job"),
    ("/open_batch/wf1?dry_run=true&dry_run=false", None, "dry_run"),
    ("/open_batch/wf1?dry_run=true", {"json": {"dry_run": False}}, "dry_run"),
    ("/open_batch/wf1?dry_run=true", {"data": "dry_run=false", **FORM}, "dry_run"),
    ("/open_batch/wf1?dry_run", None, "dry_run"),  # no value: read as false before, a real open
    ("/open_batch/wf1?dry_run=", None, "dry_run"),
    ("/open_batch/wf1", {"data": "dry_run=", **FORM}, "dry_run"),
    ("/load_cfg/wf1?reset", None, "reset"),
])
def test_a_parameter_given_twice_or_without_a_value_is_refused(client, path, body, name):
    client.post("/load_cfg/wf1")
    client.post("/open_batch/wf1")
    before = client.get("/get_status/wf1").json
    events = client.get("/events/wf1").json
    r = client.post(path, **(body or {}))
    assert r.status_code == 400 and r.json["error"] == "invalid_parameter" and r.json["parameter"] == name, r.json
    assert any(words in r.json["message"] for words in ("give it once", "without a value")), r.json
    assert client.get("/get_status/wf1").json == before
    assert client.get("/events/wf1").json == events


@pytest.mark.parametrize("how", [
    {"path": "/open_batch/wf1?job=s_extract&job=s_load"},
    {"path": "/open_batch/wf1", "data": "job=s_extract&job=s_load", **FORM},
    {"path": "/open_batch/wf1", "json": {"job": ["s_extract", "s_load"]}},
])
def test_a_parameter_that_takes_several_values_still_takes_them(client, how):
    client.post("/load_cfg/wf1")
    how = dict(how)
    r = client.post(how.pop("path"), **how)
    assert r.status_code == 200, r.json
    assert r.json["s_extract"]["status"] == r.json["s_load"]["status"] == "open"
    r = client.get("/wait/wf1?job=s_extract&job=s_load&timeout=0")
    assert r.status_code == 200 and r.json["state"] == "waiting", r.json


def test_an_offsets_plus_read_as_a_space_is_a_400_that_says_to_write_2b(client):
    """2026-11-01T00:00:00+01:00 in a URL arrives as "2026-11-01T00:00:00 01:00"."""
    client.post("/load_cfg/wf1")
    before = client.get("/get_status/wf1").json
    r = client.post("/set_from_date/wf1?from_date=2026-11-01T00:00:00+01:00&job=s_extract")
    assert r.status_code == 400 and r.json["parameter"] == "from_date" and "%2B" in r.json["message"], r.json
    assert client.get("/get_status/wf1").json == before
    fixed = client.post("/set_from_date/wf1?from_date=2026-11-01T00:00:00%2B01:00&job=s_extract")
    assert fixed.status_code == 200, fixed.json
    assert client.get("/get_status/wf1").json["s_extract"]["next_from_date"] == "2026-10-31T23:00:00+00:00"
    # A space written as + (urlencode, requests, the batchy client): a time, as meant.
    assert client.get("/batches?from=2024-01-01+10%3A00&to=2024-02-01+00%3A00").status_code == 200
    spaced = client.post("/set_from_date/wf1?from_date=2026-11-01+01:00&job=s_load")
    assert spaced.status_code == 200 and spaced.json["s_load"]["next_from_date"] == "2026-11-01T01:00:00+01:00"


# -- retries are safe -----------------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["close_batch", "fail_batch"])
def test_a_repeated_close_with_batch_id_answers_the_state(any_client, outcome):
    any_client.post("/load_cfg/wf1")
    batch_id = any_client.post("/open_batch/wf1").json["s_extract"]["batch_id"]
    first = any_client.post(f"/{outcome}/wf1", json={"batch_id": batch_id})
    assert first.status_code == 200
    meta = dict(redis_of(any_client).hgetall(keys.meta("wf1")))
    again = any_client.post(f"/{outcome}/wf1", json={"batch_id": batch_id})
    assert again.status_code == 200 and again.json == first.json
    assert dict(redis_of(any_client).hgetall(keys.meta("wf1"))) == meta  # nothing written, nothing counted
    other = "fail_batch" if outcome == "close_batch" else "close_batch"
    assert any_client.post(f"/{other}/wf1", json={"batch_id": batch_id}).status_code == 409  # not the same call
    assert any_client.post(f"/{outcome}/wf1").status_code == 409  # without batch_id: nothing open


def test_a_retried_per_job_close_is_idempotent_too(any_client):
    any_client.post("/load_cfg/wf1")
    batch_id = any_client.post("/open_batch/wf1").json["s_extract"]["batch_id"]
    path = f"/close_batch/wf1?job=s_extract&batch_id={batch_id}"
    assert any_client.post(path).status_code == 200
    again = any_client.post(path)
    assert again.status_code == 200 and again.json["s_extract"]["status"] == "success"
    assert again.json["s_load"]["status"] == "open"


# -- 13. the smaller ones -------------------------------------------------------------------------


def test_resume_of_an_unknown_workflow_is_404_and_writes_nothing(any_client):
    redis = redis_of(any_client)
    before = sorted(redis.keys("*"))
    r = any_client.post("/resume/nosuch")
    assert r.status_code == 404 and r.json["error"] == "workflow_not_found"
    assert sorted(redis.keys("*")) == before


def test_a_whole_workflow_close_counts_its_records_once(any_client):
    any_client.post("/load_cfg/wf1")
    any_client.post("/open_batch/wf1")
    assert any_client.post("/close_batch/wf1", json={"records_processed": 300}).status_code == 200
    assert any_client.get("/history/wf1").json["batches"][0]["records_processed"] == 300
    any_client.post("/open_batch/wf1")
    any_client.post("/close_batch/wf1?job=s_extract&records_processed=10")
    any_client.post("/close_batch/wf1?job=s_load&records_processed=5")
    assert any_client.get("/history/wf1").json["batches"][0]["records_processed"] == 15


def test_load_and_most_recent_answer_in_name_order(any_client, write_cfg):
    write_cfg("order", "zeta: {}\nalpha: {}\nmid: {}\n")
    assert list(any_client.post("/load_cfg/order").json) == ["alpha", "mid", "zeta"]
    assert list(any_client.get("/most_recent/order").json["jobs"]) == ["alpha", "mid", "zeta"]


def test_history_before_takes_any_batch_id(any_client):
    any_client.post("/load_cfg/wf1")
    any_client.post("/open_batch/wf1")
    assert len(any_client.get(f"/history/wf1?before={2**53}").json["batches"]) == 1
    r = any_client.get("/history/wf1?before=123456789012345678901234")
    assert r.status_code == 400 and "at most" in r.json["message"], r.json


def test_a_405_never_leaves_its_allow_header_on_later_errors(fake_redis, cfg_dir):
    client = make_app(fake_redis, cfg_dir, BATCHY_ALLOW_GET_MUTATIONS=False).test_client()
    assert client.get("/open_batch/wf1").headers["Allow"] == "POST"
    later = client.get("/get_status/nosuch")
    assert later.status_code == 404 and "Allow" not in later.headers


def test_not_found_names_the_configured_folder_in_the_log_only(fake_redis, tmp_path, caplog):
    client = make_app(fake_redis, tmp_path / "flows").test_client()
    with caplog.at_level("INFO", logger="batchy"):
        message = client.get("/get_status/nosuch").json["message"]
    assert "BATCHY_CFG_DIR" in message and str(tmp_path) not in message
    assert str(tmp_path / "flows") in caplog.text


def test_a_retried_open_with_its_idempotency_key_answers_the_same_batch(any_client):
    any_client.post("/load_cfg/wf1")
    key = {"Idempotency-Key": "run-2024-03-01T02:00"}
    first = any_client.post("/open_batch/wf1", headers=key)
    assert first.status_code == 200
    batch_id = first.json["s_extract"]["batch_id"]
    again = any_client.post("/open_batch/wf1", headers=key)
    assert again.status_code == 200 and again.json == first.json  # not a new batch, nothing abandoned
    infa = any_client.post("/open_batch/wf1/infa", headers=key)
    assert infa.status_code == 200 and b"$$from_date" in infa.data
    history = any_client.get("/history/wf1").json["batches"]
    assert [b["batch_id"] for b in history] == [batch_id] and history[0]["status"] == "open"
    other = any_client.post("/open_batch/wf1", headers={"Idempotency-Key": "the next run"})
    assert other.json["s_extract"]["batch_id"] > batch_id
    late = any_client.post("/open_batch/wf1", headers=key)  # a retry after another run opened
    assert late.status_code == 409 and late.json["error"] == "stale_batch", late.json
    bad = any_client.post("/open_batch/wf1", headers={"Idempotency-Key": "x" * 201})
    assert bad.status_code == 400 and bad.json["parameter"] == "Idempotency-Key"


def test_the_idempotency_key_holds_across_processes(redis_server, real_redis, cfg_dir):
    from batchy import create_app

    config = {"BATCHY_REDIS_URL": redis_server.url, "BATCHY_CFG_DIR": str(cfg_dir)}
    a, b = create_app(config).test_client(), create_app(config).test_client()
    a.post("/load_cfg/wf1")
    first = a.post("/open_batch/wf1", headers={"Idempotency-Key": "k1"}).json
    assert b.post("/open_batch/wf1", headers={"Idempotency-Key": "k1"}).json == first
    ttl = real_redis.pttl(keys.idempotency("wf1", "k1"))
    assert 23 * 3600_000 < ttl <= 24 * 3600_000


def test_history_pages_by_size_as_well_as_by_count(any_client, write_cfg):
    write_cfg("wide", "".join(f"job{n:03d}: {{}}\n" for n in range(50)))
    any_client.post("/load_cfg/wide")
    for _ in range(4):
        any_client.post("/open_batch/wide")
        any_client.post("/close_batch/wide")
    store = services_of(any_client.application).store
    entries, more = store.reads.history("wide", limit=10, max_bytes=10_000)  # about one batch's snapshot
    assert 1 <= len(entries) < 4 and more
    older, _ = store.reads.history("wide", limit=10, before=entries[-1]["batch_id"])
    assert [e["batch_id"] for e in entries + older] == sorted((e["batch_id"] for e in entries + older), reverse=True)
    assert len(entries + older) == 4
    page = any_client.get("/history/wide?limit=2").json
    assert len(page["batches"]) == 2 and page["next_before"] == page["batches"][-1]["batch_id"]


def test_set_from_date_without_an_offset_is_read_in_each_jobs_zone(any_client):
    any_client.post("/load_cfg/wf1")  # s_extract: UTC, s_load: Europe/Paris
    jobs = any_client.post("/set_from_date/wf1?from_date=2024-02-01").json
    assert jobs["s_extract"]["next_from_date"] == "2024-02-01T00:00:00+00:00"
    assert jobs["s_load"]["next_from_date"] == "2024-02-01T00:00:00+01:00"
    given = any_client.post("/set_from_date/wf1", json={"from_date": "2024-02-01T00:00:00Z", "job": "s_load"}).json
    assert given["s_load"]["next_from_date"] == "2024-02-01T01:00:00+01:00"  # an offset is kept as given


# -- issue 16: the workflow lifecycle --------------------------------------------------------


def test_list_load_all_and_remove(any_client, write_cfg):
    write_cfg("second", "a: {}\n")
    write_cfg("broken", "a: [unclosed\n")
    r = any_client.post("/load_cfg")
    assert r.status_code == 200
    assert sorted(r.json["loaded"]) == ["second", "wf1"] and list(r.json["failed"]) == ["broken"]
    assert r.json["failed"]["broken"]["error"] == "invalid_config"
    any_client.post("/open_batch/wf1")
    listed = any_client.get("/workflows").json["workflows"]
    assert [w["workflow"] for w in listed] == ["second", "wf1"]
    assert listed[1]["jobs"] == 2 and listed[1]["last_batch_id"] and listed[1]["paused"] is False

    removed = any_client.post("/remove_workflow/wf1")
    assert removed.json == {"workflow": "wf1", "removed": True, "history": "kept"}
    assert any_client.get("/get_status/wf1").status_code == 404
    assert [w["workflow"] for w in any_client.get("/workflows").json["workflows"]] == ["second"]
    history = any_client.get("/history/wf1").json["batches"]  # kept, and no batch left open
    assert history and history[0]["status"] == "abandoned"
    assert any_client.get("/events/wf1").json["events"][0]["action"] == "remove"
    assert any_client.post("/remove_workflow/wf1").status_code == 404

    any_client.post("/load_cfg/wf1")
    any_client.post("/open_batch/wf1")
    purged = any_client.post("/remove_workflow/wf1?purge_history=true").json
    assert purged["history"] == "purged"
    redis = redis_of(any_client)
    assert not redis.exists(keys.history("wf1")) and not [k for k in redis.keys("wf1-*")]
    assert not [m for m in redis.zrange(keys.BATCHES, 0, -1) if m.startswith("wf1-")]
    assert any_client.post("/load_cfg/wf1").json["s_extract"]["status"] == "new"  # starts afresh


def test_workflows_are_loaded_at_start_when_asked(redis_server, real_redis, cfg_dir):
    from batchy import create_app

    config = {"BATCHY_REDIS_URL": redis_server.url, "BATCHY_CFG_DIR": str(cfg_dir)}
    assert create_app(config).test_client().get("/get_status/wf1").status_code == 404
    app = create_app({**config, "BATCHY_LOAD_ON_START": True})
    assert app.test_client().get("/get_status/wf1").status_code == 200


# -- issue 14: window policies and the coverage ledger --------------------------------------


def test_an_outage_is_caught_up_in_bounded_aligned_pieces_without_a_hole(fake_redis, cfg_dir, write_cfg):
    from datetime import datetime, timedelta, timezone

    from .reliability_helpers import VirtualClock

    clock = VirtualClock(datetime(2024, 3, 8, 10, 30, tzinfo=timezone.utc))
    client = make_app(fake_redis, cfg_dir, CLOCK=clock).test_client()
    write_cfg("hourly", "s:\n  from_date: 2024-03-01T00:00:00Z\n  batch_size: hour\n  max_window_hours: 24\n")
    client.post("/load_cfg/hourly")
    windows = []
    for _ in range(20):
        job = client.post("/open_batch/hourly").json["s"]
        windows.append((job["from_date"], job["to_date"]))
        assert client.post("/close_batch/hourly").status_code == 200
        if job["caught_up"]:
            break
        assert job["behind_seconds"] > 0
    assert len(windows) == 8  # 7 full days, then the morning of the 8th up to 10:00
    assert windows[0] == ("2024-03-01T00:00:00+00:00", "2024-03-02T00:00:00+00:00")
    assert windows[-1] == ("2024-03-08T00:00:00+00:00", "2024-03-08T10:00:00+00:00")
    assert all(a[1] == b[0] for a, b in zip(windows, windows[1:]))  # tiled: no gap, no overlap
    ledger = client.get("/coverage/hourly").json["s"]
    assert plain(ledger) == {"covered": [["2024-03-01T00:00:00+00:00", "2024-03-08T10:00:00+00:00"]], "holes": []}
    clock.advance(timedelta(minutes=40).total_seconds())  # 11:10: one more whole hour
    job = client.post("/open_batch/hourly").json["s"]
    assert (job["from_date"], job["to_date"], job["caught_up"]) == (
        "2024-03-08T10:00:00+00:00", "2024-03-08T11:00:00+00:00", True)


def test_a_policy_removed_by_a_reload_takes_caught_up_with_it(client, write_cfg):
    """Found by the model-based test: the next open still showed the last policy window's verdict."""
    write_cfg("hourly", "s:\n  from_date: 2024-03-01T00:00:00Z\n  batch_size: hour\n")
    client.post("/load_cfg/hourly")
    assert client.post("/open_batch/hourly").json["s"]["caught_up"] is True
    client.post("/close_batch/hourly")
    write_cfg("hourly", "s:\n  from_date: 2024-03-01T00:00:00Z\n")
    client.post("/load_cfg/hourly")
    job = client.post("/open_batch/hourly").json["s"]
    assert "caught_up" not in job and "behind_seconds" not in job
    assert job["to_date"] == job["batch_start"]  # the seed's rule again: the window ends at the open


def test_a_skip_forward_shows_as_a_hole_until_a_rerun_covers_it(fake_redis, cfg_dir, write_cfg):
    from datetime import datetime, timezone

    from .reliability_helpers import VirtualClock

    clock = VirtualClock(datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc))
    client = make_app(fake_redis, cfg_dir, CLOCK=clock).test_client()
    write_cfg("w", "s:\n  from_date: 2024-03-01T00:00:00Z\n")
    client.post("/load_cfg/w")
    client.post("/open_batch/w")
    client.post("/close_batch/w")  # covered 00:00 - 12:00
    clock.advance(6 * 3600)
    client.post("/set_from_date/w?from_date=2024-03-01T14:00:00Z")  # an operator skips 12:00 - 14:00
    client.post("/open_batch/w")
    client.post("/close_batch/w")
    ledger = client.get("/coverage/w").json["s"]
    assert ledger["holes"] == [["2024-03-01T12:00:00+00:00", "2024-03-01T14:00:00+00:00"]]
    assert len(ledger["covered"]) == 2
    assert 'batchy_coverage_holes{job="s",workflow="w"} 1.0' in client.get("/metrics").data.decode()
    assert b'data-holes="1"' in client.get("/").data
    window = client.get("/coverage/w?from=2024-03-01T13:00:00Z&to=2024-03-01T15:00:00Z").json["s"]
    assert plain(window) == {"covered": [["2024-03-01T14:00:00+00:00", "2024-03-01T15:00:00+00:00"]],
                      "holes": [["2024-03-01T13:00:00+00:00", "2024-03-01T14:00:00+00:00"]]}
    client.post("/set_from_date/w?from_date=2024-03-01T11:00:00Z")  # the operator reloads the gap
    client.post("/open_batch/w")
    client.post("/close_batch/w")
    assert client.get("/coverage/w").json["s"]["holes"] == []
    assert client.get("/coverage/w?job=nosuch").status_code == 404


def test_a_retried_open_after_a_reset_is_stale(any_client):
    """A retry used to answer 200 with the reset jobs (status new), as if they were its batch."""
    key = {"Idempotency-Key": "run-1"}
    any_client.post("/load_cfg/wf1")
    batch_id = any_client.post("/open_batch/wf1", headers=key).json["s_extract"]["batch_id"]
    any_client.post("/load_cfg/wf1?reset=true")
    again = any_client.post("/open_batch/wf1", headers=key)
    assert again.status_code == 409 and again.json["error"] == "stale_batch", again.json
    assert again.json["batch_id"] == batch_id and "reset" in again.json["message"]


def test_a_retried_open_of_an_exclusive_workflow_answers_its_batch(any_client, write_cfg):
    """Found by the model-based test: the exclusive rule refused the retry (409 batch_open)."""
    write_cfg("solo", ".batchy:\n  exclusive: true\n  lease_hours: 2\na: {}\n")
    any_client.post("/load_cfg/solo")
    first = any_client.post("/open_batch/solo", headers={"Idempotency-Key": "run-1"})
    again = any_client.post("/open_batch/solo", headers={"Idempotency-Key": "run-1"})
    assert again.status_code == 200 and again.json == first.json, again.json
    assert any_client.post("/open_batch/solo").status_code == 409  # another run is still refused


def test_an_import_over_an_open_batch_abandons_it(any_client):
    """Found by the model-based test: a backup restored over a batch opened after it left that
    batch open in history for good."""
    store = services_of(any_client.application).store
    any_client.post("/load_cfg/wf1")
    backup = store.export(["wf1"])
    batch_id = any_client.post("/open_batch/wf1").json["s_extract"]["batch_id"]  # a run that crashes
    assert store.import_(backup, replace=True) == ["wf1"]
    entry = any_client.get("/history/wf1").json["batches"][0]
    assert entry["batch_id"] == batch_id and entry["status"] == "abandoned"
    assert "import" in entry["jobs"]["s_extract"]["message"]


def test_an_import_of_a_batch_older_than_the_newest_ends_it(any_client):
    """Found by the model-based test: an export holding an open batch, imported after a newer
    batch was opened here, came back open behind the newer id: a close naming it was 409
    stale_batch, a close naming the newer one closed it, and /batches listed it open for good."""
    store = services_of(any_client.application).store
    any_client.post("/load_cfg/wf1")
    old = any_client.post("/open_batch/wf1").json["s_extract"]
    backup = store.export(["wf1"])  # taken while batch `old` runs
    newer = any_client.post("/open_batch/wf1").json["s_extract"]["batch_id"]
    assert newer > old["batch_id"]
    assert store.import_(backup, replace=True) == ["wf1"]

    status = any_client.get("/get_status/wf1").json["s_extract"]
    assert status["status"] == "failed" and "abandoned" in status["message"]
    batches = {b["batch_id"]: b for b in any_client.get("/history/wf1").json["batches"]}
    assert batches[old["batch_id"]]["status"] == "abandoned"
    assert batches[newer]["status"] == "abandoned"
    assert any_client.get("/batches?status=open").json["batches"] == []
    assert any_client.post(f"/close_batch/wf1?batch_id={newer}").status_code == 409
    rerun = any_client.post("/open_batch/wf1").json["s_extract"]
    assert rerun["from_date"] == old["from_date"] and rerun["batch_id"] > newer  # the identical window again


def test_an_import_of_a_workflow_that_never_ran_has_no_batch_id(any_client):
    """Found by the model-based test: it came back with last batch id 0, so audit events said batch "0"."""
    store = services_of(any_client.application).store
    any_client.post("/load_cfg/wf1")
    backup = store.export(["wf1"])
    assert store.import_(backup, replace=True) == ["wf1"]
    assert any_client.post("/set_from_date/wf1?from_date=2024-02-01").status_code == 200
    events = {e["action"]: e for e in any_client.get("/events/wf1").json["events"]}
    assert events["import"]["batch_id"] == "" and events["set"]["batch_id"] == ""
    assert any_client.get("/get_status/wf1").json["s_extract"].get("batch_id") is None
