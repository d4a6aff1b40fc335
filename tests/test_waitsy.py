"""Waitsy against a live service on a real redis-server: push, poll fallback, coverage gates,
deadlines, exit codes, restarts."""
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
from flask import Flask, request
from werkzeug.serving import make_server

from batchy import errors
from batchy.rules import gates, readiness
from batchy.client import Batchy
from batchy.testing import ServiceProcess
from waitsy import cli as waitsy
from waitsy import readiness as waitsy_readiness
from waitsy import times as waitsy_times
from waitsy.cli import EXIT_FAILED, EXIT_MISSED, EXIT_READY, EXIT_SKIP, EXIT_TIMEOUT, EXIT_USAGE

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
    # A ready answer comes at once, however long the timeout; so does a missed one (the
    # date is over).
    base = ["-wf", wf, "--url", svc.url, "--quiet", "--timeout", "5"]
    assert waitsy.main(base + ["--date", "2024-03-11", "--tz", "Europe/Paris"]) == EXIT_READY
    assert waitsy.main(base + ["--date", "2024-03-11"]) == EXIT_MISSED  # UTC: that was the 10th
    assert waitsy.main(base + ["--date", "2024-03-10"]) == EXIT_READY
    assert waitsy.main(base + ["--date", "2024-03-10", "--tz", "Europe/Paris"]) == EXIT_MISSED


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
    # UTC's date is yesterday in Kiritimati (over: missed), tomorrow at GMT-12 (not yet: timeout).
    expected = EXIT_MISSED if utc_day < local_day else EXIT_TIMEOUT
    assert waitsy.main(base + ["--timeout", "0.3", "--tz", zone, "--date", utc_day.isoformat()]) == expected


@pytest.mark.slow  # real processes or waits: the CI run, not the everyday loop
def test_timeout_gives_1(svc, workflow, capsys):
    wf = workflow("slow")
    workflow.client.open(wf)
    started = time.monotonic()
    assert waitsy.main(["-wf", wf, "--url", svc.url, "--timeout", "0.5"]) == 1
    assert 0.45 < time.monotonic() - started < 10
    assert "timed out after 0.5s" in capsys.readouterr().out


@pytest.mark.slow  # real processes or waits: the CI run, not the everyday loop
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
        (["-wf", "known", "--date", "2024-03-01", "--through", "today"], "two kinds of gate"),
        (["-wf", "known", "--since", "2024-03-01"], "--since needs --through"),
        (["-wf", "known", "--through", "soon"], "--through must be an ISO-8601"),
        (["-wf", "known", "--through", "today", "--since", "last week"], "--since must be an ISO-8601"),
        (["-wf", "known", "--deadline", "25:00"], "--deadline must be HH:MM"),
        (["-wf", "known", "--deadline", "at nine"], "--deadline must be HH:MM"),
        (["-wf", "known", "--deadline", "09:00", "--on-deadline", "later"], "invalid choice: 'later'"),
        (["-wf", "known", "--on-deadline", "skip"], "--on-deadline needs --deadline"),
        (["--job", "x"], "required: -wf/--workflow"),
        (["-wf", "known", "--bogus"], "unrecognized arguments"),
    ],
)
def test_unknown_workflow_job_or_usage_gives_3(svc, workflow, capsys, argv, text):
    workflow("known")
    assert waitsy.main(["--url", svc.url, "--timeout", "5"] + argv) == 3
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err


@pytest.mark.slow  # real processes or waits: the CI run, not the everyday loop
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


# -- coverage gates: --through -------------------------------------------------------------


@pytest.fixture
def hourly(workflow, redis_server):
    """An hourly upstream from yesterday 00:00 UTC, one hour per open: (wf, yesterday's midnight)."""
    start = datetime.combine(redis_today(redis_server.client()) - timedelta(days=1), datetime.min.time(),
                             tzinfo=timezone.utc)
    wf = workflow("hourly", f"h:\n  from_date: '{start.isoformat()}'\n  batch_size: hour\n  max_window_hours: 1\n")
    return wf, start


def load_hours(client, wf: str, hours: int) -> None:
    for _ in range(hours):
        client.open(wf)
        client.close(wf)


