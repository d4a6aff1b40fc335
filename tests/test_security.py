"""The token rule on every mutating route, and secrets kept out of logs."""
import json
import os
import re
import signal
import time
import urllib.error
import urllib.request

import pytest

from batchy.testing import RedisServer, ServiceProcess, wait_for
from batchy.web import auth

from .conftest import make_app

READ_ONLY = {"/healthz", "/readyz", "/get_status/<wf>", "/history/<wf>", "/batch/<wf>/<batch_id>", "/batches",
             "/most_recent/<wf>", "/events/<wf>", "/pause_status", "/pause_history", "/", "/dashboard",
             "/metrics", "/openapi.json", "/workflows", "/coverage/<wf>", "/coverage/<wf>/view", "/late", "/backfills/<wf>",
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


# -- rotating tokens without a restart (issue 22, item 11) ------------------------------

def write_tokens(path, text: str) -> None:
    """Replace the tokens file in one step, as docs/operations.md says: write aside, then rename."""
    aside = f"{path}.new"
    with open(aside, "w") as fh:
        fh.write(text)
    os.replace(aside, path)


def test_the_tokens_file_is_read_again_when_it_changes(fake_redis, cfg_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(auth, "TOKENS_CHECK_SECONDS", 0.0)  # look at the file on every request
    tokens = tmp_path / "tokens"
    write_tokens(tokens, "# rotated by the deploy\nBATCHY_API_TOKEN=old\n")
    client = make_app(fake_redis, cfg_dir, BATCHY_API_TOKEN="from-the-environment",
                      BATCHY_TOKENS_FILE=str(tokens)).test_client()

    def status(token):
        return client.post("/load_cfg/wf1", headers={"Authorization": f"Bearer {token}"}).status_code

    assert (status("old"), status("from-the-environment")) == (200, 401)  # the file replaces the setting
    write_tokens(tokens, "BATCHY_API_TOKEN=new\nBATCHY_API_TOKENS='old'\n")
    assert (status("new"), status("old")) == (200, 200)
    write_tokens(tokens, "BATCHY_API_TOKEN=new\nBATCHY_READ_TOKENS=reader\n")
    assert (status("new"), status("old")) == (200, 401)
    assert client.get("/events/wf1").status_code == 401  # the read token came in too
    with caplog.at_level("ERROR", logger="batchy"):
        write_tokens(tokens, "BATCHY_API_TOKN=typo\n")  # a broken file keeps the tokens in force
        assert (status("new"), status("")) == (200, 401)
        os.unlink(tokens)
        assert (status("new"), status("")) == (200, 401)
    assert "keeping the tokens in force" in caplog.text and "typo" not in caplog.text
    with pytest.raises(SystemExit, match="BATCHY_TOKENS_FILE"):  # at start, a missing file is an error
        make_app(fake_redis, cfg_dir, BATCHY_TOKENS_FILE=str(tokens))


def post(url: str, token: str) -> int:
    req = urllib.request.Request(url, method="POST", headers={"Authorization": f"Bearer {token}"})
    try:
        return urllib.request.urlopen(req, timeout=10).status
    except urllib.error.HTTPError as exc:
        return exc.code


def statuses(svc, path: str, *tokens: str, times: int = 6) -> set[tuple[int, ...]]:
    """Return the (status per token) seen over several calls: every worker answers one."""
    return {tuple(post(svc.url + path, token) for token in tokens) for _ in range(times)}


@pytest.mark.slow  # a gunicorn service with two workers, and waits of a second
def test_tokens_rotate_in_a_running_service_without_a_restart(redis_server, cfg_dir, tmp_path):
    tokens = tmp_path / "tokens"
    write_tokens(tokens, "BATCHY_API_TOKEN=old\n")
    svc = ServiceProcess(redis_server.url, str(cfg_dir), env={"BATCHY_TOKENS_FILE": str(tokens)}).start()
    try:
        assert statuses(svc, "/load_cfg/wf1", "old", "new") == {(200, 401)}
        write_tokens(tokens, "BATCHY_API_TOKEN=new\nBATCHY_API_TOKENS=old\n")  # step 1: both
        time.sleep(auth.TOKENS_CHECK_SECONDS + 0.3)
        assert statuses(svc, "/load_cfg/wf1", "old", "new") == {(200, 200)}
        write_tokens(tokens, "BATCHY_API_TOKEN=new\n")  # step 3: the old one goes
        time.sleep(auth.TOKENS_CHECK_SECONDS + 0.3)
        assert statuses(svc, "/load_cfg/wf1", "old", "new") == {(401, 200)}
        log = svc.log()
        assert svc.proc.poll() is None and log.count("Booting worker") == 2 and "Hang up" not in log
        assert "tokens read again" in log
    finally:
        svc.stop()


@pytest.mark.slow  # real gunicorn masters and real signals
@pytest.mark.parametrize("store", ["redis", "embedded"])
def test_sighup_applies_new_tokens_and_keeps_the_state(redis_server, cfg_dir, tmp_path, store):
    tokens = tmp_path / "tokens"
    write_tokens(tokens, "BATCHY_API_TOKEN=old\n")
    url = redis_server.url if store == "redis" else ""
    svc = ServiceProcess(url, str(cfg_dir), env={"BATCHY_TOKENS_FILE": str(tokens)}, workers=1).start()
    try:
        assert post(svc.url + "/load_cfg/wf1", "old") == 200 and post(svc.url + "/open_batch/wf1", "old") == 200
        write_tokens(tokens, "BATCHY_API_TOKEN=new\n")
        os.kill(svc.proc.pid, signal.SIGHUP)  # the gunicorn master
        wait_for(lambda: "Hang up" in svc.log() or "SIGHUP" in svc.log(), what="the master's SIGHUP")
        if store == "redis":  # gunicorn's own reload: a new worker reads the settings afresh
            wait_for(lambda: svc.log().count("Booting worker") == 2, what="a new worker")
        dry_run = "/open_batch/wf1?dry_run=true"  # token-guarded, changes nothing
        wait_for(lambda: statuses(svc, dry_run, "old", "new", times=1) == {(401, 200)}, timeout=10,
                 what="the new token")
        assert statuses(svc, dry_run, "old", "new") == {(401, 200)}
        with urllib.request.urlopen(svc.url + "/get_status/wf1", timeout=10) as resp:
            state = json.loads(resp.read())
        assert {job["status"] for job in state.values()} == {"open"}, "the SIGHUP lost the open batch"
        assert svc.proc.poll() is None
    finally:
        svc.stop()
