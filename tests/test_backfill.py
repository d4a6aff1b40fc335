"""Backfills: chunking, the chunk state machine in Lua, the endpoints, coverage, and the acceptance runs."""
from __future__ import annotations

import random
import re
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
import redis
from werkzeug.serving import WSGIRequestHandler, make_server

from batchy.rules import backfill
from batchy.web import backfill as backfill_api, openapi
from batchy.storage import backfill_lua as backfill_scripts, keys
from batchy import create_app
from batchy.errors import BackfillNotFound, NotLeased, StaleAttempt, WrongLeaseToken
from batchy.storage.backfill import Backfills
from batchy.cli import backfill_run as runner
from batchy.client import Batchy, ServiceError
from batchy.errors import InvalidParameter
from batchy.rules.times import format_time
from batchy.web.db import services_of

from .conftest import make_app


def plain(ledger: dict) -> dict:
    """Return what a job's /coverage answer says of its covered intervals and holes (no late data here)."""
    assert ledger.get("dirty", []) == [] and ledger.get("failed_quality", []) == []
    return {"covered": ledger["covered"], "holes": ledger["holes"]}

UTC = timezone.utc
PARIS = ZoneInfo("Europe/Paris")
JOBS = """
orders:
  from_date: 2024-01-01
  timezone: Europe/Paris
customers:
  from_date: 2024-01-01
"""


def with_backfills(app):
    """Return app with the backfill endpoints (until create_app registers them itself)."""
    if "backfill" not in app.blueprints:
        app.register_blueprint(backfill_api.bp)
    return app


class _Quiet(WSGIRequestHandler):
    def log_request(self, *args, **kwargs):
        pass


