"""Outages: with Redis down or silent every call answers 503 fast, nothing half-written
survives, and the service recovers by itself when Redis returns."""
from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from batchy import create_app
from batchy.storage import scripts
from batchy.testing import RedisServer, ServiceProcess
from batchy.web.db import services_of

from .reliability_helpers import raw_client, snapshot, wait_until

# Endpoints that need no Redis: they answer as usual during an outage.
NO_REDIS = {"api.healthz", "openapi.openapi", "static"}
ARGS = {"wf": "wf1", "fmt": "json", "batch_id": "1", "backfill_id": "1"}
# What a route requires to reach Redis (every route refuses parameters it does not take).
QUERY = {"api.rewind": "batch_id=1", "api.set_from_date": "from_date=2024-01-01", "wait.wait": "timeout=1",
         "backfill.create": "from=2024-01-01&to=2024-01-02", "api.invalidate": "from=2024-01-01&to=2024-01-02",
         "backfill.close": "chunk=0&attempt=1", "backfill.fail": "chunk=0&attempt=1",
         "backfill.renew": "chunk=0&attempt=1"}


def every_route(app):
    """Yield (endpoint, method, url) for every route of the app, arguments filled in."""
    for rule in app.url_map.iter_rules():
        if rule.endpoint in NO_REDIS:
            continue
        url = rule.rule
        for arg in rule.arguments:
            url = url.replace(f"<{arg}>", ARGS[arg])
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            query = QUERY.get(rule.endpoint)
            yield rule.endpoint, method, f"{url}?{query}" if query else url


def check_unavailable(client, limit: float, only: set | None = None):
    """Call every route; each must answer 503 with the JSON error body within limit seconds."""
    seen = []
    for endpoint, method, url in every_route(client.application):
        if only is not None and (endpoint, method) not in only:
            continue
        started = time.monotonic()
        resp = client.open(url, method=method)
        elapsed = time.monotonic() - started
        assert elapsed < limit, f"{method} {url} took {elapsed:.1f} s with Redis unreachable"
        if endpoint == "metrics.metrics":  # a scrape reports the outage as a metric
            assert resp.status_code == 200 and b"batchy_redis_up 0" in resp.data, resp.data[:300]
            continue
        assert resp.status_code == 503, f"{method} {url}: {resp.status_code} {resp.data[:200]!r}"
        if endpoint.startswith("dashboard."):  # a page for people: an HTML 503 that retries
            assert resp.mimetype == "text/html", resp.mimetype
        else:
            body = json.loads(resp.data)
            assert body["error"] == "redis_unavailable" and body["status"] == 503, body
        seen.append((endpoint, method, round(elapsed, 2)))
    assert len(seen) >= (10 if only is None else len(only))
    return seen


@pytest.fixture
def own_redis():
    server = RedisServer("--appendonly", "yes", "--appendfsync", "always").start()
    yield server
    server.cleanup()


def test_every_endpoint_answers_503_fast_when_redis_is_down(own_redis, cfg_dir):
    app = create_app({"BATCHY_REDIS_URL": own_redis.url, "BATCHY_CFG_DIR": str(cfg_dir)})
    client = app.test_client()
    assert client.post("/load_cfg/wf1").status_code == 200
    own_redis.stop()
    seen = check_unavailable(client, limit=3)
    print("answered 503:", seen)
    own_redis.start()
    wait_until(lambda: client.get("/get_status/wf1").status_code == 200, 10, "recovery")
    assert client.post("/open_batch/wf1").status_code == 200


