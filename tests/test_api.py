"""The HTTP API through Flask's test client, on fakeredis."""
import json
import os

import pytest

from batchy.rules.jobs import snapshot as snapshot_of

from .conftest import make_app


def load(client, wf="wf1", **query):
    r = client.get(f"/load_cfg/{wf}", query_string=query)
    assert r.status_code == 200, r.json
    return r.json


def test_seed_walkthrough(client, fake_redis):
    state = load(client)
    assert set(state) == {"s_extract", "s_load"} and state["s_extract"]["status"] == "new"
    assert client.get("/get_status/wf1").json == state

    opened = client.get("/open_batch/wf1/json").json
    batch_id = opened["s_extract"]["batch_id"]
    assert opened["s_extract"]["status"] == "open"
    assert opened["s_extract"]["from_date"] == "2024-01-01T00:00:00+00:00"
    assert opened["s_extract"]["to_date"] == opened["s_extract"]["batch_start"]

    # the storage contract: redis-cli hgetall wf1 / hgetall wf1-<batch_id>
    current = fake_redis.hgetall("wf1")
    assert json.loads(current["s_extract"]) == opened["s_extract"]
    snapshot = {k: json.loads(v) for k, v in fake_redis.hgetall(f"wf1-{batch_id}").items()}
    assert snapshot == {job: snapshot_of(state) for job, state in opened.items()}
    assert snapshot["s_extract"] == {"status": "open", "from_date": "2024-01-01T00:00:00+00:00",
                                     "to_date": opened["s_extract"]["to_date"],
                                     "batch_start": opened["s_extract"]["batch_start"]}

    closed = client.get("/close_batch/wf1").json
    assert {j["status"] for j in closed.values()} == {"success"}
    snapshot = {k: json.loads(v) for k, v in fake_redis.hgetall(f"wf1-{batch_id}").items()}
    assert snapshot == {job: snapshot_of(state) for job, state in closed.items()}
    assert snapshot["s_load"]["batch_end"] == closed["s_load"]["batch_end"]

    reopened = client.get("/open_batch/wf1").json
    assert reopened["s_extract"]["batch_id"] > batch_id
    # success: previous batch_start minus reprocess_hours (2)
    prev = closed["s_extract"]["batch_start"]
    from batchy.rules.times import parse_time
    from datetime import timedelta
    assert parse_time(reopened["s_extract"]["from_date"]) == parse_time(prev) - timedelta(hours=2)


def test_failed_batch_reruns_the_same_window(client):
    load(client)
    first = client.get("/open_batch/wf1").json
    assert client.get("/fail_batch/wf1?message=db%20down").json["s_extract"]["message"] == "db down"
    second = client.get("/open_batch/wf1").json
    assert second["s_extract"]["from_date"] == first["s_extract"]["from_date"]
    assert second["s_load"]["from_date"] == first["s_load"]["from_date"]


def test_two_opens_in_the_same_second_get_distinct_ids_and_the_first_is_abandoned(client, fake_redis):
    load(client)
    ids = [client.get("/open_batch/wf1").json["s_extract"]["batch_id"] for _ in range(3)]
    assert ids == sorted(set(ids)) and len(ids) == 3
    for old in ids[:-1]:
        snapshot = {k: json.loads(v) for k, v in fake_redis.hgetall(f"wf1-{old}").items()}
        assert {j["status"] for j in snapshot.values()} == {"abandoned"}
    assert fake_redis.exists(f"wf1-{ids[-1]}")


def test_close_one_job_with_records_and_message(client, fake_redis):
    load(client)
    bid = client.get("/open_batch/wf1").json["s_load"]["batch_id"]
    r = client.post("/close_batch/wf1", json={"job": "s_load", "records_processed": 503, "message": "ok",
                                              "batch_id": bid})
    assert r.status_code == 200
    assert r.json["s_load"]["status"] == "success" and r.json["s_load"]["records_processed"] == 503
    assert r.json["s_extract"]["status"] == "open"
    snap = json.loads(fake_redis.hget(f"wf1-{bid}", "s_load"))
    assert snap["status"] == "success" and snap["records_processed"] == 503
    r = client.post("/fail_batch/wf1", data={"job": "s_extract", "records_processed": "0"})
    assert r.status_code == 200 and r.json["s_extract"]["status"] == "failed"