@pytest.mark.slow
def test_a_daily_gate_on_an_hourly_upstream_exits_within_200ms_of_the_last_hour(svc, workflow, hourly,
                                                                                  redis_commands):
    wf, start = hourly
    exited: list = []  # when main() returned, by the same clock as the close calls

    def gate():
        exited.append(waitsy.main(["-wf", wf, "--url", svc.url, "--through", "today", "--timeout", "60",
                                   "--interval", "30", "--quiet"]))
        exited.append(time.monotonic())

    since = redis_commands.mark()
    thread = threading.Thread(target=gate, daemon=True)
    thread.start()
    wait_for_waiters(redis_commands, since, wf, 2)  # blocked in its second /wait
    for hour in range(24):
        assert thread.is_alive(), f"waitsy exited with {24 - hour} of yesterday's hours not loaded"
        window = workflow.client.open(wf)["h"]
        assert datetime.fromisoformat(window["from_date"]) == start + timedelta(hours=hour), window
        called = time.monotonic()
        workflow.client.close(wf)
        returned = time.monotonic()
    thread.join(5)
    code, at = exited
    assert code == EXIT_READY
    assert at >= called, "waitsy exited before the last hour was closed"
    assert at - returned < 0.2, f"waitsy exited {1000 * (at - returned):.0f} ms after the last close returned"


def test_a_hole_behind_the_watermark_is_missed_at_once(svc, workflow, hourly, capsys):
    wf, start = hourly
    load_hours(workflow.client, wf, 1)  # 00:00 - 01:00
    workflow.client.set_from_date(wf, start + timedelta(hours=3))  # an operator skips 01:00 - 03:00
    load_hours(workflow.client, wf, 2)
    began = time.monotonic()
    code = waitsy.main(["-wf", wf, "--url", svc.url, "--through", "today", "--timeout", "30"])
    assert code == EXIT_MISSED and time.monotonic() - began < 1
    out = capsys.readouterr().out
    hole = f"[{(start + timedelta(hours=1)).isoformat()}, {(start + timedelta(hours=3)).isoformat()})"
    assert f"never covered: {hole} lies behind the watermark" in out, out
    assert "rewind or backfill that range" in out and "missed, it can never be ready" in out
    # Issue 22, item 10: with --tz the reason speaks that zone's time, as the rest of the answer does.
    kolkata = ZoneInfo("Asia/Kolkata")
    assert waitsy.main(["-wf", wf, "--url", svc.url, "--through", "now", "--since",
                        start.astimezone(kolkata).isoformat(), "--tz", "Asia/Kolkata"]) == EXIT_MISSED
    out = capsys.readouterr().out  # (since given: its default, 24 h before now, depends on the hour)
    hole = f"[{(start + timedelta(hours=1)).astimezone(kolkata).isoformat()}, " \
           f"{(start + timedelta(hours=3)).astimezone(kolkata).isoformat()})"
    assert f"never covered: {hole} lies behind the watermark" in out and "+00:00" not in out, out


def test_a_gate_becomes_missed_while_waiting(svc, workflow, hourly, redis_commands, capsys):
    wf, start = hourly
    load_hours(workflow.client, wf, 1)
    since = redis_commands.mark()
    thread, code = run_in_background(["-wf", wf, "--url", svc.url, "--through", "today", "--timeout", "30",
                                      "--json"])
    wait_for_waiters(redis_commands, since, wf, 2)
    workflow.client.set_from_date(wf, start + timedelta(hours=5))
    # The service calls a hole missed once all of it lies behind the watermark: here once
    # the 05:00 - 06:00 run splits [01:00, 24:00) into [01:00, 05:00) and what is to come.
    load_hours(workflow.client, wf, 1)
    thread.join(5)
    assert code == [EXIT_MISSED]
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (result["outcome"], result["exit"]) == ("missed", EXIT_MISSED)
    assert result["workflows"][wf]["missed"] == ["h"]


