"""What watches and reports under bad input and failures (issue 24): cron expressions that
never fire, webhook delivery at least once, secrets and markup in alerts, chunk events
that leave the audit trail alone. Real redis-server, a local webhook receiver."""
from __future__ import annotations

import http.server
import json
import threading
import time
from datetime import datetime, timezone

import pytest

from batchy import create_app
from batchy.storage import keys
from batchy.errors import InvalidConfig
from batchy.web.db import services_of

from .conftest import make_app
from .reliability_helpers import VirtualClock

UTC = timezone.utc
NEVER = ["0 0 30 2 *", "0 0 31 4 *", "0 0 31 2 *"]


class Receiver:
    """A local webhook receiver: records what it takes; can answer 503 or hang."""

    def __init__(self):
        self.received: list[dict] = []
        self.down = False
        self.hang = threading.Event()  # set: every POST hangs until back is set (or 30 s)
        self.back = threading.Event()
        self.hung = threading.Event()  # set once a POST has started to hang
        self.attempts: list[dict] = []  # every body posted, taken or not
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.attempts.append(json.loads(body))
                if outer.hang.is_set():
                    outer.hung.set()
                    outer.back.wait(30)
                    return  # the sender is gone by now: drop the connection unanswered
                if outer.down:
                    self.send_response(503)
                else:
                    outer.received.append(json.loads(body))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/T000/B000/s3cr3tT0ken?x=1"

    def come_back(self):
        """Stop hanging: posts from now on are taken."""
        self.hang.clear()
        self.back.set()

    def close(self):
        self.come_back()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def webhook_app(redis_server, cfg_dir, receiver, clock, **config):
    return create_app({"BATCHY_REDIS_URL": redis_server.url, "BATCHY_CFG_DIR": str(cfg_dir), "CLOCK": clock,
                       "BATCHY_WEBHOOK_URL": receiver.url, "BATCHY_WEBHOOK_INTERVAL": 3600, "BATCHY_FLEET_INTERVAL": 0,
                       **config})


# -- 1. a cron expression that never fires --------------------------------------------------------


@pytest.mark.parametrize("expression", NEVER)
def test_a_job_cron_that_never_fires_is_refused_at_load_with_its_line(client, write_cfg, expression):
    write_cfg("cronbad", f"j1:\n  from_date: 2024-01-01\n  expected_by: \"{expression}\"\n")
    r = client.post("/load_cfg/cronbad")
    assert r.status_code == 400 and r.json["error"] == "invalid_config", r.json
    assert r.json["field"] == "expected_by" and r.json["job"] == "j1" and r.json["line"] == 3, r.json
    assert "never fires" in r.json["message"] and "line 3" in r.json["message"]
    assert client.get("/get_status/cronbad").status_code == 404  # nothing stored


@pytest.mark.parametrize("expression", NEVER)
def test_a_workflow_cron_that_never_fires_is_refused_at_load_with_its_line(client, write_cfg, expression):
    write_cfg("cronbad", f".batchy:\n  expected_by: \"{expression}\"\nj1:\n  from_date: 2024-01-01\n")
    r = client.post("/load_cfg/cronbad")
    assert r.status_code == 400 and r.json["field"] == "expected_by" and r.json["line"] == 2, r.json
    assert "never fires" in r.json["message"] and "line 2" in r.json["message"]


@pytest.mark.parametrize("expression", ["0 0 29 2 *", "0 0 31 * *", "30 * * * *", "0 6 * * 1-5"])
def test_a_cron_that_fires_rarely_is_still_accepted(client, write_cfg, expression):
    write_cfg("rare", f".batchy:\n  expected_by: \"{expression}\"\nj1:\n  expected_by: \"{expression}\"\n")
    assert client.post("/load_cfg/rare").status_code == 200


