"""GET /wait/<wf> on a live gunicorn service and a real redis-server (plus fast checks on fakeredis)."""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from batchy.client import Batchy
from batchy.testing import RedisServer, ServiceProcess, wait_for
from batchy.web.db import services_of

from .conftest import make_app
from .reliability_helpers import UTC, CommandLog, VirtualClock, redis_today, wait_for_waiters


def get(url: str, path: str, token: str | None = None, timeout: float = 30):
    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def in_background(fn):
    """Run fn in a thread; return (thread, list that receives its result)."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    return thread, out


@pytest.fixture(scope="module")
def redis_server():
    """A redis-server of this module's own: its tests count the subscriptions in it, and the
    session's shared service (conftest.shared_service) holds some in the session's."""
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def wait_cfg(tmp_path_factory):
    path = tmp_path_factory.mktemp("wait-cfg")
    (path / "wf1.yaml").write_text("s_extract: {}\ns_load:\n  timezone: Europe/Paris\n")
    return path


@pytest.fixture(scope="module")
def svc(redis_server, wait_cfg):
    service = ServiceProcess(redis_server.url, str(wait_cfg)).start()
    yield service
    service.stop()


@pytest.fixture
def batchy(svc, redis_server):
    client = Batchy(svc.url)
    client.load("wf1", reset=True)
    yield client
    redis_server.client().flushdb()


@pytest.fixture
def today(redis_server) -> str:
    """Today's UTC date by Redis' clock, the service's (the batches a test closes end on it)."""
    return redis_today(redis_server.client()).isoformat()


def test_answers_at_once_with_timeout_zero(svc, batchy, today):
    status, body = get(svc.url, f"/wait/wf1?timeout=0&date={today}")
    assert status == 200
    assert (body["state"], body["ready"], body["timed_out"]) == ("waiting", False, True)
    assert body["missing"] == ["s_extract", "s_load"]
    assert body["jobs"]["s_load"]["reason"] == "never run"


def test_wakes_on_close(svc, batchy, today, redis_commands):
    batchy.open("wf1")
    since = redis_commands.mark()
    thread, out = in_background(lambda: get(svc.url, f"/wait/wf1?timeout=30&date={today}"))
    wait_for_waiters(redis_commands, since, "wf1", 1)  # subscribed, read "open": blocked
    assert thread.is_alive(), "answered while the batch was open"
    batchy.close("wf1")
    thread.join(5)
    assert not thread.is_alive(), "not woken by the close"
    status, body = out[0]
    assert (status, body["state"], body["timed_out"]) == (200, "ready", False)
    assert body["waited"] < 5


def test_selected_job_only(svc, batchy, today):
    batchy.open("wf1")
    batchy.close("wf1", job="s_extract")
    status, body = get(svc.url, f"/wait/wf1?job=s_extract&timeout=5&date={today}")
    assert (status, body["state"], list(body["jobs"])) == (200, "ready", ["s_extract"])


def test_times_out_with_the_current_verdict(svc, batchy, today):
    batchy.open("wf1")
    started = time.monotonic()
    status, body = get(svc.url, f"/wait/wf1?timeout=0.5&date={today}")
    assert 0.4 < time.monotonic() - started < 5
    assert (status, body["state"], body["timed_out"]) == (200, "waiting", True)
    assert "open since" in body["jobs"]["s_extract"]["reason"]


def test_failure_answers_at_once_and_while_failed_waits_for_the_rerun(svc, batchy, today, redis_commands):
    batchy.open("wf1")
    batchy.fail("wf1", message="disk full")
    status, body = get(svc.url, f"/wait/wf1?timeout=30&date={today}", timeout=5)
    assert (body["state"], body["failed"]) == ("failed", ["s_extract", "s_load"])
    assert "disk full" in body["jobs"]["s_extract"]["reason"]
    since = redis_commands.mark()
    thread, out = in_background(lambda: get(svc.url, f"/wait/wf1?timeout=30&while=failed&date={today}"))
    wait_for_waiters(redis_commands, since, "wf1", 1)  # subscribed, read "failed": blocked
    assert thread.is_alive()
    batchy.open("wf1")  # the rerun
    thread.join(5)
    assert out and out[0][1]["state"] == "waiting"


def test_yesterday_is_not_today(svc, batchy):
    batchy.open("wf1")
    batchy.close("wf1")
    status, body = get(svc.url, "/wait/wf1?timeout=0&date=2000-01-01")
    assert (body["state"], body["date"]) == ("missed", "2000-01-01")  # a past day cannot succeed any more
    assert "later than 2000-01-01" in body["jobs"]["s_extract"]["reason"]


def test_many_waiters_share_one_subscription_per_process(svc, batchy, redis_server, today, redis_commands):
    batchy.open("wf1")
    since = redis_commands.mark()
    waiters = [in_background(lambda: get(svc.url, f"/wait/wf1?timeout=30&date={today}")) for _ in range(20)]
    wait_for_waiters(redis_commands, since, "wf1", 20)  # every one subscribed and blocked
    subscribed = [c for c in redis_server.client().client_list() if int(c.get("psub", 0)) > 0]
    assert 1 <= len(subscribed) <= svc.workers
    batchy.close("wf1")
    for thread, out in waiters:
        thread.join(10)
        assert out and out[0][1]["state"] == "ready"