def test_the_gate_is_ready_once_the_range_is_covered(svc, workflow, hourly, capsys):
    wf, start = hourly
    load_hours(workflow.client, wf, 3)  # 00:00 - 03:00
    base = ["-wf", wf, "--url", svc.url, "--job", "h"]
    first_hours = ["--since", (start + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"),  # no offset: in --tz
                   "--through", (start + timedelta(hours=3)).isoformat()]
    assert waitsy.main(base + first_hours + ["--timeout", "5"]) == EXIT_READY
    assert f"covered {(start + timedelta(hours=1)).isoformat()} to" in capsys.readouterr().out
    # 05:30 - 08:30 in Kolkata (+05:30, no DST) is 00:00 - 03:00 UTC.
    kolkata = ["--since", start.strftime("%Y-%m-%dT05:30"), "--through", start.strftime("%Y-%m-%dT08:30"),
               "--tz", "Asia/Kolkata"]
    assert waitsy.main(base + kolkata + ["--timeout", "5"]) == EXIT_READY
    # Not yet loaded is not missed: 03:00 onwards is ahead of the watermark.
    assert waitsy.main(base + ["--through", "today", "--timeout", "0.3"]) == EXIT_TIMEOUT
    assert "not yet covered: [" in capsys.readouterr().out
    # An hour before the upstream's first from_date was never loaded and never will be.
    early = ["--since", (start - timedelta(hours=1)).isoformat(), "--through", (start + timedelta(hours=2)).isoformat()]
    assert waitsy.main(base + early + ["--timeout", "5"]) == EXIT_MISSED


def test_a_past_date_is_missed_at_once(svc, workflow, capsys):
    wf = workflow("pastdate")
    began = time.monotonic()
    assert waitsy.main(["-wf", wf, "--url", svc.url, "--date", "2000-01-01", "--timeout", "30"]) == EXIT_MISSED
    assert time.monotonic() - began < 1
    out = capsys.readouterr().out
    assert "MISSED (2000-01-01 is over and not every step succeeded on it) s_extract (never run)" in out


# -- deadlines ----------------------------------------------------------------------------------


@pytest.mark.parametrize("action, code", [("fail", EXIT_TIMEOUT), ("proceed", EXIT_READY), ("skip", EXIT_SKIP)])
@pytest.mark.parametrize("form", ["HH:MM", "ISO", "ISO in --tz"])
def test_a_gate_past_its_deadline_takes_its_fallback_at_once(svc, workflow, hourly, capsys, action, code, form):
    wf, start = hourly  # nothing loaded: waiting, not missed
    # 00:00 is today's midnight: always past; so is yesterday 23:00 in Paris (22:00 UTC at the latest).
    deadline = {"HH:MM": ["--deadline", "00:00"],
                "ISO": ["--deadline", (start + timedelta(hours=1)).isoformat()],
                # --since: Paris' day starts an hour before the upstream's first UTC hour, which
                # would make the gate missed (exit 4) rather than waiting, whatever the time of day.
                "ISO in --tz": ["--deadline", (start + timedelta(hours=23)).strftime("%Y-%m-%dT%H:%M"),
                                "--tz", "Europe/Paris", "--since", start.isoformat()]}[form]
    began = time.monotonic()
    assert waitsy.main(["-wf", wf, "--url", svc.url, "--through", "today", "--timeout", "30",
                        "--on-deadline", action, "--json"] + deadline) == code
    assert time.monotonic() - began < 1
    out, err = capsys.readouterr()
    result = json.loads(out.splitlines()[-1])
    assert (result["outcome"], result["action"], result["exit"]) == ("deadline", action, code)
    answer = result["workflows"][wf]
    assert answer["deadline"]["passed"] and answer["deadline"]["action"] == action  # the service was told
    warned = [line for line in err.splitlines() if "WARNING" in line]
    if action == "proceed":
        assert len(warned) == 1 and "proceeding with the data that is there" in warned[0], err
        assert "passed before hourly was ready" in warned[0] and "not yet covered" in warned[0]
    else:
        assert warned == []


def test_a_gate_ready_by_its_deadline_exits_0_without_a_warning(svc, workflow, hourly, capsys):
    wf, start = hourly
    load_hours(workflow.client, wf, 24)
    for action in ("fail", "proceed", "skip"):
        assert waitsy.main(["-wf", wf, "--url", svc.url, "--through", "today", "--deadline", "00:00",
                            "--on-deadline", action]) == EXIT_READY
    out, err = capsys.readouterr()
    assert err == "" and out.count("ready: hourly covered") == 3


@pytest.mark.slow
def test_a_deadline_ends_a_wait_in_progress(svc, workflow, capsys):
    wf = workflow("due")
    workflow.client.open(wf)  # a date gate, waiting while the batch is open
    deadline = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    began = time.monotonic()
    code = waitsy.main(["-wf", wf, "--url", svc.url, "--deadline", deadline.isoformat(), "--on-deadline", "skip",
                        "--timeout", "30", "--json"])
    waited = time.monotonic() - began
    assert code == EXIT_SKIP and 1.3 < waited < 3, waited
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["action"] == "skip"
    assert result["workflows"][wf]["deadline"]["at"] == deadline.isoformat()


def test_the_timeout_before_the_deadline_exits_1(svc, workflow, capsys):
    wf = workflow("early")
    workflow.client.open(wf)
    later = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    assert waitsy.main(["-wf", wf, "--url", svc.url, "--deadline", later, "--on-deadline", "skip",
                        "--timeout", "0.3"]) == EXIT_TIMEOUT
    assert "timed out after 0.3s" in capsys.readouterr().out


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


@pytest.mark.slow  # real processes or waits: the CI run, not the everyday loop
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


def test_a_coverage_gate_needs_wait_and_says_so(old_service, capsys):
    began = time.monotonic()
    code = waitsy.main(["-wf", "old", "--url", old_service.url, "--through", "today", "--timeout", "30"])
    assert code == EXIT_USAGE and time.monotonic() - began < 1
    assert "--through needs GET /wait" in capsys.readouterr().err
    assert old_service.hits == [], "a coverage gate must not fall back to polling"


@pytest.mark.slow  # real processes or waits: the CI run, not the everyday loop
def test_the_deadline_is_kept_against_a_service_that_cannot(old_service, capsys):
    # Polling an older service: only waitsy's own clock can end the wait at the deadline.
    deadline = (datetime.now(timezone.utc) + timedelta(seconds=0.5)).isoformat()
    began = time.monotonic()
    code = waitsy.main(["-wf", "old", "--url", old_service.url, "--interval", "0.1", "--timeout", "30",
                        "--deadline", deadline, "--on-deadline", "proceed"])
    assert code == EXIT_READY and 0.4 < time.monotonic() - began < 2
    out, err = capsys.readouterr()
    assert "WARNING: deadline" in err and "polling /get_status" in out


@pytest.fixture
def fake_wait():
    """A /wait that answers at once whatever it is asked, as the test sets it; it records each query."""
    app = Flask("fake_wait")
    errors.register(app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    server.queries = []
    server.answer = lambda args: {"state": "waiting", "ready": False, "missing": ["a"], "failed": [], "jobs": {}}

    @app.get("/wait/<wf>")
    def wait(wf):
        server.queries.append(request.args.to_dict(flat=False))
        return server.answer(request.args)

    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    server.url = f"http://127.0.0.1:{server.server_port}"
    yield server
    server.shutdown()


@pytest.mark.slow  # real processes or waits: the CI run, not the everyday loop
def test_a_service_that_answers_at_once_is_not_asked_in_a_tight_loop(fake_wait):
    assert waitsy.main(["-wf", "x", "--url", fake_wait.url, "--timeout", "0.9", "--quiet"]) == EXIT_TIMEOUT
    # 0, 0.1, 0.3, 0.7 s: the gap doubles while every answer comes back at once.
    assert 2 <= len(fake_wait.queries) <= 5, len(fake_wait.queries)


def test_a_missed_answer_is_asked_once(fake_wait, capsys):
    fake_wait.answer = lambda args: {"state": "missed", "ready": False, "missing": ["a"], "failed": [],
                                     "missed": ["a"], "reason": "2000-01-01 is over", "jobs": {"a": {"reason": "never run"}}}
    assert waitsy.main(["-wf", "x", "--url", fake_wait.url, "--date", "2000-01-01", "--timeout", "30"]) == EXIT_MISSED
    assert len(fake_wait.queries) == 1
    assert "x: MISSED (2000-01-01 is over) a (never run)" in capsys.readouterr().out


def test_today_is_pinned_by_the_first_answer(fake_wait):
    pinned = {"since": "2024-05-01T00:00:00+02:00", "through": "2024-05-02T00:00:00+02:00"}
    fake_wait.answer = lambda args: {"state": "waiting", "ready": False, "missing": ["a"], "failed": [],
                                     "jobs": {}, **pinned}
    waitsy.main(["-wf", "x", "--url", fake_wait.url, "--through", "today", "--tz", "Europe/Paris",
                 "--timeout", "0.3", "--quiet"])
    first, *later = fake_wait.queries
    assert first["through"] == ["today"] and "since" not in first and first["tz"] == ["Europe/Paris"]
    assert later and all((q["through"], q["since"]) == ([pinned["through"]], [pinned["since"]]) for q in later)


def test_an_older_wait_is_asked_without_the_deadline(fake_wait, capsys):
    def older(args):  # a /wait from before deadlines: unknown parameters are refused
        for name in args:
            if name not in ("date", "tz", "job", "timeout", "while"):
                raise errors.InvalidParameter(f"unknown parameter {name!r}", parameter=name)
        return {"state": "waiting", "ready": False, "missing": ["a"], "failed": [], "jobs": {}}

    fake_wait.answer = older
    assert waitsy.main(["-wf", "x", "--url", fake_wait.url, "--deadline", "00:00", "--on-deadline", "skip",
                        "--timeout", "30"]) == EXIT_SKIP
    assert "takes no deadline" in capsys.readouterr().out
    assert "deadline" in fake_wait.queries[0] and "deadline" not in fake_wait.queries[-1]
    # ...and a coverage gate is refused: it cannot be answered by polling either.
    assert waitsy.main(["-wf", "x", "--url", fake_wait.url, "--through", "today", "--timeout", "30"]) == EXIT_USAGE
    assert "--through needs a /wait that takes through" in capsys.readouterr().err


@pytest.mark.slow  # real processes or waits: the CI run, not the everyday loop
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
    zone = waitsy_times.zone(tz)
    assert waitsy_readiness.job_verdict(job, day, zone) == readiness.job_verdict(job, day, zone)


@pytest.mark.parametrize("day", [date(2024, 3, 10), date(2024, 3, 11), date(2024, 3, 12)])
@pytest.mark.parametrize("state", ["ready", "waiting", "failed"])
def test_the_copied_missed_rule_agrees_with_the_service(day, state):
    result = {"state": state, "ready": state == "ready", "missing": [] if state == "ready" else ["a"],
              "failed": ["a"] if state == "failed" else [], "jobs": {}}
    today = date(2024, 3, 11)
    assert waitsy_readiness.date_missed(result, day, today) == gates.date_missed(result, day, today)


def test_waitsy_does_not_import_batchy():
    for name in os.listdir(os.path.join(ROOT, "waitsy")):
        if name.endswith(".py"):
            source = open(os.path.join(ROOT, "waitsy", name)).read()
            assert not re.search(r"^\s*(import|from)\s+batchy", source, re.M), name
    code = ("import sys, waitsy.cli; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('batchy', 'flask', 'redis', 'click', 'yaml')]; print(bad); sys.exit(bool(bad))")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_every_exit_code_is_in_the_one_table_of_the_docs():
    page = open(os.path.join(ROOT, "docs", "waitsy.md")).read()
    tables = re.findall(r"^\| Exit \| Meaning \|\n\|---\|---\|\n((?:\|.*\n)+)", page, re.M)
    assert len(tables) == 1, "one table of exit codes"
    documented = [int(row.split("|")[1]) for row in tables[0].splitlines()]
    codes = [EXIT_READY, EXIT_TIMEOUT, EXIT_FAILED, EXIT_USAGE, EXIT_MISSED, EXIT_SKIP]
    assert documented == codes == list(range(6))
    assert all(f"\n  {code}  " in waitsy.EPILOG for code in codes)  # waitsy --help


@pytest.mark.slow  # real processes or waits: the CI run, not the everyday loop
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
    assert "--through" in helped.stdout and "--on-deadline" in helped.stdout


@pytest.mark.parametrize("spelt", [["--wf", "nope"], ["--wf=nope"]])
def test_wf_with_two_dashes_is_the_workflow_too(spelt, capsys):
    """--wf said "-wf/--workflow is required", as if not given at all."""
    code = waitsy.main([*spelt, "--url", "http://127.0.0.1:1", "--timeout", "0", "--quiet"])
    assert code != EXIT_USAGE and "required" not in capsys.readouterr().err
