"""Waitsy against a live service on a real redis-server: push, poll fallback, exit codes, restarts."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from flask import Flask
from werkzeug.serving import make_server

from batchy import errors, readiness
from batchy.client import Batchy
from batchy.testing import ServiceProcess
from waitsy import cli as waitsy

from .reliability_helpers import redis_today, wait_for_waiters, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWO_JOBS = "s_extract: {}\ns_load: {}\n"


def run_in_background(argv):
    """Start waitsy's main(argv) in a thread; return (thread, list receiving the exit code)."""
    code: list = []
    thread = threading.Thread(target=lambda: code.append(waitsy.main(argv)), daemon=True)
    thread.start()
    return thread, code


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    return tmp_path_factory.mktemp("waitsy-cfg")


@pytest.fixture(scope="module")
def svc(redis_server, cfg):
    service = ServiceProcess(redis_server.url, str(cfg)).start()
    yield service
    service.stop()


@pytest.fixture
def workflow(svc, cfg, redis_server):
    """write(name, yaml) -> a loaded workflow (reset); the Batchy client is workflow.client."""
    client = Batchy(svc.url)
    redis_today(redis_server.client())  # not in a day's last seconds: "today" holds for the whole test

    def write(name: str, text: str = TWO_JOBS) -> str:
        (cfg / f"{name}.yaml").write_text(text)
        client.load(name, reset=True)
        return name

    write.client = client
    yield write
    redis_server.client().flushdb()


def test_blocks_while_open_then_exits_soon_after_close(svc, workflow, capsys, redis_commands):
    wf = workflow("wf1")
    workflow.client.open(wf)
    since = redis_commands.mark()
    # --interval 30: only push can make it exit within the bound below.
    thread, code = run_in_background(["-wf", wf, "--url", svc.url, "--timeout", "60", "--interval", "30"])
    # Its first /wait answers at once (the state to show), its second one blocks.
    wait_for_waiters(redis_commands, since, wf, 2)
    assert thread.is_alive(), "waitsy exited while the batch was open"
    since = redis_commands.mark()
    workflow.client.close(wf, job="s_extract")
    wait_for_waiters(redis_commands, since, wf, 1)  # the listener read the change for the waiter
    time.sleep(0.1)  # the point: time for a wrongly woken waitsy to exit
    assert thread.is_alive(), "waitsy exited with one step still open"
    workflow.client.close(wf, job="s_load")
    thread.join(5)
    assert code == [0]
    out = capsys.readouterr().out
    assert "waiting for s_extract (batch" in out and "ready: wf1" in out


def test_yesterday_success_does_not_count(svc, workflow, capsys):
    yesterday = datetime.now(timezone.utc) - timedelta(days=1)
    wf = workflow("daily", f"s_extract:\n  status: success\n  batch_end: '{yesterday.isoformat()}'\n")
    assert waitsy.main(["-wf", wf, "--url", svc.url, "--timeout", "0.3"]) == 1
    assert f"last success ended {yesterday.date().isoformat()}, earlier than" in capsys.readouterr().out
    assert waitsy.main(["-wf", wf, "--url", svc.url, "--date", yesterday.date().isoformat(), "--quiet"]) == 0
    workflow.client.open(wf)
    workflow.client.close(wf)
    assert waitsy.main(["-wf", wf, "--url", svc.url, "--timeout", "5", "--quiet"]) == 0


def test_the_zone_decides_the_date(svc, workflow):
    # 23:30 UTC on 10 March is 00:30 on 11 March in Paris: ready for the 11th only in Paris.
    wf = workflow("tzwf", "s_extract:\n  status: success\n  batch_end: '2024-03-10T23:30:00+00:00'\n")
    # A ready answer comes at once, however long the timeout; a waiting one takes all of it.
    ready, waiting = ["--timeout", "5"], ["--timeout", "0.3"]
    base = ["-wf", wf, "--url", svc.url, "--quiet"]
    assert waitsy.main(base + ready + ["--date", "2024-03-11", "--tz", "Europe/Paris"]) == 0
    assert waitsy.main(base + waiting + ["--date", "2024-03-11"]) == 1  # UTC: that was the 10th
    assert waitsy.main(base + ready + ["--date", "2024-03-10"]) == 0
    assert waitsy.main(base + waiting + ["--date", "2024-03-10", "--tz", "Europe/Paris"]) == 1


