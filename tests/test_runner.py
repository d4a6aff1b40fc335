"""`batchy run` and `batchy backfill` against a live service (in this process, on our redis-server)."""
from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

import click
import pytest

from batchy import cli as runner, create_app
from batchy.client import Batchy
from batchy.rules.times import format_time

from .test_backfill import serving, with_backfills

UTC = timezone.utc
RECORDS_AND_ENV = 'env | grep "^BATCHY_" | sort > env.txt; echo 42 > "$BATCHY_RECORDS_FILE"'


@pytest.fixture
def live(redis_server, real_redis, cfg_dir, monkeypatch, tmp_path):
    """The service with the backfill endpoints, over HTTP; BATCHY_URL points at it; cwd is a temp dir."""
    app = with_backfills(create_app({"BATCHY_REDIS_URL": redis_server.url, "BATCHY_CFG_DIR": str(cfg_dir)}))
    with serving(app) as url:
        monkeypatch.setenv("BATCHY_URL", url)
        monkeypatch.delenv("BATCHY_API_TOKEN", raising=False)
        monkeypatch.chdir(tmp_path)
        client = Batchy(url)
        client.load("wf1")
        yield client


@pytest.fixture
def batchy(live, capsys):
    """Run `batchy ARGS` (the runner's commands) in this process; return (exit code, stdout, stderr)."""
    group = click.Group("batchy", commands=runner.COMMANDS)

    def run(*argv):
        try:
            code = group.main(list(argv), prog_name="batchy", standalone_mode=False)
        except click.ClickException as exc:
            exc.show()
            code = exc.exit_code
        out, err = capsys.readouterr()
        return code or 0, out, err

    return run


def read_env(path="env.txt") -> dict[str, str]:
    with open(path) as fh:
        return dict(line.rstrip("\n").split("=", 1) for line in fh)


def test_env_names_follow_the_job_names():
    assert "BATCHY_S_M_LOAD_ORDERS_FROM_DATE" in runner.window_env("wf", {"s_m.load-orders": {}, "b": {}})
    env = runner.window_env("wf", {"a.b": {"from_date": "1", "to_date": "2"}})
    assert env == {"BATCHY_WORKFLOW": "wf", "BATCHY_A_B_FROM_DATE": "1", "BATCHY_A_B_TO_DATE": "2",
                   "BATCHY_FROM_DATE": "1", "BATCHY_TO_DATE": "2"}
    with pytest.raises(click.ClickException, match="both become BATCHY_A_B"):
        runner.window_env("wf", {"a.b": {}, "a-b": {}})


def test_run_hands_the_window_and_closes_with_the_records_file(batchy, live):
    code, _, err = batchy("run", "wf1", "--", "sh", "-c", RECORDS_AND_ENV)
    assert code == 0, err
    env = read_env()
    state = live.status("wf1")
    assert env["BATCHY_WORKFLOW"] == "wf1" and env["BATCHY_BATCH_ID"] == str(state["s_extract"]["batch_id"])
    assert env["BATCHY_S_EXTRACT_FROM_DATE"] == state["s_extract"]["from_date"]
    assert env["BATCHY_S_LOAD_TO_DATE"] == state["s_load"]["to_date"]
    assert "BATCHY_FROM_DATE" not in env  # two jobs and no --job: only the per-job names
    assert env["BATCHY_RECORDS_FILE"].startswith("/")
    assert {job["status"] for job in state.values()} == {"success"}
    assert {job["records_processed"] for job in state.values()} == {42}
    assert "success (42 records)" in err


def test_run_job_closes_that_job_only(batchy, live):
    code, _, err = batchy("run", "wf1", "--job", "s_load", "--", "sh", "-c", RECORDS_AND_ENV)
    assert code == 0, err
    env, state = read_env(), live.status("wf1")
    window = (state["s_load"]["from_date"], state["s_load"]["to_date"])
    assert (env["BATCHY_FROM_DATE"], env["BATCHY_TO_DATE"]) == window
    # A job on its own schedule (issue 22): only it was opened; the other job is left as it was.
    assert state["s_load"]["status"] == "success" and state["s_extract"]["status"] == "new"
    assert batchy("run", "wf1", "--job", "nope", "--", "true")[0] == 3  # 404: nothing opened