@contextmanager
def serving(app):
    """Serve app over HTTP on a free port in this process (threads); yield its URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_Quiet)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)


@pytest.fixture
def jobs_cfg(write_cfg):
    write_cfg("bf", JOBS)


@pytest.fixture(params=["fakeredis", "redis-server"])
def any_client(request, fake_redis, cfg_dir, jobs_cfg):
    """A test client with workflow bf loaded, on the embedded store, then on our redis-server."""
    if request.param == "fakeredis":
        app = make_app(fake_redis, cfg_dir)
    else:
        request.getfixturevalue("real_redis")
        app = create_app({"BATCHY_REDIS_URL": request.getfixturevalue("redis_server").url,
                          "BATCHY_CFG_DIR": str(cfg_dir)})
    client = with_backfills(app).test_client()
    assert client.post("/load_cfg/bf").status_code == 200
    return client


@pytest.fixture
def real_app(redis_server, real_redis, cfg_dir, jobs_cfg):
    app = with_backfills(create_app({"BATCHY_REDIS_URL": redis_server.url, "BATCHY_CFG_DIR": str(cfg_dir)}))
    assert app.test_client().post("/load_cfg/bf").status_code == 200
    return app


@pytest.fixture
def backfills(real_app):
    """Backfills on the real redis-server, called directly (threads, the model)."""
    return Backfills(services_of(real_app).store, 1000)


def create(client, query: str = "", **body):
    r = client.post(f"/backfill/bf?{query}", json=body or None)
    assert r.status_code == 201, r.json
    return r.json


def lease(client, bid, **query):
    r = client.post(f"/backfill/bf/{bid}/lease", query_string=query)
    assert r.status_code in (200, 204), r.json
    return r.json if r.status_code == 200 else None


def assert_tiles(spans, start, end):
    assert spans[0][0] == start and spans[-1][1] == end
    assert all(low < high for low, high in spans)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])), "a gap or an overlap"


# -- chunking (pure) ---------------------------------------------------------------------


def test_daily_chunks_are_whole_days_in_the_zone_with_partial_ends():
    start, end = datetime(2024, 3, 29, 15, tzinfo=UTC), datetime(2024, 4, 2, 6, tzinfo=UTC)
    spans = backfill.tile(start, end, PARIS, batch_size="day")
    assert_tiles(spans, start, end)
    inner = [(low.astimezone(PARIS), high.astimezone(PARIS)) for low, high in spans[1:-1]]
    assert all(low.hour == 0 and high.hour == 0 for low, high in inner)
    lengths = [(high - low) / timedelta(hours=1) for low, high in spans[1:-1]]
    assert lengths == [24, 23, 24]  # 31 March 2024 in Paris is a 23-hour day
    assert spans[0][1].astimezone(PARIS) == datetime(2024, 3, 30, tzinfo=PARIS)


@pytest.mark.parametrize("unit, week_start, start, end, boundaries", [
    ("week", "monday", datetime(2024, 1, 3), datetime(2024, 1, 29), [8, 15, 22]),
    ("week", "sunday", datetime(2024, 1, 3), datetime(2024, 1, 29), [7, 14, 21, 28]),
    ("month", "monday", datetime(2023, 12, 15), datetime(2024, 3, 2), None),
    ("hour", "monday", datetime(2024, 1, 1, 0, 30), datetime(2024, 1, 1, 3, 10), None),
])
def test_week_month_and_hour_chunks_start_on_boundaries(unit, week_start, start, end, boundaries):
    start, end = start.replace(tzinfo=UTC), end.replace(tzinfo=UTC)
    spans = backfill.tile(start, end, UTC, batch_size=unit, week_start=week_start)
    assert_tiles(spans, start, end)
    inner = [low for low, _ in spans[1:]]
    if boundaries:
        assert [m.day for m in inner] == boundaries
    if unit == "month":
        assert [(m.month, m.day) for m in inner] == [(1, 1), (2, 1), (3, 1)]
    if unit == "hour":
        assert [m.hour for m in inner] == [1, 2, 3] and all(m.minute == 0 for m in inner)


def test_chunk_hours_tile_from_the_start_with_a_partial_last_chunk():
    start = datetime(2024, 1, 1, 0, 10, tzinfo=UTC)
    spans = backfill.tile(start, start + timedelta(hours=10), UTC, chunk_hours=4)
    assert [(high - low) / timedelta(hours=1) for low, high in spans] == [4, 4, 2]
    with pytest.raises(ValueError):
        backfill.tile(start, start + timedelta(days=1000), UTC, chunk_hours=1)


def test_a_plan_counts_every_job_against_the_cap():
    jobs = {"a": {}, "b": {"timezone": "Europe/Paris"}}
    now = datetime(2024, 6, 1, tzinfo=UTC)
    chunks = backfill.plan("wf", jobs, {}, datetime(2024, 1, 1), datetime(2024, 1, 3), now)  # naive: each zone
    assert [(c["job"], c["from_date"]) for c in chunks] == [
        ("a", "2024-01-01T00:00:00+00:00"), ("a", "2024-01-02T00:00:00+00:00"),
        ("b", "2024-01-01T00:00:00+01:00"), ("b", "2024-01-02T00:00:00+01:00")]
    with pytest.raises(InvalidParameter, match="more than 3 chunks") as err:
        backfill.plan("wf", jobs, {}, datetime(2024, 1, 1), datetime(2024, 1, 3), now, limit=3)
    assert err.value.context["parameter"] == "batch_size"


# -- the endpoints -------------------------------------------------------------------------


def test_create_answers_every_chunk_pending(any_client):
    body = create(any_client, "from=2024-03-01&to=2024-03-04&job=orders&job=customers&batch_size=day")
    assert body["workflow"] == "bf" and isinstance(body["backfill_id"], int)
    assert body["jobs"] == ["orders", "customers"] and body["status"] == "running"
    assert [(c["chunk"], c["job"], c["from_date"], c["to_date"], c["status"], c["attempts"])
            for c in body["chunks"][:2]] == [
        (0, "orders", "2024-03-01T00:00:00+01:00", "2024-03-02T00:00:00+01:00", "pending", 0),
        (1, "orders", "2024-03-02T00:00:00+01:00", "2024-03-03T00:00:00+01:00", "pending", 0)]
    assert len(body["chunks"]) == 6 and body["progress"]["pending"] == 6 and body["progress"]["done"] == 0
    as_list = create(any_client, **{"from": "2024-03-01T00:00:00Z", "to": "2024-03-02T00:00:00Z",
                                    "job": ["customers"], "chunk_hours": 6})
    assert [c["from_date"][11:16] for c in as_list["chunks"]] == ["00:00", "06:00", "12:00", "18:00"]
    assert as_list["backfill_id"] > body["backfill_id"]  # created in the same second: the next id


@pytest.mark.parametrize("query, parameter", [
    ("to=2024-03-02", "from"),
    ("from=2024-03-02&to=2024-03-01", "to"),
    ("from=2024-03-01&to=2099-01-01", "to"),
    ("from=2024-03-01&to=2024-03-02&batch_size=year", "batch_size"),
    ("from=2024-03-01&to=2024-03-02&chunk_hours=-2", "chunk_hours"),
    ("from=2024-03-01&to=2024-03-02&chunk_hours=nan", "chunk_hours"),
    ("from=2024-03-01&to=2024-03-02&chunk_hours=2&batch_size=day", "chunk_hours"),
    ("from=2020-01-01&to=2024-03-02&batch_size=hour", "batch_size"),
    ("from=2024-03-01&to=2024-03-02&max_attempts=0", "max_attempts"),
    ("from=2024-03-01&to=2024-03-02&chunkhours=2", "chunkhours"),
])
def test_bad_input_is_a_400_naming_the_parameter(any_client, query, parameter):
    r = any_client.post(f"/backfill/bf?{query}")
    assert r.status_code == 400 and r.json["parameter"] == parameter, r.json
    if parameter == "batch_size" and "hour" in query:
        assert "more than 10,000 chunks" in r.json["message"]
    assert any_client.get("/backfills/bf").json["backfills"] == []


def test_unknown_workflow_job_or_backfill_is_a_404(any_client):
    assert any_client.post("/backfill/nope?from=2024-03-01&to=2024-03-02").json["error"] == "workflow_not_found"
    assert any_client.post("/backfill/bf?from=2024-03-01&to=2024-03-02&job=nope").json["error"] == "job_not_found"
    bid = create(any_client, "from=2024-03-01&to=2024-03-02&job=customers")["backfill_id"]
    for path in ("", "/lease", "/close?chunk=0&attempt=1", "/fail?chunk=0&attempt=1", "/cancel"):
        method = any_client.get if not path else any_client.post
        r = method(f"/backfill/bf/{bid + 1000}{path}")
        assert r.status_code == 404 and r.json["error"] == "backfill_not_found", (path, r.json)
        assert method(f"/backfill/nope/{bid}{path}").json["error"] == "workflow_not_found"
    assert any_client.get("/backfills/nope").json["error"] == "workflow_not_found"
    r = any_client.post(f"/backfill/bf/{bid}/close?chunk=7&attempt=1")
    assert r.status_code == 400 and r.json["parameter"] == "chunk"


def test_a_failed_chunk_is_leased_again_with_its_window_until_max_attempts(any_client):
    bid = create(any_client, "from=2024-03-01&to=2024-03-03&job=customers&max_attempts=2")["backfill_id"]
    first = lease(any_client, bid)
    assert (first["chunk"], first["attempt"], first["max_attempts"]) == (0, 1, 2)
    r = any_client.post(f"/backfill/bf/{bid}/fail", json={"chunk": 0, "attempt": 1, "message": "source down",
                                                          "lease_token": first["lease_token"]})
    assert r.status_code == 200 and r.json["status"] == "pending" and r.json["message"] == "source down"
    again = lease(any_client, bid)
    assert (again["chunk"], again["attempt"]) == (0, 2)
    assert (again["from_date"], again["to_date"]) == (first["from_date"], first["to_date"])
    r = any_client.post(f"/backfill/bf/{bid}/fail?chunk=0&attempt=2&message=still%20down&lease_token={again['lease_token']}")
    assert r.json["status"] == "failed" and r.json["attempts"] == 2  # for good: max_attempts used
    other = lease(any_client, bid)
    assert other["chunk"] == 1
    r = any_client.post(f"/backfill/bf/{bid}/close?chunk=1&attempt=1&records_processed=12&lease_token={other['lease_token']}")
    assert r.json["status"] == "success" and r.json["records_processed"] == 12
    assert r.json["backfill_status"] == "failed" and r.json["progress"]["done"] == 1.0
    assert lease(any_client, bid) is None  # 204: nothing pending
    shown = any_client.get(f"/backfill/bf/{bid}").json
    assert [(c["status"], c["attempts"]) for c in shown["chunks"]] == [("failed", 2), ("success", 1)]


def test_close_names_the_attempt_retries_are_safe_and_a_stale_attempt_is_a_409(any_client):
    bid = create(any_client, "from=2024-03-01&to=2024-03-02&job=customers")["backfill_id"]
    assert (held := lease(any_client, bid))["attempt"] == 1
    r = any_client.post(f"/backfill/bf/{bid}/close?chunk=0")
    assert r.status_code == 400 and r.json["parameter"] == "attempt"
    any_client.post(f"/backfill/bf/{bid}/fail?chunk=0&attempt=1&lease_token={held['lease_token']}")
    assert any_client.post(f"/backfill/bf/{bid}/fail?chunk=0&attempt=1&lease_token={held['lease_token']}"
                           ).status_code == 200  # a retry
    assert (held := lease(any_client, bid))["attempt"] == 2
    r = any_client.post(f"/backfill/bf/{bid}/close?chunk=0&attempt=1")
    assert r.status_code == 409 and r.json["error"] == "stale_attempt" and "attempt 2" in r.json["message"]
    for _ in range(2):  # the second close is a retry after a lost answer: the same 200
        r = any_client.post(f"/backfill/bf/{bid}/close?chunk=0&attempt=2&records_processed=5"
                            f"&lease_token={held['lease_token']}")
        assert r.status_code == 200 and r.json["status"] == "success"
    r = any_client.post(f"/backfill/bf/{bid}/fail?chunk=0&attempt=2&lease_token={held['lease_token']}")
    assert r.status_code == 409 and r.json["error"] == "not_leased"
    ledger = any_client.get("/coverage/bf?job=customers").json["customers"]
    assert plain(ledger) == {"covered": [["2024-03-01T00:00:00+00:00", "2024-03-02T00:00:00+00:00"]], "holes": []}
    merges = [e for e in any_client.get("/events/bf").json["events"] if e["action"] == "backfill_coverage"]
    assert len(merges) == 1  # the retried close found the window covered already


def test_cancel_stops_pending_chunks_and_a_leased_one_may_still_close(any_client):
    bid = create(any_client, "from=2024-03-01&to=2024-03-04&job=customers")["backfill_id"]
    held = lease(any_client, bid)
    r = any_client.post(f"/backfill/bf/{bid}/cancel")
    assert r.status_code == 200 and r.json["status"] == "cancelled" and r.json["cancelled_chunks"] == 2
    assert lease(any_client, bid) is None
    closed = any_client.post(f"/backfill/bf/{bid}/close?chunk={held['chunk']}&attempt=1"
                             f"&lease_token={held['lease_token']}").json
    assert closed["status"] == "success" and closed["backfill_status"] == "cancelled"
    assert any_client.post(f"/backfill/bf/{bid}/cancel").json["cancelled_chunks"] == 0  # again: nothing new
    shown = any_client.get(f"/backfill/bf/{bid}").json
    assert [c["status"] for c in shown["chunks"]] == ["success", "cancelled", "cancelled"]
    assert shown["progress"] == {"chunks": 3, "pending": 0, "leased": 0, "success": 1, "failed": 0,
                                 "cancelled": 2, "done": 1.0}


def test_every_chunk_change_is_audited_and_the_watermark_never_moves(any_client):
    before = any_client.get("/get_status/bf").json
    bid = create(any_client, "from=2024-03-01&to=2024-03-03&job=orders")["backfill_id"]
    token = lease(any_client, bid)["lease_token"]
    any_client.post(f"/backfill/bf/{bid}/fail?chunk=0&attempt=1&message=boom&lease_token={token}")
    token = lease(any_client, bid)["lease_token"]
    any_client.post(f"/backfill/bf/{bid}/close?chunk=0&attempt=2&lease_token={token}")
    any_client.post(f"/backfill/bf/{bid}/cancel")
    assert any_client.get("/get_status/bf").json == before
    events = any_client.get("/events/bf?limit=20").json["events"]
    assert [e["action"] for e in events][:7] == [
        "backfill_cancel", "backfill_coverage", "backfill_close", "backfill_lease", "backfill_fail",
        "backfill_lease", "backfill_create"]
    fail = events[4]
    assert fail["jobs"] == ["orders"] and fail["from_before"] == {} and fail["from_after"] == {}
    assert fail["batch_id"] == "" and fail["backfill_id"] == str(bid)
    assert (fail["chunk"], fail["attempt"]) == ("0", "1") and fail["message"].endswith("now pending: boom")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", fail["time"]) and fail["actor"]


def test_the_list_is_newest_first_with_progress(any_client):
    first = create(any_client, "from=2024-03-01&to=2024-03-02")["backfill_id"]
    second = create(any_client, "from=2024-03-01&to=2024-03-03&job=orders")["backfill_id"]
    listed = any_client.get("/backfills/bf").json["backfills"]
    assert [b["backfill_id"] for b in listed] == [second, first]
    assert listed[0]["progress"]["chunks"] == 2 and "chunks" not in listed[0]
    assert [b["backfill_id"] for b in any_client.get("/backfills/bf?limit=1").json["backfills"]] == [second]


def test_a_removed_workflow_keeps_its_backfills_unless_purged(any_client):
    redis = services_of(any_client.application).store.redis
    backfill_id = create(any_client, "from=2024-03-01&to=2024-03-03")["backfill_id"]
    assert any_client.post("/remove_workflow/bf").status_code == 200
    assert redis.keys("batchy:backfill*:bf*")  # kept, as the history is
    any_client.post("/load_cfg/bf")
    assert any_client.get(f"/backfill/bf/{backfill_id}").status_code == 200
    assert any_client.post("/remove_workflow/bf?purge_history=true").status_code == 200
    assert redis.keys("batchy:backfill*:bf*") == []
    any_client.post("/load_cfg/bf")
    assert any_client.get(f"/backfill/bf/{backfill_id}").json["error"] == "backfill_not_found"
    assert any_client.get("/backfills/bf").json["backfills"] == []


def test_a_removal_whose_purge_failed_is_finished_by_its_retry(any_client, monkeypatch):
    store = services_of(any_client.application).store
    create(any_client, "from=2024-03-01&to=2024-03-03")
    real = store.redis.pipeline
    failing = [True]

    def pipeline(*args, **kwargs):  # the purge's one transaction, lost once (Redis went away)
        if failing.pop() if failing else False:
            raise redis.ConnectionError("gone")
        return real(*args, **kwargs)

    monkeypatch.setattr(store.redis, "pipeline", pipeline)
    assert any_client.post("/remove_workflow/bf?purge_history=true").status_code == 503
    again = any_client.post("/remove_workflow/bf?purge_history=true")
    assert again.status_code == 404  # removed by the first call
    assert store.redis.keys("batchy:backfill*:bf*") == []  # and the purge finished by the retry


def test_a_paused_workflow_leases_nothing(any_client):
    bid = create(any_client, "from=2024-03-01&to=2024-03-02")["backfill_id"]
    any_client.post("/pause/bf?message=bad%20source")
    r = any_client.post(f"/backfill/bf/{bid}/lease")
    assert r.status_code == 423 and "bad source" in r.json["message"]
    any_client.post("/resume/bf")
    assert lease(any_client, bid)["chunk"] == 0


def test_an_operators_skip_makes_a_hole_and_a_backfill_of_it_closes_the_hole(any_client, write_cfg):
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=10)
    write_cfg("daily", f"""
        sales:
          from_date: {start.isoformat()}
          batch_size: day
          max_window_hours: 25
    """)
    assert any_client.post("/load_cfg/daily").status_code == 200
    any_client.post("/open_batch/daily")
    any_client.post("/close_batch/daily")  # day 1
    skip_to = start + timedelta(days=3)
    any_client.post(f"/set_from_date/daily?from_date={skip_to.isoformat().replace('+', '%2B')}")
    any_client.post("/open_batch/daily")
    any_client.post("/close_batch/daily")  # day 4: days 2 and 3 were skipped
    holes = any_client.get("/coverage/daily").json["sales"]["holes"]
    assert holes == [[format_time(start + timedelta(days=1)), format_time(skip_to)]]
    made = any_client.post("/backfill/daily", json={"from": holes[0][0], "to": holes[0][1]})
    bid = made.json["backfill_id"]
    assert [c["from_date"] for c in made.json["chunks"]] == holes[0][:1] + [format_time(start + timedelta(days=2))]
    while (chunk := lease_of(any_client, "daily", bid)) is not None:
        any_client.post(f"/backfill/daily/{bid}/close?chunk={chunk['chunk']}&attempt={chunk['attempt']}"
                        f"&lease_token={chunk['lease_token']}")
    after = any_client.get("/coverage/daily").json["sales"]
    assert plain(after) == {"covered": [[format_time(start), format_time(start + timedelta(days=4))]], "holes": []}


def lease_of(client, wf, bid):
    r = client.post(f"/backfill/{wf}/{bid}/lease")
    return r.json if r.status_code == 200 else None


def test_openapi_paths_are_exactly_the_blueprint_routes(real_app):
    documented = {path: set(ops) for path, ops in openapi.paths().items() if path.startswith("/backfill")}
    routes = {}
    for rule in real_app.url_map.iter_rules():
        if rule.endpoint.startswith("backfill."):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            routes.setdefault(path, set()).update(m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})
    assert documented == routes


def test_every_backfill_endpoint_and_command_is_documented_with_an_example(real_app):
    from .test_docs import DOCS, PAGES, documented_form, sh_blocks

    docs = "\n".join(page.read_text() for page in DOCS.glob("*.md"))
    examples = "\n".join(block for page in PAGES for block in sh_blocks(page.read_text()))
    for rule in real_app.url_map.iter_rules():
        if rule.endpoint.startswith("backfill."):
            route = re.sub(r"<(?:\w+:)?(\w+)>", r"<\1>", rule.rule)
            assert re.search(documented_form(route), docs), route
            base = route.split("/<")[0]
            assert re.search(r"curl [^\n]*\$BATCHY_URL" + re.escape(base) + r"(?![\w.])", examples), route
    for command in ("batchy run", "batchy backfill create", "batchy backfill status", "batchy backfill list",
                    "batchy backfill cancel", "batchy backfill run"):
        assert command in docs, command


# -- the Lua scripts on a real Redis -----------------------------------------------------------


def test_the_scripts_write_times_as_format_time_does(redis_server, real_redis):
    iso = real_redis.register_script(backfill_scripts.BACKFILL_LIB + "return iso(ARGV[1])")
    for moment in [datetime(1970, 1, 1, tzinfo=UTC), datetime(2000, 2, 29, 23, 59, 59, tzinfo=UTC),
                   datetime(2024, 12, 31, 12, 0, 1, tzinfo=UTC), datetime(2100, 3, 1, tzinfo=UTC),
                   datetime(1999, 12, 31, 23, 0, tzinfo=UTC)]:
        assert iso(args=[int(moment.timestamp())]) == format_time(moment)


def test_parallel_leases_never_hand_a_chunk_to_two_live_leases(backfills):
    made = backfills.create("bf", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 13, 12, tzinfo=UTC),
                            jobs=["customers"], chunk_hours=1)
    total = len(made["chunks"])
    taken: list[tuple[int, int]] = []
    lock = threading.Lock()
    go = threading.Barrier(8)

    def worker():
        go.wait()
        while (got := backfills.lease("bf", made["backfill_id"], 600)) is not None:
            with lock:
                taken.append((got["chunk"], got["attempt"]))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(taken) == [(n, 1) for n in range(total)] and total == 300
    assert backfills.get("bf", made["backfill_id"])["progress"]["leased"] == total


def test_an_expired_lease_is_leased_again_and_ends_failed_on_the_last_attempt(backfills):
    bid = backfills.create("bf", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC),
                           jobs=["customers"], max_attempts=2)["backfill_id"]
    assert (first := backfills.lease("bf", bid, 0.05))["attempt"] == 1
    assert backfills.lease("bf", bid, 0.05) is None  # a live lease: not handed out again
    time.sleep(0.1)
    assert backfills.lease("bf", bid, 0.05)["attempt"] == 2  # the first lease ran out
    with pytest.raises(StaleAttempt):
        backfills.finish("bf", bid, 0, 1, "success", lease_token=first["lease_token"])
    time.sleep(0.1)
    assert backfills.lease("bf", bid, 60) is None  # the last attempt's lease ran out: failed for good
    chunk = backfills.get("bf", bid)["chunks"][0]
    assert (chunk["status"], chunk["attempts"]) == ("failed", 2) and "ran out" in chunk["message"]


@pytest.mark.slow  # real processes or waits: the CI run, not the everyday loop
def test_a_renewed_lease_keeps_the_chunk_from_other_workers(backfills):
    bid = backfills.create("bf", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC),
                           jobs=["customers"])["backfill_id"]
    first = backfills.lease("bf", bid, 0.2)
    token = first["lease_token"]
    for _ in range(3):  # 0.45 s in all, past the first lease's 0.2 s: renewed, never due
        time.sleep(0.15)
        renewed = backfills.renew("bf", bid, 0, 1, 0.2, lease_token=token)
        assert renewed["lease_until"] >= first["lease_until"] and renewed["attempt"] == 1
        assert backfills.lease("bf", bid, 60) is None
    backfills.finish("bf", bid, 0, 1, "success", lease_token=token)
    with pytest.raises(NotLeased):
        backfills.renew("bf", bid, 0, 1, 60, lease_token=token)  # it ended
    with pytest.raises(StaleAttempt):
        backfills.renew("bf", bid, 0, 2, 60)


def test_a_lease_that_ran_out_may_be_renewed_until_another_worker_takes_the_chunk(backfills):
    bid = backfills.create("bf", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC),
                           jobs=["customers"])["backfill_id"]
    token = backfills.lease("bf", bid, 0.05)["lease_token"]
    time.sleep(0.1)
    backfills.renew("bf", bid, 0, 1, 60, lease_token=token)  # ran out, nobody took it: renewed
    assert backfills.lease("bf", bid, 60) is None
    backfills.renew("bf", bid, 0, 1, 0.05, lease_token=token)
    time.sleep(0.1)
    assert backfills.lease("bf", bid, 60)["attempt"] == 2  # ran out again, and taken over
    with pytest.raises(StaleAttempt):
        backfills.renew("bf", bid, 0, 1, 60)


def test_renew_over_http_names_chunk_and_attempt(any_client):
    bid = create(any_client, "from=2024-03-01&to=2024-03-02&job=orders")["backfill_id"]
    got = lease(any_client, bid, lease_seconds=60)
    r = any_client.post(f"/backfill/bf/{bid}/renew?chunk={got['chunk']}&attempt={got['attempt']}&lease_seconds=600"
                        f"&lease_token={got['lease_token']}")
    assert r.status_code == 200 and r.json["lease_until"] > got["lease_until"], r.json
    assert any_client.post(f"/backfill/bf/{bid}/renew?chunk=0").json["parameter"] == "attempt"
    assert any_client.post(f"/backfill/bf/{bid}/renew?chunk=0&attempt=2").json["error"] == "stale_attempt"
    assert any_client.post(f"/backfill/bf/{bid}/renew?chunk=0&attempt=1&lease=5&lease_token={got['lease_token']}"
                           ).json["error"] == \
        "invalid_parameter"  # a typo: lease_seconds


@pytest.mark.slow  # real processes or waits: the CI run, not the everyday loop
def test_backfill_run_renews_the_lease_of_a_chunk_that_runs_long(real_app):
    """A command running three times its lease keeps its chunk: no second worker is handed it."""
    with serving(real_app) as url:
        api = runner.BackfillClient(Batchy(url))
        made = api.create("bf", "2024-02-01T00:00:00Z", "2024-02-02T00:00:00Z", jobs=["customers"])
        code = runner.run_backfill(api, "bf", made["backfill_id"], ["sh", "-c", "sleep 1.2"], parallel=2,
                                   lease_seconds=0.4, poll=0.05, progress=runner.Progress(Lines()))
        shown = api.status("bf", made["backfill_id"])
    assert code == 0
    assert [(c["status"], c["attempts"]) for c in shown["chunks"]] == [("success", 1)]


@pytest.mark.slow  # real processes or waits: the CI run, not the everyday loop
def test_chunk_timeout_stops_a_command_that_hangs_and_fails_its_attempt(real_app):
    with serving(real_app) as url:
        api = runner.BackfillClient(Batchy(url))
        made = api.create("bf", "2024-02-01T00:00:00Z", "2024-02-02T00:00:00Z", jobs=["customers"], max_attempts=1)
        started = time.monotonic()
        # A shell that waits for its child: stopped with it, or the child holds stderr open.
        code = runner.run_backfill(api, "bf", made["backfill_id"], ["sh", "-c", "sleep 30; echo done"],
                                   chunk_timeout=0.3, poll=0.05, progress=runner.Progress(Lines()))
        took = time.monotonic() - started
        chunk = api.status("bf", made["backfill_id"])["chunks"][0]
    assert code == 1 and took < 10
    assert chunk["status"] == "failed" and chunk["message"].startswith("stopped after --chunk-timeout 0.3 s")


@pytest.mark.slow  # real processes or waits: the CI run, not the everyday loop
def test_a_heartbeat_refused_stops_the_command_whose_chunk_another_worker_took(real_app):
    class TakenOver(runner.BackfillClient):
        def renew(self, *args, **kwargs):
            raise ServiceError(409, "stale_attempt", "chunk 0 is on attempt 2")

    with serving(real_app) as url:
        api = TakenOver(Batchy(url))
        made = api.create("bf", "2024-02-01T00:00:00Z", "2024-02-02T00:00:00Z", jobs=["customers"])
        lines = Lines()
        started = time.monotonic()
        runner.run_backfill(api, "bf", made["backfill_id"], ["sh", "-c", "sleep 30; echo done"], lease_seconds=0.3,
                            poll=0.05, progress=runner.Progress(lines))
        took = time.monotonic() - started
    assert took < 10, "the command ran on although its chunk was another worker's"
    assert any("stopping its command" in line for line in lines.lines)


def test_ctrl_c_stops_backfill_run_and_its_commands(real_app, tmp_path):
    """The commands run in sessions of their own (so a timeout can stop a shell's children):
    the terminal's Ctrl-C reaches batchy only, and batchy stops them."""
    import os
    import signal
    import subprocess
    import sys

    marker = tmp_path / "started"
    with serving(real_app) as url:
        made = runner.BackfillClient(Batchy(url)).create("bf", "2024-02-01T00:00:00Z", "2024-02-02T00:00:00Z",
                                                         jobs=["customers"])
        env = {**os.environ, "BATCHY_URL": url}
        # Ctrl-C does what it does by default, whatever this suite inherited (started with `&`
        # from a non-interactive shell, SIGINT is ignored, and so it would be in batchy).
        proc = subprocess.Popen([sys.executable, "-m", "batchy.cli", "backfill", "run", "bf", str(made["backfill_id"]),
                                 "--", "sh", "-c", f"touch {marker}; sleep 30; echo done"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 20
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), proc.stderr.read1(4000) if proc.poll() is not None else "the command never started"
        proc.send_signal(signal.SIGINT)
        proc.wait(15)
        chunk = runner.BackfillClient(Batchy(url)).status("bf", made["backfill_id"])["chunks"][0]
    err = proc.stderr.read().decode()
    assert proc.returncode != 0
    assert (chunk["status"], chunk["attempts"]) == ("pending", 1), err  # failed once, due again: nothing lost
    assert subprocess.run(["pgrep", "-f", f"touch {marker}"], capture_output=True).returncode == 1  # all stopped


def test_the_scripts_follow_the_rules_of_backfill_py(backfills):
    """Random leases, closes, fails and a cancel, on Redis and on the pure rules side by side."""
    rng = random.Random(14)
    for _ in range(6):
        made = backfills.create("bf", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 6, tzinfo=UTC),
                                jobs=["customers"], max_attempts=rng.choice([1, 2, 3]))
        bid, max_attempts = made["backfill_id"], made["max_attempts"]
        model = {c["chunk"]: {"status": "pending", "attempts": 0} for c in made["chunks"]}
        cancelled = False
        tokens: dict[int, str] = {}  # the lease_token of each chunk's latest lease

        def token_for(n: int) -> str | None:  # mostly the right one; now and then none, or a guess
            return rng.choice([tokens.get(n)] * 4 + [None, "f" * 32])
        for _ in range(60):
            op = rng.choice(["lease", "lease", "close", "fail", "close", "cancel"] if rng.random() < 0.1
                            else ["lease", "lease", "close", "fail", "close", "renew"])
            if op == "lease":
                got = backfills.lease("bf", bid, 600)
                due = [n for n, c in sorted(model.items()) if c["status"] == "pending" and not cancelled]
                if not due:
                    assert got is None
                    continue
                model[due[0]], what = backfill.lease(model[due[0]], 0, 600_000, max_attempts, cancelled,
                                                     token=got["lease_token"])
                tokens[due[0]] = got["lease_token"]
                assert what == "leased" and (got["chunk"], got["attempt"]) == (due[0], model[due[0]]["attempts"])
            elif op == "renew":
                n = rng.choice(list(model))
                attempt = max(1, model[n]["attempts"] + rng.choice([0, 0, -1, 1]))
                token = token_for(n)
                new, what = backfill.renew(model[n], attempt, 0, 600_000, token=token)
                expected = {"stale": StaleAttempt, "not_leased": NotLeased, "wrong_token": WrongLeaseToken}.get(what)
                if expected:
                    with pytest.raises(expected):
                        backfills.renew("bf", bid, n, attempt, 600, lease_token=token)
                else:
                    assert backfills.renew("bf", bid, n, attempt, 600, lease_token=token)["attempt"] == attempt
                model[n] = new
            elif op == "cancel":
                backfills.cancel("bf", bid)
                model = {n: backfill.cancel(c) for n, c in model.items()}
                cancelled = True
            else:
                n = rng.choice(list(model))
                attempt = max(1, model[n]["attempts"] + rng.choice([0, 0, 0, -1, 1]))
                outcome = "success" if op == "close" else "failed"
                token = token_for(n)
                new, what = backfill.finish(model[n], attempt, outcome, max_attempts, cancelled, token=token)
                expected = {"stale": StaleAttempt, "not_leased": NotLeased, "wrong_token": WrongLeaseToken}.get(what)
                if expected:
                    with pytest.raises(expected):
                        backfills.finish("bf", bid, n, attempt, outcome, lease_token=token)
                else:
                    backfills.finish("bf", bid, n, attempt, outcome, lease_token=token)
                model[n] = new
            shown = backfills.get("bf", bid)
            assert {c["chunk"]: (c["status"], c["attempts"]) for c in shown["chunks"]} == {
                n: (c["status"], c["attempts"]) for n, c in model.items()}
            counts = {s: sum(c["status"] == s for c in model.values()) for s in map(str, backfill.CHUNK_STATUSES)}
            assert {s: shown["progress"][s] for s in counts} == counts


def test_an_unknown_backfill_raises_its_named_error(backfills):
    with pytest.raises(BackfillNotFound):
        backfills.get("bf", 1)
    assert keys.backfill("bf", 1) == "batchy:backfill:bf:1"


# -- acceptance: a month in daily chunks, two workers, injected failures ------------------------------

class Lines:
    """A progress stream that is no terminal, keeping what is written."""

    def __init__(self):
        self.lines: list[str] = []

    def isatty(self):
        return False

    def write(self, text):
        self.lines.append(text)

    def flush(self):
        pass


FAIL_FIRST_ATTEMPT_OF_EVERY_THIRD = (
    'if [ "$BATCHY_ATTEMPT" = 1 ] && [ $((BATCHY_CHUNK % 3)) = 0 ]; then echo "source timeout" >&2; exit 2; fi; '
    'echo 100 > "$BATCHY_RECORDS_FILE"')


def test_a_month_in_daily_chunks_with_two_workers_and_failures_leaves_no_hole(real_app):
    with serving(real_app) as url:
        api = runner.BackfillClient(Batchy(url))
        made = api.create("bf", "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z", jobs=["customers"],
                          batch_size="day")
        assert len(made["chunks"]) == 29
        lines = Lines()
        code = runner.run_backfill(api, "bf", made["backfill_id"], ["sh", "-c", FAIL_FIRST_ATTEMPT_OF_EVERY_THIRD],
                                   parallel=2, poll=0.05, progress=runner.Progress(lines))
        shown = api.status("bf", made["backfill_id"])
        coverage = Batchy(url).coverage("bf", job="customers", start="2024-02-01T00:00:00Z",
                                        end="2024-03-01T00:00:00Z")["customers"]
    assert code == 0 and shown["status"] == "success"
    attempts = {c["chunk"]: c["attempts"] for c in shown["chunks"]}
    assert all(c["status"] == "success" and c["records_processed"] == 100 for c in shown["chunks"])
    assert attempts == {n: 2 if n % 3 == 0 else 1 for n in range(29)}  # each failed one retried once
    assert max(attempts.values()) <= shown["max_attempts"]
    assert plain(coverage) == {"covered": [["2024-02-01T00:00:00+00:00", "2024-03-01T00:00:00+00:00"]], "holes": []}
    assert sum("failed (exit code 2), now pending" in line for line in lines.lines) == 10


def test_backfill_run_exits_1_when_a_chunk_fails_for_good(real_app):
    with serving(real_app) as url:
        api = runner.BackfillClient(Batchy(url))
        made = api.create("bf", "2024-02-01T00:00:00Z", "2024-02-03T00:00:00Z", jobs=["customers"], max_attempts=2)
        command = ["sh", "-c", 'test "$BATCHY_CHUNK" != 1 || { echo "bad row 7" >&2; exit 5; }']
        code = runner.run_backfill(api, "bf", made["backfill_id"], command, parallel=2, poll=0.05,
                                   progress=runner.Progress(Lines()))
        shown = api.status("bf", made["backfill_id"])
    assert code == 1 and shown["status"] == "failed"
    assert [(c["status"], c["attempts"]) for c in shown["chunks"]] == [("success", 1), ("failed", 2)]
    assert shown["chunks"][1]["message"] == "bad row 7"
