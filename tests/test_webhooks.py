"""Webhooks: each failure, lateness and stuck batch announced once, in the background, to a
local receiver, also when that receiver is down for a while."""
from __future__ import annotations

import http.server
import json
import threading
from datetime import datetime, timezone

import pytest

from batchy import create_app
from batchy.storage import keys
from batchy.web.db import services_of

from .reliability_helpers import VirtualClock, wait_until

UTC = timezone.utc


class Receiver:
    """A local HTTP receiver that records what it is sent, and can be down."""

    def __init__(self):
        self.received: list[dict] = []
        self.down = False
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
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
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def close(self):
        self.server.shutdown()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def make(redis_server, cfg_dir, receiver, clock):
    return create_app({"BATCHY_REDIS_URL": redis_server.url, "BATCHY_CFG_DIR": str(cfg_dir), "CLOCK": clock,
                       "BATCHY_WEBHOOK_URL": receiver.url, "BATCHY_WEBHOOK_INTERVAL": 3600})


def test_each_event_reaches_the_receiver_once_across_instances(redis_server, real_redis, cfg_dir, write_cfg,
                                                               receiver):
    clock = VirtualClock(datetime(2024, 3, 5, 8, 0, tzinfo=UTC))
    write_cfg("nightly", "load:\n  expected_by: '06:00'\n")
    apps = [make(redis_server, cfg_dir, receiver, clock) for _ in range(2)]  # two instances, one Redis
    client = apps[0].test_client()
    client.post("/load_cfg/nightly")
    client.post("/load_cfg/wf1")
    client.post("/open_batch/wf1")
    assert client.post("/fail_batch/wf1?message=source%20down").status_code == 200
    watchmen = [services_of(app).webhooks for app in apps]
    for _ in range(3):  # both processes try, several rounds: one leads, nothing is sent twice
        for watchman in watchmen:
            watchman.round()
    kinds = sorted(event["event"] for event in receiver.received)
    assert kinds == ["failed", "late"], receiver.received
    failed = next(e for e in receiver.received if e["event"] == "failed")
    assert "wf1 failed" in failed["text"] and "source down" in failed["text"]
    late = next(e for e in receiver.received if e["event"] == "late")
    assert late["workflow"] == "nightly" and late["job"] == "load" and "nightly/load is late" in late["text"]


def test_a_receiver_that_is_down_gets_the_event_when_it_is_back(redis_server, real_redis, cfg_dir, receiver):
    clock = VirtualClock(datetime(2024, 3, 5, 8, 0, tzinfo=UTC))
    app = make(redis_server, cfg_dir, receiver, clock)
    client = app.test_client()
    client.post("/load_cfg/wf1")
    client.post("/open_batch/wf1")
    receiver.down = True
    assert client.post("/fail_batch/wf1").status_code == 200  # the API never waits for the receiver
    watchman = services_of(app).webhooks
    assert watchman.round() == 0 and real_redis.llen(keys.WEBHOOK_OUTBOX) == 1  # kept for later
    receiver.down = False
    assert watchman.round() == 1
    assert [e["event"] for e in receiver.received] == ["failed"]
    assert real_redis.llen(keys.WEBHOOK_OUTBOX) == 0 and real_redis.llen(keys.WEBHOOK_SENDING) == 0


def test_the_background_thread_delivers_without_any_api_call(redis_server, real_redis, cfg_dir, write_cfg,
                                                             receiver):
    clock = VirtualClock(datetime(2024, 3, 5, 8, 0, tzinfo=UTC))
    write_cfg("nightly", "load:\n  expected_by: '06:00'\n")
    config = {"BATCHY_REDIS_URL": redis_server.url, "BATCHY_CFG_DIR": str(cfg_dir), "CLOCK": clock}
    create_app(config).test_client().post("/load_cfg/nightly")  # loaded by a process without webhooks
    app = create_app({**config, "BATCHY_WEBHOOK_URL": receiver.url, "BATCHY_WEBHOOK_INTERVAL": 0.1})
    try:
        wait_until(lambda: receiver.received, 10, "the late job's announcement")
        assert receiver.received[0]["event"] == "late"
    finally:
        services_of(app).webhooks.stop()