def test_a_failing_command_fails_the_batch_with_its_stderr_tail_and_exit_code(batchy, live):
    noise = "x" * 3000
    code, _, err = batchy("run", "wf1", "--", "sh", "-c", f'echo {noise} >&2; echo "ORA-01555: snapshot too old" >&2; '
                                                          "exit 7")
    assert code == 7
    assert "ORA-01555" in err and noise in err  # passed through whole
    job = live.status("wf1")["s_extract"]
    assert job["status"] == "failed" and job["message"].endswith("ORA-01555: snapshot too old")
    assert len(job["message"]) <= runner.TAIL_CHARS
    assert batchy("run", "wf1", "--", "no-such-command-here")[0] == 127
    assert live.status("wf1")["s_extract"]["message"].startswith("batchy: cannot run")


def test_an_empty_window_runs_the_command_unless_skip_empty(batchy, live, write_cfg):
    now = datetime.now(UTC)
    write_cfg("hourly", f"a:\n  from_date: {now.replace(minute=0, second=0, microsecond=0).isoformat()}\n"
                        "  batch_size: hour\n")
    live.load("hourly")
    code, _, _ = batchy("run", "hourly", "--", "sh", "-c", "touch ran")
    assert code == 0 and os.path.exists("ran")
    window = live.status("hourly")["a"]
    assert window["from_date"] == window["to_date"] and window["status"] == "success"
    code, _, err = batchy("run", "hourly", "--skip-empty", "--", "sh", "-c", "touch ran-again")
    assert code == 0 and "not run (--skip-empty)" in err
    assert not os.path.exists("ran-again")
    assert live.status("hourly")["a"]["status"] == "success"


def test_a_week_outage_is_caught_up_in_24_hour_pieces_without_a_hole(batchy, live, write_cfg):
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = hour - timedelta(days=7)
    write_cfg("hourly", f"orders:\n  from_date: {start.isoformat()}\n  batch_size: hour\n  max_window_hours: 24\n")
    live.load("hourly")
    command = 'echo "$BATCHY_FROM_DATE $BATCHY_TO_DATE" >> windows.txt; echo 10 > "$BATCHY_RECORDS_FILE"'
    code, _, err = batchy("run", "hourly", "--until-caught-up", "--", "sh", "-c", command)
    assert code == 0, err
    with open("windows.txt") as fh:
        windows = [tuple(datetime.fromisoformat(t) for t in line.split()) for line in fh]
    assert 7 <= len(windows) <= 8  # 8 when an hour began during the test
    assert windows[0][0] == start and all(high - low <= timedelta(hours=24) for low, high in windows)
    assert all(a[1] == b[0] for a, b in zip(windows, windows[1:]))
    coverage = live.coverage("hourly", start=format_time(start))["orders"]
    assert coverage["holes"] == [] and coverage["covered"] == [[format_time(start), format_time(windows[-1][1])]]
    assert live.status("hourly")["orders"]["caught_up"] is True


def test_until_caught_up_stops_at_the_first_failure(batchy, live, write_cfg):
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=3)
    write_cfg("hourly", f"orders:\n  from_date: {start.isoformat()}\n  batch_size: hour\n  max_window_hours: 24\n")
    live.load("hourly")
    command = 'echo x >> runs.txt; test "$(wc -l < runs.txt)" -lt 2 || { echo "disk full" >&2; exit 4; }'
    code, _, _ = batchy("run", "hourly", "--until-caught-up", "--", "sh", "-c", command)
    assert code == 4
    with open("runs.txt") as fh:
        assert len(fh.readlines()) == 2
    job = live.status("hourly")["orders"]
    assert job["status"] == "failed" and job["message"] == "disk full"
    assert job["from_date"] == format_time(start + timedelta(days=1))  # the second window, to rerun


