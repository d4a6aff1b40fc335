"""The token rule on every mutating route, and secrets kept out of logs."""
import re
import urllib.error
import urllib.request

import pytest

from batchy.testing import RedisServer, ServiceProcess

from .conftest import make_app

READ_ONLY = {"/healthz", "/readyz", "/get_status/<wf>", "/history/<wf>", "/batch/<wf>/<batch_id>", "/batches",
             "/most_recent/<wf>", "/events/<wf>", "/pause_status", "/pause_history", "/", "/dashboard",
             "/metrics", "/openapi.json", "/workflows", "/coverage/<wf>", "/late", "/backfills/<wf>",
             "/backfill/<wf>/<backfill_id>"}


def test_every_route_is_either_read_only_or_token_guarded(fake_redis, cfg_dir):
    app = make_app(fake_redis, cfg_dir, BATCHY_API_TOKEN="t0ken")
    client = app.test_client()
    guarded = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.rule in READ_ONLY:
            continue
        url = re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "json" if m.group(1) == "fmt" else "wf1", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            r = client.open(url, method=method)
            assert r.status_code == 401, (method, url, r.status_code)
            r = client.open(url, method=method, headers={"Authorization": "Bearer t0kenX"})
            assert r.status_code == 401, (method, url)
            guarded.append((method, rule.rule))
    assert ("GET", "/wait/<wf>") in guarded and ("POST", "/open_batch/<wf>") in guarded
    assert len(guarded) >= 20


@pytest.mark.slow  # a gunicorn service and a Redis outage
def test_secrets_never_reach_the_log(cfg_dir):
    password, token = "redis-pw-7f3a9", "api-token-c41d"
    redis = RedisServer("--requirepass", password, "--appendonly", "yes", "--appendfsync", "always").start()
    svc = ServiceProcess(f"redis://:{password}@127.0.0.1:{redis.port}/0", str(cfg_dir),
                         env={"BATCHY_API_TOKEN": token, "BATCHY_LOG_LEVEL": "DEBUG"}).start()
    try:
        def call(path, auth):
            req = urllib.request.Request(svc.url + path, method="POST", headers={"Authorization": f"Bearer {auth}"})
            try:
                return urllib.request.urlopen(req, timeout=10).status
            except urllib.error.HTTPError as exc:
                return exc.code

        assert call("/load_cfg/wf1", token) == 200
        assert call("/open_batch/wf1", "wrong-" + token) == 401
        assert call("/open_batch/wf1", token) == 200
        redis.stop()  # errors get logged: they must not carry the Redis password
        assert call("/close_batch/wf1", token) == 503
        redis.start()
        assert call("/close_batch/wf1", token) == 200
    finally:
        svc.stop()
        redis.cleanup()
    log = svc.log()
    assert "POST /open_batch/wf1" in log  # the access log is there...
    assert password not in log and token not in log  # ...without the secrets


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def test_two_write_tokens_for_rotation(fake_redis, cfg_dir):
    client = make_app(fake_redis, cfg_dir, BATCHY_API_TOKEN="old", BATCHY_API_TOKENS="new, newer").test_client()
    for token in ("old", "new", "newer"):
        assert client.post("/load_cfg/wf1", headers=bearer(token)).status_code == 200, token
    assert client.post("/load_cfg/wf1", headers=bearer("other")).status_code == 401
    assert client.post("/load_cfg/wf1").status_code == 401


def test_a_read_token_protects_the_configured_reads_only(fake_redis, cfg_dir):
    client = make_app(fake_redis, cfg_dir, BATCHY_API_TOKEN="w", BATCHY_READ_TOKENS="r").test_client()
    client.post("/load_cfg/wf1", headers=bearer("w"))
    for path in ("/events/wf1", "/history/wf1", "/batches", "/most_recent/wf1"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers=bearer("r")).status_code == 200, path
        assert client.get(path, headers=bearer("w")).status_code == 200, path  # a write token reads too
    assert client.get("/get_status/wf1").status_code == 200  # state stays open by default
    assert client.get("/wait/wf1?timeout=0", headers=bearer("r")).status_code == 200
    assert client.post("/open_batch/wf1", headers=bearer("r")).status_code == 401  # a read token never writes


def test_protected_reads_are_configurable(fake_redis, cfg_dir):
    client = make_app(fake_redis, cfg_dir, BATCHY_READ_TOKENS="r",
                      BATCHY_PROTECTED_READS="status,dashboard,metrics").test_client()
    client.post("/load_cfg/wf1")
    for path in ("/get_status/wf1", "/workflows", "/", "/metrics"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers=bearer("r")).status_code == 200, path
    assert client.get("/events/wf1").status_code == 200  # not listed: open