@pytest.mark.parametrize("where", ["settings", "job"])
def test_import_refuses_a_cron_that_never_fires(app, client, where):
    client.post("/load_cfg/wf1")
    store = services_of(app).store
    doc = store.export(["wf1"])
    entry = doc["workflows"]["wf1"]
    if where == "settings":
        entry["meta"][keys.SETTINGS] = json.dumps({"expected_by": "0 0 31 2 *"})
    else:
        entry["jobs"]["s_extract"]["expected_by"] = "0 0 31 2 *"
    with pytest.raises(InvalidConfig) as err:
        store.import_(doc, replace=True)
    assert err.value.status == 400 and err.value.context["field"] == "expected_by"
    assert "never fires" in err.value.message and "in the export" in err.value.message


def plant_bad_crons(redis, wf: str) -> None:
    """Write never-firing expressions into a loaded workflow, as a hand edit or an older version would."""
    meta = keys.meta(wf)
    redis.hset(meta, keys.SETTINGS, json.dumps({"expected_by": "0 0 30 2 *"}))
    job = json.loads(redis.hget(wf, "j1"))
    redis.hset(wf, "j1", json.dumps({**job, "expected_by": "0 0 31 4 *"}))
    redis.hdel(meta, keys.VERSION)


def test_a_stored_cron_that_never_fires_is_reported_for_its_workflow_only(redis_server, real_redis, cfg_dir,
                                                                          write_cfg, receiver):
    clock = VirtualClock(datetime(2024, 3, 5, 8, 0, tzinfo=UTC))
    write_cfg("cronbad", ".batchy:\n  expected_by: '05:00'\nj1:\n  from_date: 2024-01-01\n")
    write_cfg("nightly", "load:\n  expected_by: '06:00'\n")
    app = webhook_app(redis_server, cfg_dir, receiver, clock)
    client = app.test_client()
    for wf in ("cronbad", "nightly", "wf1"):
        assert client.post(f"/load_cfg/{wf}").status_code == 200
    plant_bad_crons(real_redis, "cronbad")
    client.post("/open_batch/wf1")
    assert client.post("/fail_batch/wf1?message=source%20down").status_code == 200

    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    text = metrics.data.decode()
    assert 'batchy_workflow_corrupt{workflow="cronbad"} 1.0' in text
    assert 'batchy_workflow_corrupt{workflow="nightly"} 0.0' in text
    assert 'batchy_job_late{job="load",workflow="nightly"} 1.0' in text
    assert 'batchy_job_status{job="s_extract",status="failed",workflow="wf1"} 1.0' in text

    page = client.get("/")
    assert page.status_code == 200
    assert b'data-corrupt="cronbad"' in page.data and b"never fires" in page.data
    assert b'data-workflow="nightly"' in page.data and b'data-workflow="wf1"' in page.data

    late = client.get("/late")
    assert late.status_code == 200
    found = {(f["workflow"], f["job"], f["kind"]) for f in late.json}
    assert found == {("cronbad", None, "unchecked"), ("nightly", "load", "late")}, late.json
    unchecked = next(f for f in late.json if f["kind"] == "unchecked")
    assert "0 0 30 2 *" in unchecked["reason"] and "never fires" in unchecked["reason"]

    watchman = services_of(app).webhooks
    assert watchman.round() == 3
    events = {(e["event"], e.get("workflow")) for e in receiver.received}
    assert events == {("failed", "wf1"), ("late", "nightly"), ("unchecked", "cronbad")}, receiver.received
    assert watchman.round() == 0  # each once

    # The repair: a fixed file loaded again clears the report.
    write_cfg("cronbad", ".batchy:\n  expected_by: '05:00'\nj1:\n  from_date: 2024-01-01\n")
    assert client.post("/load_cfg/cronbad").status_code == 200
    assert 'batchy_workflow_corrupt{workflow="cronbad"} 0.0' in client.get("/metrics").data.decode()