def test_backfill_commands_create_status_list_cancel_and_run(batchy, live):
    code, out, err = batchy("backfill", "create", "wf1", "--from", "2024-03-01T00:00:00Z", "--to",
                            "2024-03-04T00:00:00Z", "--job", "s_extract", "--batch-size", "day", "--json")
    assert code == 0, err
    made = json.loads(out)
    bid = made["backfill_id"]
    assert len(made["chunks"]) == 3
    code, out, _ = batchy("backfill", "status", "wf1", str(bid), "--table")
    assert code == 0 and f"backfill {bid} of wf1: running, 0/3 done" in out and "pending" in out
    code, out, err = batchy("backfill", "run", "wf1", str(bid), "--parallel", "2", "--", "sh", "-c",
                            'echo 3 > "$BATCHY_RECORDS_FILE"')
    assert code == 0, err
    assert "success: 3 success" in err
    code, out, _ = batchy("backfill", "list", "wf1", "--json")
    assert [b["status"] for b in json.loads(out)] == ["success"]
    second = json.loads(batchy("backfill", "create", "wf1", "--from", "2024-03-01", "--to", "2024-03-02")[1])
    code, out, _ = batchy("backfill", "cancel", "wf1", str(second["backfill_id"]), "--json")
    assert code == 0 and json.loads(out)["cancelled_chunks"] == 2  # a day of each job
    assert batchy("backfill", "status", "wf1", "999")[0] == 3  # not found
    third = json.loads(batchy("backfill", "create", "wf1", "--from", "2024-03-01", "--to", "2024-03-02",
                              "--job", "s_load")[1])["backfill_id"]
    leased = json.loads(batchy("backfill", "lease", "wf1", str(third), "--lease-seconds", "60")[1])
    assert (leased["chunk"], leased["attempt"]) == (0, 1)
    assert batchy("backfill", "lease", "wf1", str(third))[1] == ""  # none due: nothing printed
    code, out, err = batchy("backfill", "fail", "wf1", str(third), "--chunk", "0", "--attempt", "2")
    assert code == 4 and "stale_attempt" in err
    code, out, _ = batchy("backfill", "close", "wf1", str(third), "--chunk", "0", "--attempt", "1",
                          "--lease-token", leased["lease_token"], "--records-processed", "9", "--table")
    assert code == 0 and "status: success" in out and "records_processed: 9" in out
    code, _, err = batchy("backfill", "create", "wf1", "--from", "2024-03-02", "--to", "2024-03-01")
    assert code == 8 and "must be later than from" in err


def test_run_closes_with_what_the_command_attests(batchy, live):
    attest = 'printf "checksum=sha256:ab12\\ndq=fail\\ndq_message=3 rows without a key\\n" > "$BATCHY_ATTEST_FILE"'
    code, _, err = batchy("run", "wf1", "--job", "s_extract", "--", "sh", "-c", attest)
    assert code == 0, err
    job = live.status("wf1")["s_extract"]
    assert (job["status"], job["checksum"], job["dq"], job["dq_message"]) == (
        "success", "sha256:ab12", "fail", "3 rows without a key")
    window = [job["from_date"], job["to_date"]]
    assert live.coverage("wf1")["s_extract"]["failed_quality"] == [window]  # a hole until reloaded


def test_an_attestation_the_runner_cannot_read_closes_with_dq_fail(batchy, live):
    code, _, err = batchy("run", "wf1", "--job", "s_extract", "--", "sh", "-c",
                          'echo "dq=maybe" > "$BATCHY_ATTEST_FILE"; echo 5 > "$BATCHY_RECORDS_FILE"')
    assert code == 0, err
    job = live.status("wf1")["s_extract"]
    assert job["status"] == "success" and job["records_processed"] == 5 and job["dq"] == "fail"
    assert "BATCHY_ATTEST_FILE could not be read (dq must be pass or fail" in job["dq_message"]
    assert "BATCHY_ATTEST_FILE could not be read" in err
    # nothing written: nothing attested, the window counts as covered as before
    assert batchy("run", "wf1", "--job", "s_load", "--", "true")[0] == 0
    assert live.status("wf1")["s_load"].get("dq") is None


def test_backfill_run_closes_each_chunk_with_what_the_command_attests(batchy, live):
    made = live.backfills.create("wf1", "2024-03-01T00:00:00Z", "2024-03-03T00:00:00Z", jobs=["s_extract"],
                                 batch_size="day")
    bid = made["backfill_id"]
    # the first day fails its quality check, the second passes
    command = ('if [ "$BATCHY_FROM_DATE" = "2024-03-01T00:00:00+00:00" ]; then v=fail; else v=pass; fi; '
               'printf "dq=$v\\nchecksum=c-$BATCHY_FROM_DATE\\n" > "$BATCHY_ATTEST_FILE"')
    code, _, err = batchy("backfill", "run", "wf1", str(bid), "--", "sh", "-c", command)
    assert code == 0, err
    shown = live.coverage("wf1")["s_extract"]
    assert ["2024-03-01T00:00:00+00:00", "2024-03-02T00:00:00+00:00"] in shown["failed_quality"]
    assert ["2024-03-02T00:00:00+00:00", "2024-03-03T00:00:00+00:00"] not in shown["failed_quality"]