class Blackhole:
    """A TCP port that accepts connections and never answers: a hung or partitioned Redis."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(512)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.open = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while self.open:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)  # keep it open, read nothing, say nothing

    def close(self):
        self.open = False
        for conn in self.conns:
            conn.close()
        self.sock.close()


CORE = {("api.get_status", "GET"), ("api.open_batch", "POST")}


@pytest.mark.slow  # waits out a Redis timeout per call
def test_blackholed_redis_answers_503_instead_of_hanging(cfg_dir):
    hole = Blackhole()
    try:
        app = create_app({"BATCHY_REDIS_URL": f"redis://127.0.0.1:{hole.port}/0", "BATCHY_CFG_DIR": str(cfg_dir),
                          "BATCHY_REDIS_TIMEOUT": 0.5})
        seen = check_unavailable(app.test_client(), limit=5, only=CORE)
        print("answered 503 from a blackhole (timeout 0.5 s):", seen)
    finally:
        hole.close()


@pytest.mark.slow  # waits out the default 2 s Redis timeout
def test_blackholed_redis_answers_within_one_timeout(cfg_dir):
    hole = Blackhole()
    try:
        app = create_app({"BATCHY_REDIS_URL": f"redis://127.0.0.1:{hole.port}/0", "BATCHY_CFG_DIR": str(cfg_dir)})
        # Default BATCHY_REDIS_TIMEOUT 2 s: one timeout plus slack, as the setting promises.
        check_unavailable(app.test_client(), limit=3.5, only={("api.get_status", "GET")})
    finally:
        hole.close()


def test_state_change_cut_between_read_and_commit_leaves_nothing(own_redis, cfg_dir, monkeypatch):
    app = create_app({"BATCHY_REDIS_URL": own_redis.url, "BATCHY_CFG_DIR": str(cfg_dir)})
    client = app.test_client()
    assert client.post("/load_cfg/wf1").status_code == 200
    assert client.post("/open_batch/wf1").status_code == 200
    raw = raw_client(own_redis.port)
    before = snapshot(raw)
    raw.close()
    transport = services_of(app).store.transport
    real_run = transport.run
    cut = []

    def commit_after_outage(script, *args, **kwargs):
        if not cut and script.script == scripts.COMMIT:
            cut.append(1)
            own_redis.kill()  # Redis dies after the read, before the commit
        return real_run(script, *args, **kwargs)

    monkeypatch.setattr(transport, "run", commit_after_outage)
    for path in ("/close_batch/wf1", "/open_batch/wf1", "/fail_batch/wf1", "/load_cfg/wf1?reset=true"):
        cut.clear()
        resp = client.post(path)
        assert resp.status_code == 503, (path, resp.status_code, resp.data)
        own_redis.start()
        raw = raw_client(own_redis.port)
        assert snapshot(raw) == before, f"{path} left a partial change behind"
        raw.close()
    monkeypatch.setattr(transport, "run", real_run)
    assert client.post("/close_batch/wf1").status_code == 200


def _http(url: str, method: str = "GET", timeout: float = 10):
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    started = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read()), time.monotonic() - started
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), time.monotonic() - started


@pytest.mark.slow  # a gunicorn service through two Redis outages
def test_live_service_recovers_by_itself(own_redis, cfg_dir):
    svc = ServiceProcess(own_redis.url, str(cfg_dir)).start()
    try:
        pid = svc.proc.pid
        assert _http(svc.url + "/load_cfg/wf1", "POST")[0] == 200
        assert _http(svc.url + "/open_batch/wf1", "POST")[0] == 200
        for outage in range(2):
            own_redis.kill() if outage else own_redis.stop()
            for path, method in (("/get_status/wf1", "GET"), ("/close_batch/wf1", "POST"),
                                 ("/open_batch/wf1", "POST"), ("/readyz", "GET"), ("/load_cfg/wf1", "POST")):
                status, body, elapsed = _http(svc.url + path, method)
                assert status == 503 and body["error"] == "redis_unavailable", (path, status, body)
                assert elapsed < 3, f"{path} took {elapsed:.1f} s"
            assert _http(svc.url + "/healthz")[0] == 200  # liveness stays up: no restart loop
            own_redis.start()
            wait_until(lambda: _http(svc.url + "/readyz")[0] == 200, 10, "readiness after Redis returned")
            status, body, _ = _http(svc.url + "/close_batch/wf1" if not outage else svc.url + "/open_batch/wf1",
                                    "POST")
            assert status == 200, body
        assert svc.proc.pid == pid and svc.proc.poll() is None
    finally:
        svc.stop()