@pytest.mark.parametrize(
    "path, status, code, parameter",
    [
        ("/wait/wf1?date=2024-02-30", 400, "invalid_parameter", "date"),
        ("/wait/wf1?date=yesterday", 400, "invalid_parameter", "date"),
        ("/wait/wf1?tz=Mars/Olympus", 400, "invalid_parameter", "tz"),
        ("/wait/wf1?timeout=-1", 400, "invalid_parameter", "timeout"),
        ("/wait/wf1?timeout=nan", 400, "invalid_parameter", "timeout"),
        ("/wait/wf1?timeout=soon", 400, "invalid_parameter", "timeout"),
        ("/wait/wf1?while=ready", 400, "invalid_parameter", "while"),
        ("/wait/wf1?job=bad%20name", 400, "invalid_name", None),
        ("/wait/bad%20name", 400, "invalid_name", None),
        ("/wait/nope?timeout=0", 404, "workflow_not_found", None),
        ("/wait/wf1?job=nope&timeout=0", 404, "job_not_found", None),
    ],
)
def test_errors_have_the_one_shape(svc, batchy, path, status, code, parameter):
    got, body = get(svc.url, path, timeout=5)
    assert (got, body["error"], body["status"]) == (status, code, status)
    assert body["message"]
    if parameter:
        assert body["parameter"] == parameter


def test_requires_the_token(fake_redis, cfg_dir):
    client = make_app(fake_redis, cfg_dir, BATCHY_API_TOKEN="s3cret").test_client()
    client.post("/load_cfg/wf1", headers={"Authorization": "Bearer s3cret"})
    assert client.get("/wait/wf1?timeout=0").json["error"] == "unauthorized"
    assert client.get("/wait/nope?timeout=0").status_code == 401  # no hint that a workflow exists
    answer = client.get("/wait/wf1?timeout=0", headers={"Authorization": "Bearer s3cret"})
    assert (answer.status_code, answer.json["state"]) == (200, "waiting")


def test_timeout_is_capped(fake_redis, cfg_dir):
    client = make_app(fake_redis, cfg_dir, BATCHY_WAIT_MAX_SECONDS=0.2).test_client()
    client.post("/load_cfg/wf1")
    started = time.monotonic()
    body = client.get("/wait/wf1?timeout=3600").json
    assert body["timeout"] == 0.2 and body["timed_out"]
    assert time.monotonic() - started < 3


def test_waiters_past_the_cap_get_503(fake_redis, cfg_dir):
    # Noon on a fixed day: the waiter's default date (today) is the day the close below ends on.
    clock = VirtualClock(datetime(2024, 3, 1, 12, 0, tzinfo=UTC))
    app = make_app(fake_redis, cfg_dir, BATCHY_WAIT_MAX_WAITERS=1, CLOCK=clock)
    app.test_client().post("/load_cfg/wf1")
    thread, out = in_background(lambda: app.test_client().get("/wait/wf1?timeout=30").status_code)
    wait_for(lambda: services_of(app).notifier.waiters == 1, what="the first waiter")
    refused = app.test_client().get("/wait/wf1?timeout=0")
    assert (refused.status_code, refused.json["error"]) == (503, "too_many_waiters")
    app.test_client().post("/open_batch/wf1")
    app.test_client().post("/close_batch/wf1")  # ready: the first waiter answers
    thread.join(10)
    assert out == [200]
    assert app.test_client().get("/wait/wf1?timeout=0").status_code == 200  # the slot is free again


def test_default_date_is_today_in_the_zone(fake_redis, cfg_dir):
    client = make_app(fake_redis, cfg_dir).test_client()
    client.post("/load_cfg/wf1")
    zone = ZoneInfo("Pacific/Kiritimati")
    before = datetime.fromtimestamp(fake_redis.time()[0], zone).date().isoformat()
    body = client.get("/wait/wf1?timeout=0&tz=Pacific/Kiritimati").json
    after = datetime.fromtimestamp(fake_redis.time()[0], zone).date().isoformat()
    assert body["date"] in (before, after)  # both sides of a midnight in Kiritimati
    assert body["tz"] == "Pacific/Kiritimati"


@pytest.mark.slow
def test_survives_a_redis_restart(wait_cfg):
    """The listener reconnects after Redis restarts: later waiters are woken again."""
    server = RedisServer().start()
    service = ServiceProcess(server.url, str(wait_cfg), workers=1).start()
    try:
        client = Batchy(service.url)
        client.load("wf1")
        client.open("wf1")
        assert get(service.url, "/wait/wf1?timeout=0.2")[1]["state"] == "waiting"  # listener running
        server.stop()
        server.start()
        client.load("wf1")  # the restart lost the data (no persistence): load it again
        client.open("wf1")

        def subscribed():
            return any(int(c.get("psub", 0)) for c in server.client().client_list())

        wait_for(subscribed, timeout=10, what="the listener to subscribe again")
        today = redis_today(server.client()).isoformat()
        with CommandLog(server.client()) as log:
            since = log.mark()
            thread, out = in_background(lambda: get(service.url, f"/wait/wf1?timeout=30&date={today}"))
            wait_for_waiters(log, since, "wf1", 1)
        client.close("wf1")
        thread.join(5)
        assert out and out[0][1]["state"] == "ready"
    finally:
        service.stop()
        server.cleanup()