def test_close_when_nothing_is_open_is_409_saying_the_state(client):
    load(client)
    r = client.get("/close_batch/wf1")
    assert r.status_code == 409 and r.json["error"] == "not_open"
    assert "new" in r.json["message"]
    client.get("/open_batch/wf1")
    client.get("/close_batch/wf1")
    r = client.get("/fail_batch/wf1?job=s_load")
    assert r.status_code == 409 and "success" in r.json["message"]


def test_stale_close_is_409(client):
    load(client)
    old = client.get("/open_batch/wf1").json["s_load"]["batch_id"]
    client.get("/open_batch/wf1")
    r = client.get(f"/close_batch/wf1?batch_id={old}")
    assert r.status_code == 409 and r.json["error"] == "stale_batch"


def test_reload_keeps_watermarks_and_reset_rewinds(client, write_cfg):
    load(client)
    client.get("/open_batch/wf1")
    done = client.get("/close_batch/wf1").json
    write_cfg("wf1", """
        s_extract:
          from_date: 2000-01-01
          reprocess_hours: 5
        s_new:
          k: v
    """)
    state = load(client)
    assert list(state) == ["s_extract", "s_new"]
    assert state["s_extract"]["status"] == "success"
    assert state["s_extract"]["batch_start"] == done["s_extract"]["batch_start"]
    assert state["s_extract"]["reprocess_hours"] == 5
    assert state["s_new"]["status"] == "new"
    reset = load(client, reset="true")
    assert reset["s_extract"]["status"] == "new"
    assert reset["s_extract"]["from_date"] == "2000-01-01T00:00:00+00:00"


def test_infa_format_is_a_named_attachment(client):
    load(client)
    r = client.get("/open_batch/wf1/infa")
    assert r.status_code == 200 and r.mimetype == "text/plain"
    assert r.headers["Content-Disposition"] == 'attachment; filename="wf1.param"'
    lines = r.get_data(as_text=True).splitlines()
    assert lines[0] == "[s_extract]" and "$$from_date=01/01/2024 00:00:00" in lines


def test_open_dry_run_changes_nothing(client, fake_redis):
    load(client)
    before = fake_redis.hgetall("wf1")
    r = client.get("/open_batch/wf1?dry_run=true")
    assert r.status_code == 200 and r.json["s_extract"]["status"] == "open"
    assert fake_redis.hgetall("wf1") == before


@pytest.mark.parametrize(
    "method, url, status, code",
    [
        ("GET", "/get_status/nope", 404, "workflow_not_found"),
        ("GET", "/open_batch/nope", 404, "workflow_not_found"),
        ("GET", "/close_batch/nope", 404, "workflow_not_found"),
        ("GET", "/load_cfg/nope", 404, "config_not_found"),
        ("GET", "/open_batch/wf1/xml", 400, "invalid_parameter"),
        ("GET", "/get_status/bad%20name", 400, "invalid_name"),
        ("GET", "/get_status/wf1-123", 400, "invalid_name"),
        ("GET", "/load_cfg/..%2f..%2fetc%2fpasswd", 404, "not_found"),
        ("GET", "/close_batch/wf1?job=nope", 404, "job_not_found"),
        ("GET", "/close_batch/wf1?job=a/b", 400, "invalid_name"),
        ("GET", "/close_batch/wf1?records_processed=-1", 400, "invalid_parameter"),
        ("GET", "/close_batch/wf1?records_processed=abc", 400, "invalid_parameter"),
        ("GET", "/close_batch/wf1?batch_id=1.5", 400, "invalid_parameter"),
        ("GET", "/load_cfg/wf1?reset=perhaps", 400, "invalid_parameter"),
        ("POST", "/close_batch/wf1", 400, "invalid_parameter"),  # body: JSON that is not an object
        ("DELETE", "/get_status/wf1", 405, "method_not_allowed"),
        ("GET", "/no/such/route", 404, "not_found"),
    ],
)
def test_bad_requests_get_a_clear_error_and_change_nothing(client, fake_redis, method, url, status, code):
    load(client)
    client.get("/open_batch/wf1")
    before = {k: fake_redis.hgetall(k) for k in fake_redis.keys("wf1*")}
    kwargs = {"json": [1, 2]} if method == "POST" else {}
    r = client.open(url, method=method, **kwargs)
    assert r.status_code == status, r.data
    assert r.json["error"] == code and r.json["status"] == status and r.json["message"]
    assert {k: fake_redis.hgetall(k) for k in fake_redis.keys("wf1*")} == before