def test_today_follows_tz_for_a_batch_closed_now(svc, workflow):
    wf = workflow("now")
    workflow.client.open(wf)
    closed = workflow.client.close(wf)["s_extract"]["batch_end"]
    end = datetime.fromisoformat(closed)
    # A zone whose calendar date differs from UTC's right now (+14 h or -12 h).
    zone = "Pacific/Kiritimati" if end.astimezone(timezone.utc).hour >= 10 else "Etc/GMT+12"
    local_day = end.astimezone(ZoneInfo(zone)).date()
    utc_day = end.astimezone(timezone.utc).date()
    assert local_day != utc_day
    base = ["-wf", wf, "--url", svc.url, "--quiet"]
    assert waitsy.main(base + ["--timeout", "5", "--tz", zone]) == 0  # today in that zone
    assert waitsy.main(base + ["--timeout", "0.3", "--tz", zone, "--date", utc_day.isoformat()]) == 1


def test_timeout_gives_1(svc, workflow, capsys):
    wf = workflow("slow")
    workflow.client.open(wf)
    started = time.monotonic()
    assert waitsy.main(["-wf", wf, "--url", svc.url, "--timeout", "0.5"]) == 1
    assert 0.45 < time.monotonic() - started < 10
    assert "timed out after 0.5s" in capsys.readouterr().out


def test_failure_with_fail_on_error_gives_2(svc, workflow, capsys, redis_commands):
    wf = workflow("flaky")
    workflow.client.open(wf)
    since = redis_commands.mark()
    thread, code = run_in_background(["-wf", wf, "--url", svc.url, "--timeout", "60", "--fail-on-error"])
    wait_for_waiters(redis_commands, since, wf, 2)  # blocked in its second /wait
    workflow.client.fail(wf, job="s_load", message="disk full")
    thread.join(5)
    assert code == [2]
    assert "FAILED s_load (failed at" in capsys.readouterr().out
    # Without --fail-on-error a failure keeps it waiting for a rerun.
    assert waitsy.main(["-wf", wf, "--url", svc.url, "--timeout", "0.3", "--quiet"]) == 1


def test_rerun_after_failure_is_followed(svc, workflow, redis_commands):
    wf = workflow("rerun")
    workflow.client.open(wf)
    workflow.client.fail(wf)
    since = redis_commands.mark()
    thread, code = run_in_background(["-wf", wf, "--url", svc.url, "--timeout", "60", "--quiet"])
    wait_for_waiters(redis_commands, since, wf, 2)  # blocked while failed
    since = redis_commands.mark()
    workflow.client.open(wf)
    # The listener reads the rerun and wakes the waiter; waitsy's next /wait blocks while waiting.
    wait_for_waiters(redis_commands, since, wf, 2)
    assert thread.is_alive()
    workflow.client.close(wf)
    thread.join(5)
    assert code == [0]