def test_stored_lateness_settings_of_the_wrong_type_are_reported_not_raised(fake_redis, cfg_dir, write_cfg):
    client = make_app(fake_redis, cfg_dir).test_client()
    write_cfg("odd", ".batchy:\n  max_open_hours: 2\nj1:\n  max_age_hours: 3\n")
    client.post("/load_cfg/odd")
    client.post("/load_cfg/wf1")
    fake_redis.hset(keys.meta("odd"), keys.SETTINGS, json.dumps({"max_open_hours": "two"}))
    client.post("/open_batch/odd")
    for path in ("/metrics", "/", "/late"):
        assert client.get(path).status_code == 200, path
    assert 'batchy_workflow_corrupt{workflow="odd"} 1.0' in client.get("/metrics").data.decode()
    assert ("odd", "unchecked") in {(f["workflow"], f["kind"]) for f in client.get("/late").json}


# -- 2. webhook delivery at least once ----------------------------------------------------------


@pytest.mark.slow  # real processes or waits: the CI run, not the everyday loop
def test_an_event_whose_sender_died_is_sent_again_after_the_visibility_timeout(redis_server, real_redis, cfg_dir,
                                                                               receiver):
    clock = VirtualClock(datetime(2024, 3, 5, 8, 0, tzinfo=UTC))
    app = webhook_app(redis_server, cfg_dir, receiver, clock, BATCHY_WEBHOOK_TIMEOUT=0.2,
                      BATCHY_WEBHOOK_VISIBILITY_TIMEOUT=0.6)
    client = app.test_client()
    client.post("/load_cfg/wf1")
    client.post("/open_batch/wf1")
    assert client.post("/fail_batch/wf1").status_code == 200
    # A sender took the event and died while posting: it sits in flight with its deadline.
    raw = real_redis.rpop(keys.WEBHOOK_OUTBOX)
    seconds, micros = real_redis.time()
    real_redis.zadd(keys.WEBHOOK_INFLIGHT, {raw: seconds * 1000 + micros // 1000 + 600})
    watchman = services_of(app).webhooks
    assert watchman.round() == 0 and receiver.received == []  # still in its sender's hands
    assert real_redis.zcard(keys.WEBHOOK_INFLIGHT) == 1
    time.sleep(0.8)
    assert watchman.round() == 1
    assert [e["id"] for e in receiver.received] == [json.loads(raw)["body"]["id"]]
    assert real_redis.zcard(keys.WEBHOOK_INFLIGHT) == 0 and real_redis.llen(keys.WEBHOOK_OUTBOX) == 0


def test_an_event_left_in_the_old_sending_list_is_delivered(redis_server, real_redis, cfg_dir, receiver):
    clock = VirtualClock(datetime(2024, 3, 5, 8, 0, tzinfo=UTC))
    app = webhook_app(redis_server, cfg_dir, receiver, clock)
    entry = json.dumps({"body": {"text": "Batchy: batch 1 of wf1 failed (a)", "event": "failed"}, "tries": 0})
    real_redis.lpush(keys.WEBHOOK_SENDING, entry)  # where a sender of an earlier version left it
    assert services_of(app).webhooks.round() == 1
    assert receiver.received[0]["text"] == "Batchy: batch 1 of wf1 failed (a)"
    assert not real_redis.exists(keys.WEBHOOK_SENDING, keys.WEBHOOK_INFLIGHT, keys.WEBHOOK_OUTBOX)


def test_a_visibility_timeout_not_longer_than_the_post_timeout_is_refused(redis_server, real_redis, cfg_dir,
                                                                         receiver):
    with pytest.raises(ValueError, match="BATCHY_WEBHOOK_VISIBILITY_TIMEOUT"):
        webhook_app(redis_server, cfg_dir, receiver, None, BATCHY_WEBHOOK_TIMEOUT=10,
                    BATCHY_WEBHOOK_VISIBILITY_TIMEOUT=5)


def worker_pids(master: int) -> list[int]:
    """Return the gunicorn workers of a master we started (its child processes)."""
    with open(f"/proc/{master}/task/{master}/children") as fh:
        return [int(pid) for pid in fh.read().split()]


def webhook_service(redis_server, cfg_dir, receiver, **env):
    from batchy.testing import ServiceProcess

    settings = {"BATCHY_WEBHOOK_URL": receiver.url, "BATCHY_WEBHOOK_INTERVAL": "0.2", **env}
    return ServiceProcess(redis_server.url, str(cfg_dir), env=settings, workers=1)


def fail_a_batch(url: str) -> None:
    import urllib.request

    for path in ("/load_cfg/wf1", "/open_batch/wf1", "/fail_batch/wf1?message=source%20down"):
        with urllib.request.urlopen(urllib.request.Request(url + path, method="POST"), timeout=10) as resp:
            assert resp.status == 200


@pytest.mark.slow
def test_an_event_survives_kill_9_of_the_worker_posting_it(redis_server, real_redis, cfg_dir, receiver):
    import os
    import signal

    from batchy.testing import wait_for

    svc = webhook_service(redis_server, cfg_dir, receiver, BATCHY_WEBHOOK_TIMEOUT="2",
                          BATCHY_WEBHOOK_VISIBILITY_TIMEOUT="3")
    receiver.hang.set()
    svc.start()
    try:
        fail_a_batch(svc.url)
        assert receiver.hung.wait(20), "the event was never posted"
        [worker] = worker_pids(svc.proc.pid)
        os.kill(worker, signal.SIGKILL)  # the worker holding the connection dies mid-post
        receiver.come_back()
        wait_for(lambda: receiver.received, timeout=30, what="the event, sent again")
        wait_for(lambda: worker_pids(svc.proc.pid) != [worker], timeout=10, what="a new worker")
        assert [e["event"] for e in receiver.received] == ["failed"]
        assert receiver.received[0]["id"] == receiver.attempts[0]["id"]  # the same event, the same id
        wait_for(lambda: not real_redis.exists(keys.WEBHOOK_INFLIGHT, keys.WEBHOOK_OUTBOX), timeout=10,
                 what="the delivery recorded")  # the receiver records before it answers
        time.sleep(1)  # a few more rounds: nothing is sent twice
        assert [e["event"] for e in receiver.received] == ["failed"]
    finally:
        svc.stop()


@pytest.mark.slow
def test_an_event_survives_a_graceful_restart_during_a_slow_post(redis_server, real_redis, cfg_dir, receiver):
    from batchy.testing import wait_for

    # A visibility timeout longer than the test: only the hand-back at exit can explain a delivery.
    env = {"BATCHY_WEBHOOK_TIMEOUT": "20", "BATCHY_WEBHOOK_VISIBILITY_TIMEOUT": "600"}
    receiver.hang.set()
    svc = webhook_service(redis_server, cfg_dir, receiver, **env).start()
    try:
        fail_a_batch(svc.url)
        assert receiver.hung.wait(20), "the event was never posted"
        svc.stop()  # SIGTERM: gunicorn's graceful stop, the post still hanging
        receiver.come_back()
        started = time.monotonic()
        svc = webhook_service(redis_server, cfg_dir, receiver, **env).start()
        wait_for(lambda: receiver.received, timeout=30, what="the event, after the restart")
        assert time.monotonic() - started < 30
        assert [e["event"] for e in receiver.received] == ["failed"]
        assert receiver.received[0]["id"] == receiver.attempts[0]["id"]
        wait_for(lambda: not real_redis.exists(keys.WEBHOOK_INFLIGHT, keys.WEBHOOK_OUTBOX), timeout=10,
                 what="the delivery recorded")
    finally:
        svc.stop()


# -- 3. secrets and markup ----------------------------------------------------------------------


def test_slack_markup_in_a_failure_message_arrives_escaped_with_the_raw_text_beside(redis_server, real_redis,
                                                                                    cfg_dir, receiver):
    clock = VirtualClock(datetime(2024, 3, 5, 8, 0, tzinfo=UTC))
    app = webhook_app(redis_server, cfg_dir, receiver, clock)
    client = app.test_client()
    client.post("/load_cfg/wf1")
    client.post("/open_batch/wf1")
    message = "<!channel> log in at <https://evil|https://sso.corp> & retry"
    assert client.post("/fail_batch/wf1", query_string={"message": message}).status_code == 200
    assert services_of(app).webhooks.round() == 1
    [event] = receiver.received
    assert "<" not in event["text"] and ">" not in event["text"]
    assert "&lt;!channel&gt; log in at &lt;https://evil|https://sso.corp&gt; &amp; retry" in event["text"]
    assert message in event["raw_text"] and event["raw_text"].startswith("Batchy: batch ")


@pytest.mark.parametrize("url, shown", [
    ("https://hooks.slack.com/services/T0/B0/s3cr3tT0ken", "https://hooks.slack.com/***"),
    ("https://user:s3cr3tT0ken@example.com:8443/hook?key=s3cr3tT0ken", "https://example.com:8443/***"),
    ("http://[::1]:9/s3cr3tT0ken", "http://[::1]:9/***"),
    ("https://example.com", "https://example.com"),
])
def test_a_webhook_url_is_redacted(url, shown):
    from batchy.storage.webhooks import redact

    assert redact(url) == shown


@pytest.mark.parametrize("down", ["503", "refused"])
def test_a_failed_delivery_never_logs_the_secret_of_the_url(redis_server, real_redis, cfg_dir, receiver, caplog,
                                                             down):
    clock = VirtualClock(datetime(2024, 3, 5, 8, 0, tzinfo=UTC))
    app = webhook_app(redis_server, cfg_dir, receiver, clock)
    watchman = services_of(app).webhooks
    if down == "503":
        receiver.down = True
    else:
        receiver.close()  # nothing listens any more
    client = app.test_client()
    client.post("/load_cfg/wf1")
    client.post("/open_batch/wf1")
    client.post("/fail_batch/wf1")
    with caplog.at_level("WARNING", logger="batchy"):
        assert watchman.round() == 0
    port = receiver.server.server_port
    assert f"http://127.0.0.1:{port}/***" in caplog.text, caplog.text
    assert "s3cr3tT0ken" not in caplog.text and "/services/" not in caplog.text


# -- 5. chunk events keep out of the workflow's audit trail -----------------------------------------


@pytest.fixture(params=["fakeredis", "redis-server"])
def small_cap_client(request, fake_redis, cfg_dir, write_cfg):
    """A client whose streams keep 40 events, on the embedded store, then on our redis-server."""
    write_cfg("hourly", "load:\n  from_date: 2024-01-01\n")
    config = {"BATCHY_CFG_DIR": str(cfg_dir), "BATCHY_EVENTS_KEEP": 40}
    if request.param == "fakeredis":
        app = make_app(fake_redis, cfg_dir, BATCHY_EVENTS_KEEP=40)
        redis = fake_redis
    else:
        redis = request.getfixturevalue("real_redis")
        app = create_app({**config, "BATCHY_REDIS_URL": request.getfixturevalue("redis_server").url})
    return app.test_client(), redis


def run_hourly_backfill(client, chunks: int) -> str:
    end = datetime(2024, 3, 1, tzinfo=UTC).timestamp() + chunks * 3600
    to = datetime.fromtimestamp(end, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = client.post("/backfill/hourly", query_string={"from": "2024-03-01T00:00:00Z", "to": to, "batch_size": "hour"})
    assert r.status_code == 201 and len(r.json["chunks"]) == chunks, r.json
    bid = r.json["backfill_id"]
    for n in range(chunks):
        leased = client.post(f"/backfill/hourly/{bid}/lease").json
        outcome = "fail" if n % 10 == 3 else "close"
        assert client.post(f"/backfill/hourly/{bid}/{outcome}",
                           query_string={"chunk": leased["chunk"], "attempt": leased["attempt"],
                                         "lease_token": leased["lease_token"]}).status_code == 200
    return bid


@pytest.mark.slow  # real processes or waits: the CI run, not the everyday loop
def test_an_hourly_backfill_larger_than_the_cap_leaves_the_audit_trail(small_cap_client):
    client, redis = small_cap_client
    assert client.post("/load_cfg/hourly").status_code == 200
    recent = datetime.now(UTC).replace(microsecond=0).timestamp() - 86400  # after the backfill's range
    since = datetime.fromtimestamp(recent, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert client.post("/set_from_date/hourly", query_string={"from_date": since}).status_code == 200
    client.post("/open_batch/hourly")
    client.post("/close_batch/hourly")
    bid = run_hourly_backfill(client, 120)  # 120 chunks: 360 chunk events, 9 times the cap of 40
    client.post(f"/backfill/hourly/{bid}/cancel")

    trail = [fields["action"] for _id, fields in redis.xrange(keys.events("hourly"))]
    assert trail == ["load", "set", "open", "close", "backfill_create", "backfill_cancel"], trail
    chunk_stream = keys.backfill_events("hourly", bid)
    assert 40 <= redis.xlen(chunk_stream) <= 40 + 200  # bounded: MAXLEN ~ trims whole nodes
    actions = {fields["action"] for _id, fields in redis.xrange(chunk_stream)}
    assert actions <= {"backfill_lease", "backfill_close", "backfill_fail", "backfill_coverage"}

    # /events still lists every event, chunk events included, newest first in one order.
    listed = client.get("/events/hourly?limit=1000").json["events"]
    ids = [tuple(int(p) for p in e["id"].split("-")) for e in listed]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
    assert [e["action"] for e in listed][:1] == ["backfill_cancel"]
    assert [e["action"] for e in listed][-5:] == ["backfill_create", "close", "open", "set", "load"]
    assert {"backfill_lease", "backfill_close", "backfill_coverage"} <= {e["action"] for e in listed}
    # Paging with before= walks the merged order without a gap or a repeat.
    seen, before = [], None
    while True:
        page = client.get("/events/hourly", query_string={"limit": 7, **({"before": before} if before else {})})
        events = page.json["events"]
        if not events:
            break
        seen += [e["id"] for e in events]
        before = events[-1]["id"]
    assert seen == [e["id"] for e in listed]


def test_chunk_events_and_workflow_events_in_one_millisecond_keep_their_order(small_cap_client):
    client, redis = small_cap_client
    client.post("/load_cfg/hourly")
    bid = run_hourly_backfill(client, 3)
    client.post("/set_from_date/hourly?from_date=2024-02-01T00:00:00Z")
    listed = [e["action"] for e in client.get("/events/hourly?limit=100").json["events"]]
    assert listed[0] == "set" and listed[-2:] == ["backfill_create", "load"]
    assert listed[1:4] == ["backfill_coverage", "backfill_close", "backfill_lease"]
    assert redis.xlen(keys.backfill_events("hourly", bid)) == len(listed) - 3


def test_purging_a_workflow_removes_its_chunk_event_streams(small_cap_client):
    client, redis = small_cap_client
    client.post("/load_cfg/hourly")
    bid = run_hourly_backfill(client, 2)
    assert redis.exists(keys.backfill_events("hourly", bid))
    assert client.post("/remove_workflow/hourly?purge_history=true").status_code == 200
    assert not redis.exists(keys.backfill_events("hourly", bid))


@pytest.mark.parametrize("field, value", [("timezone", "Nope/Zone"), ("expected_by", "0 0 31 2 *"),
                                          ("max_age_hours", "three"), ("expected_by", ["06:00"])])
def test_a_bad_stored_job_field_leaves_the_other_workflows_monitored(fake_redis, cfg_dir, write_cfg, field, value):
    client = make_app(fake_redis, cfg_dir).test_client()
    write_cfg("good", "load:\n  expected_by: '06:00'\n")
    write_cfg("bad", "j1:\n  expected_by: '05:00'\n")
    for wf in ("good", "bad"):
        client.post(f"/load_cfg/{wf}")
    job = json.loads(fake_redis.hget("bad", "j1"))
    fake_redis.hset("bad", "j1", json.dumps({**job, field: value}))
    fake_redis.hdel(keys.meta("bad"), keys.VERSION)
    for path in ("/metrics", "/", "/late"):
        assert client.get(path).status_code == 200, path
    assert 'batchy_workflow_corrupt{workflow="bad"} 1.0' in client.get("/metrics").data.decode()
    assert ("good", "load", "late") in {(f["workflow"], f["job"], f["kind"]) for f in client.get("/late").json}
    assert ("bad", None, "unchecked") in {(f["workflow"], f["job"], f["kind"]) for f in client.get("/late").json}
    assert b'data-corrupt="bad"' in client.get("/").data


def test_an_event_id_is_never_claimed_without_its_event_queued(redis_server, real_redis):
    import redis as redis_py

    from batchy.storage import webhooks

    class DiesAfterOneWrite(redis_py.Redis):
        """A client whose process dies after its first write (the id claimed, say)."""

        writes = 0

        def execute_command(self, *args, **options):
            if args[0] in ("SET", "LPUSH", "EVALSHA", "EVAL") and self.writes:
                raise redis_py.ConnectionError("the process died")
            if args[0] in ("SET", "LPUSH", "EVALSHA", "EVAL"):
                type(self).writes += 1
            return super().execute_command(*args, **options)

    dying = DiesAfterOneWrite(host="127.0.0.1", port=redis_server.port, decode_responses=True)
    try:
        webhooks.announce(dying, "failed", "Batchy: batch 1 of wf1 failed (a)", "id-1", workflow="wf1")
    except redis_py.ConnectionError:
        pass
    # Another process notices the same failure: the event is queued exactly once, by one of them.
    webhooks.announce(real_redis, "failed", "Batchy: batch 1 of wf1 failed (a)", "id-1", workflow="wf1")
    assert real_redis.llen(keys.WEBHOOK_OUTBOX) == 1


@pytest.mark.parametrize("post, visibility, expected", [(None, None, 15.0), (10, None, 25.0), (1, 3, 3.0)])
def test_the_visibility_timeout_follows_the_post_timeout(redis_server, real_redis, cfg_dir, receiver, post,
                                                        visibility, expected):
    config = {name: value for name, value in (("BATCHY_WEBHOOK_TIMEOUT", post),
                                              ("BATCHY_WEBHOOK_VISIBILITY_TIMEOUT", visibility)) if value}
    app = webhook_app(redis_server, cfg_dir, receiver, None, **config)
    assert services_of(app).webhooks.visibility == expected


def test_an_unreadable_queued_entry_is_dropped_and_the_rest_delivered(redis_server, real_redis, cfg_dir, receiver,
                                                                     caplog):
    app = webhook_app(redis_server, cfg_dir, receiver, None)
    client = app.test_client()
    client.post("/load_cfg/wf1")
    real_redis.lpush(keys.WEBHOOK_OUTBOX, "{not json")  # a hand edit, oldest
    client.post("/open_batch/wf1")
    client.post("/fail_batch/wf1")
    with caplog.at_level("WARNING", logger="batchy"):
        assert services_of(app).webhooks.round() == 1
    assert [e["event"] for e in receiver.received] == ["failed"] and "unreadable" in caplog.text
    assert not real_redis.exists(keys.WEBHOOK_OUTBOX, keys.WEBHOOK_INFLIGHT)


@pytest.mark.parametrize("field, value", [("count:pending", "x"), ("max_attempts", "many"), ("jobs", "{")])
def test_a_bad_stored_backfill_is_reported_for_its_workflow_only(fake_redis, cfg_dir, write_cfg, field, value):
    client = make_app(fake_redis, cfg_dir).test_client()
    write_cfg("bf", "load:\n  from_date: 2024-01-01\n")
    for wf in ("wf1", "bf"):
        client.post(f"/load_cfg/{wf}")
    bid = client.post("/backfill/bf?from=2024-03-01T00:00:00Z&to=2024-03-03T00:00:00Z").json["backfill_id"]
    fake_redis.hset(keys.backfill("bf", bid), field, value)
    page = client.get("/")
    assert page.status_code == 200 and b'data-corrupt="bf"' in page.data and b'data-workflow="wf1"' in page.data
    for path in (f"/backfill/bf/{bid}", "/backfills/bf"):
        r = client.get(path)
        assert r.status_code == 409 and r.json["error"] == "corrupt_state" and str(bid) in r.json["message"], path
    assert client.get("/metrics").status_code == 200 and client.get("/late").status_code == 200