def test_a_workflow_not_loaded_says_how_to_load_it_and_no_server_path(app, client, cfg_dir, caplog):
    # Issue 22, item 4: after a remove the answer said "create <path>/wf1.yaml" though the file was there.
    served = os.path.abspath(app.config["BATCHY_CFG_DIR"])  # a link to cfg_dir
    paths = [str(cfg_dir), served, str(cfg_dir.resolve())]
    load(client)
    assert client.post("/remove_workflow/wf1").status_code == 200
    with caplog.at_level("INFO", logger="batchy"):
        message = client.get("/get_status/wf1").json["message"]
    assert "not loaded" in message and "/load_cfg/wf1" in message and "wf1.yaml is in" in message
    assert "create" not in message and not any(path in message for path in paths)
    assert os.path.join(served, "wf1.yaml") in caplog.text  # the operator's log has it
    for url in ["/get_status/nope", "/load_cfg/nope"]:
        message = client.get(url).json["message"]
        assert "nope.yaml" in message and "is in" not in message and not any(path in message for path in paths)
    assert "/load_cfg/nope" in client.get("/get_status/nope").json["message"]


def test_oversized_body_is_413(fake_redis, cfg_dir):
    client = make_app(fake_redis, cfg_dir, BATCHY_MAX_BODY_BYTES=100).test_client()
    r = client.post("/close_batch/wf1", json={"message": "x" * 500})
    assert r.status_code == 413 and r.json["error"] == "request_entity_too_large"


def test_token_guards_mutations_but_not_reads(fake_redis, cfg_dir):
    client = make_app(fake_redis, cfg_dir, BATCHY_API_TOKEN="s3cret").test_client()
    for url in ["/load_cfg/wf1", "/open_batch/wf1", "/close_batch/wf1", "/fail_batch/wf1"]:
        r = client.post(url)
        assert r.status_code == 401 and r.json["error"] == "unauthorized"
        r = client.post(url, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
    ok = {"Authorization": "Bearer s3cret"}
    assert client.post("/load_cfg/wf1", headers=ok).status_code == 200
    assert client.get("/get_status/wf1").status_code == 200
    assert client.post("/open_batch/wf1", headers=ok).status_code == 200


def test_get_mutations_can_be_turned_off(fake_redis, cfg_dir):
    client = make_app(fake_redis, cfg_dir, BATCHY_ALLOW_GET_MUTATIONS=False).test_client()
    r = client.get("/load_cfg/wf1")
    assert r.status_code == 405 and r.json["error"] == "method_not_allowed" and "POST" in r.headers["Allow"]
    assert client.post("/load_cfg/wf1").status_code == 200
    assert client.get("/get_status/wf1").status_code == 200


def test_health_endpoints(client):
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").json == {"status": "ready"}


def test_a_parameter_past_64_bits_round_trips_exactly(real_client, write_cfg):
    write_cfg("big", "j:\n  from_date: 2024-01-01\n  huge: 1180591620717411303425\n")
    assert real_client.post("/load_cfg/big").status_code == 200
    opened = real_client.post("/open_batch/big")
    assert opened.status_code == 200, opened.json
    assert b'"huge":1180591620717411303425' in real_client.get("/get_status/big").data
    infa = real_client.post("/open_batch/big/infa").data.decode()
    assert "$$huge=1180591620717411303425" in infa


def test_workflows_come_a_page_at_a_time(client, write_cfg):
    for name in ("b", "c", "a"):
        write_cfg(name, "j: {}\n")
    client.post("/load_cfg")
    assert client.get("/workflows").json["next_offset"] is None
    assert [w["workflow"] for w in client.get("/workflows").json["workflows"]] == ["a", "b", "c", "wf1"]
    first = client.get("/workflows?limit=3").json
    assert [w["workflow"] for w in first["workflows"]] == ["a", "b", "c"] and first["next_offset"] == 3
    rest = client.get(f"/workflows?limit=3&offset={first['next_offset']}").json
    assert [w["workflow"] for w in rest["workflows"]] == ["wf1"] and rest["next_offset"] is None
    assert client.get("/workflows?offset=9").json == {"workflows": [], "next_offset": None}
    for query in ("limit=0", "limit=10001", "offset=-1"):
        response = client.get("/workflows?" + query)
        assert response.status_code == 400 and response.json["error"] == "invalid_parameter", query