@pytest.mark.parametrize(
    "argv, text",
    [
        (["-wf", "nope"], "workflow 'nope' is not loaded"),
        (["-wf", "known", "--job", "nope"], "has no job 'nope'"),
        (["-wf", "known", "-wf", "nope"], "workflow 'nope' is not loaded"),
        (["-wf", "known", "--job", "other:s_load"], "not one of the -wf given"),
        (["-wf", "known", "--date", "2024-02-30"], "--date must be YYYY-MM-DD"),
        (["-wf", "known", "--tz", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
        (["-wf", "known", "--interval", "0"], "--interval must be"),
        (["-wf", "known", "--timeout", "-1"], "--timeout must be"),
        (["-wf", "bad name"], "invalid workflow name"),
        (["--job", "x"], "required: -wf/--workflow"),
        (["-wf", "known", "--bogus"], "unrecognized arguments"),
    ],
)
def test_unknown_workflow_job_or_usage_gives_3(svc, workflow, capsys, argv, text):
    workflow("known")
    assert waitsy.main(["--url", svc.url, "--timeout", "5"] + argv) == 3
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err


def test_several_workflows_and_jobs(svc, workflow):
    first, second = workflow("first"), workflow("second")
    for wf in (first, second):
        workflow.client.open(wf)
    workflow.client.close(first)
    workflow.client.close(second, job="s_extract")
    base = ["--url", svc.url, "--quiet", "-wf", first, "-wf", second]
    ready, waiting = ["--timeout", "5"], ["--timeout", "0.3"]  # a ready answer comes at once
    assert waitsy.main(base + waiting) == 1
    assert waitsy.main(base + ready + ["--job", "s_extract"]) == 0
    assert waitsy.main(base + ready + ["--job", "second:s_extract"]) == 0
    assert waitsy.main(base + waiting + ["--job", "second:s_load"]) == 1


def test_json_output(svc, workflow, capsys):
    wf = workflow("machine")
    workflow.client.open(wf)
    workflow.client.close(wf)
    assert waitsy.main(["-wf", wf, "--url", svc.url, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["event"] == "start" and lines[-1]["event"] == "result"
    assert (lines[-1]["exit"], lines[-1]["outcome"]) == (0, "ready")
    assert lines[-1]["workflows"][wf]["jobs"]["s_load"]["state"] == "ready"


@pytest.mark.slow
def test_service_restart_mid_wait_does_not_crash(redis_server, cfg, capsys, redis_commands):
    (cfg / "restart.yaml").write_text(TWO_JOBS)
    service = ServiceProcess(redis_server.url, str(cfg), workers=1).start()
    printed = []  # (out, err) of waitsy so far

    def says(text: str) -> bool:
        printed.append(capsys.readouterr())
        return any(text in out for out, _ in printed)

    try:
        client = Batchy(service.url)
        client.load("restart", reset=True)
        client.open("restart")
        since = redis_commands.mark()
        thread, code = run_in_background(["-wf", "restart", "--url", service.url, "--timeout", "60",
                                          "--interval", "0.2"])
        wait_for_waiters(redis_commands, since, "restart", 2)  # a /wait in flight
        started = time.monotonic()
        service.stop()
        assert time.monotonic() - started < 8, "a /wait waiter held up the graceful stop"
        wait_until(lambda: says("service unavailable"), 10, "waitsy to report the service down")
        assert thread.is_alive(), "waitsy gave up while the service was down"
        service.start()
        client.close("restart")
        thread.join(10)
        assert code == [0]
    finally:
        service.stop()
        redis_server.client().flushdb()
    printed.append(capsys.readouterr())
    out, err = "".join(o for o, _ in printed), "".join(e for _, e in printed)
    assert "service unavailable" in out and "service answers again" in out
    assert out.count("service unavailable") == 1
    assert "Traceback" not in out + err


# -- poll fallback: a service without /wait ----------------------------------------------


@pytest.fixture
def old_service():
    """A tiny Flask app that only has /get_status (Batchy's error shape), like an older Batchy."""
    app = Flask("old_batchy")
    errors.register(app)
    state: dict[str, dict] = {"old": {"s_extract": {"status": "open", "batch_id": 1, "batch_end": None}}}
    hits: list[str] = []

    @app.get("/get_status/<wf>")
    def get_status(wf):
        hits.append(wf)
        if wf not in state:
            raise errors.WorkflowNotFound(f"workflow {wf!r} is not loaded", workflow=wf)
        return state[wf]

    server = make_server("127.0.0.1", 0, app, threaded=True)
    # A short poll interval: shutdown() waits for one.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.state, server.hits = state, hits
    server.url = f"http://127.0.0.1:{server.server_port}"
    yield server
    server.shutdown()


def test_poll_fallback_against_a_service_without_wait(old_service, capsys):
    thread, code = run_in_background(["-wf", "old", "--url", old_service.url, "--interval", "0.2", "--timeout", "30"])
    wait_until(lambda: old_service.hits.count("old") >= 2, 10, "waitsy to poll /get_status twice")
    assert thread.is_alive()
    old_service.state["old"]["s_extract"] = {
        "status": "success", "batch_id": 1, "batch_end": datetime.now(timezone.utc).isoformat()}
    thread.join(5)
    assert code == [0]
    out = capsys.readouterr().out
    assert "no /wait" in out and "polling /get_status every 0.2s" in out


def test_poll_fallback_names_an_unknown_workflow(old_service, capsys):
    assert waitsy.main(["-wf", "other", "--url", old_service.url, "--interval", "0.2", "--timeout", "5"]) == 3
    assert "workflow 'other' is not loaded" in capsys.readouterr().err


def test_poll_fallback_on_a_plain_html_404():
    app = Flask("bare")  # Flask's default HTML 404 for /wait
    app.add_url_rule("/get_status/<wf>", "s", lambda wf: {"a": {"status": "success", "batch_end": "2024-01-02T10:00:00Z"}})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert waitsy.main(["-wf", "x", "--url", url, "--date", "2024-01-02", "--quiet", "--timeout", "5"]) == 0
    finally:
        server.shutdown()


def test_down_service_is_retried_until_the_timeout(capsys):
    from batchy.testing import free_port

    started = time.monotonic()
    code = waitsy.main(["-wf", "wf1", "--url", f"http://127.0.0.1:{free_port()}", "--timeout", "0.5"])
    assert code == 1 and time.monotonic() - started >= 0.45
    out = capsys.readouterr()
    assert out.out.count("service unavailable") == 1 and "Traceback" not in out.err


# -- the copied rule and the command ------------------------------------------------------------


@pytest.mark.parametrize("status", ["new", "open", "success", "failed", "weird", None])
@pytest.mark.parametrize("end", [None, "", "garbage", "2024-03-10T23:30:00+00:00", "2024-03-11T12:00:00Z",
                                 "2024-03-12T00:30:00+0100", "2024-03-11"])
@pytest.mark.parametrize("tz", ["UTC", "Europe/Paris", "America/Los_Angeles"])
def test_the_copied_rule_agrees_with_the_service(status, end, tz):
    job = {"status": status, "batch_end": end, "batch_id": 7, "batch_start": "2024-03-11T01:00:00+00:00", "message": "m"}
    day = date(2024, 3, 11)
    zone = waitsy.zone(tz)
    assert waitsy.job_verdict(job, day, zone) == readiness.job_verdict(job, day, zone)


def test_waitsy_does_not_import_batchy():
    source = open(os.path.join(ROOT, "waitsy", "cli.py")).read()
    assert not re.search(r"^\s*(import|from)\s+batchy", source, re.M)
    code = ("import sys, waitsy.cli; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('batchy', 'flask', 'redis', 'click', 'yaml')]; print(bad); sys.exit(bool(bad))")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_runs_as_a_command(svc, workflow):
    wf = workflow("cmd")
    workflow.client.open(wf)
    workflow.client.close(wf)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHY_")}
    env["BATCHY_URL"] = svc.url
    done = subprocess.run([sys.executable, "-m", "waitsy", "-wf", wf, "--timeout", "10"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "ready: cmd" in done.stdout
    helped = subprocess.run([sys.executable, "-m", "waitsy", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert helped.returncode == 0 and "exit codes" in helped.stdout and "--fail-on-error" in helped.stdout
