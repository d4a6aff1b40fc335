"""`batchy run` and `batchy backfill run` as real processes under real signals, and commands
that leave children behind (issue 21: a runner under systemd, Kubernetes, Airflow, cron)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from batchy.cli import backfill_run as backfill_runner
from batchy.cli import main
from batchy.cli.output import params_env
from batchy.client import Batchy

from . import test_backfill, test_runner
from .test_backfill import Lines, serving

pytestmark = pytest.mark.slow  # real processes and real signals: the CI run, not the everyday loop

# The fixtures of test_runner.py (a live service over HTTP, `batchy` in this process) and of
# test_backfill.py (the app with workflow bf on our redis-server).
live, batchy = test_runner.live, test_runner.batchy
jobs_cfg, real_app = test_backfill.jobs_cfg, test_backfill.real_app

UTC = timezone.utc
BIN = os.path.dirname(sys.executable)  # the venv's batchy


def default_signals() -> None:
    """Run in the child before exec: Ctrl-C and hangup do what they do by default, whatever
    this suite inherited (started with `&` from a non-interactive shell, SIGINT is ignored)."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def spawn(url: str, *argv: str, new_session: bool = False) -> subprocess.Popen:
    """Start `batchy ARGV` as its own process against url."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHY_")}
    env["BATCHY_URL"] = url
    return subprocess.Popen([sys.executable, "-m", "batchy.cli", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=default_signals, start_new_session=new_session)


def wait_for_file(path, proc, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"batchy ended first ({proc.returncode}): {proc.stderr.read().decode()}")
        time.sleep(0.02)
    assert os.path.exists(path), "the command never started"


def running(pattern: str) -> bool:
    """Return whether a process whose command line holds pattern runs (pgrep -f)."""
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0


def kill_all(pattern: str) -> None:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    for pid in found:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- batchy run: SIGTERM, SIGINT, SIGHUP -------------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["TERM", "INT", "HUP"])
def test_a_signal_to_batchy_run_stops_the_command_fails_the_batch_and_exits_128_plus_n(live, tmp_path, signum):
    started, done = tmp_path / "started", tmp_path / "done.txt"
    pattern = f"sleep 15.{signum}01"
    proc = spawn(live.url, "run", "wf1", "--grace-seconds", "3", "--", "sh", "-c",
                 f"touch {started}; {pattern}; echo finished > {done}")
    try:
        wait_for_file(started, proc)
        proc.send_signal(signum)
        proc.wait(15)
        err = proc.stderr.read().decode()
        assert proc.returncode == 128 + signum, err
        assert "Aborted!" not in err
        name = signal.Signals(signum).name
        jobs = live.status("wf1")
        assert {job["status"] for job in jobs.values()} == {"failed"}, jobs
        assert all(name in job["message"] for job in jobs.values()), jobs
        assert not running(pattern), "the command outlived batchy run"
        time.sleep(0.3)
        assert not done.exists()
        live.open("wf1")  # the failed batch holds nothing: the next open is not a 409
    finally:
        kill_all(pattern)


def test_ctrl_c_to_the_process_group_exits_130_not_aborted(live, tmp_path):
    """A terminal's Ctrl-C goes to the foreground process group: batchy's (the command has a session of its own)."""
    started = tmp_path / "started"
    pattern = "sleep 15.202"
    proc = spawn(live.url, "run", "wf1", "--", "sh", "-c", f"touch {started}; {pattern}", new_session=True)
    try:
        wait_for_file(started, proc)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(15)
        err = proc.stderr.read().decode()
        assert proc.returncode == 130 and "Aborted!" not in err, err
        assert {job["status"] for job in live.status("wf1").values()} == {"failed"}
        assert not running(pattern)
    finally:
        kill_all(pattern)


def test_a_command_that_ignores_sigterm_is_killed_after_the_grace_period(live, tmp_path):
    started = tmp_path / "started"
    pattern = "sleep 30.303"
    proc = spawn(live.url, "run", "wf1", "--grace-seconds", "1", "--", "sh", "-c",
                 f"trap '' TERM; touch {started}; {pattern}")
    try:
        wait_for_file(started, proc)
        begun = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        took = time.monotonic() - begun
        assert proc.returncode == 143 and 0.8 < took < 8, (proc.returncode, took, proc.stderr.read())
        assert "SIGTERM" in live.status("wf1")["s_extract"]["message"]
        assert not running(pattern)
    finally:
        kill_all(pattern)


def test_a_command_that_exits_on_sigterm_with_0_still_fails_its_batch(live, tmp_path):
    """A clean exit after SIGTERM is an interrupted load, not a finished one."""
    started = tmp_path / "started"
    proc = spawn(live.url, "run", "wf1", "--", "sh", "-c", f"trap 'exit 0' TERM; touch {started}; "
                                                           "while :; do sleep 0.05; done")
    wait_for_file(started, proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(15)
    assert proc.returncode == 143
    assert {job["status"] for job in live.status("wf1").values()} == {"failed"}


# -- batchy backfill run: SIGTERM, SIGHUP (SIGINT: test_backfill.py) -----------------------------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_a_signal_to_backfill_run_stops_every_command_and_fails_their_attempts(real_app, tmp_path, signum):
    pattern = f"sleep 30.4{signum}"
    with serving(real_app) as url:
        api = backfill_runner.BackfillClient(Batchy(url))
        made = api.create("bf", "2024-02-01T00:00:00Z", "2024-02-04T00:00:00Z", jobs=["customers"])
        proc = spawn(url, "backfill", "run", "bf", str(made["backfill_id"]), "--parallel", "2", "--", "sh", "-c",
                     f'touch {tmp_path}/started.$BATCHY_CHUNK; {pattern}; echo done')
        try:
            wait_for_file(tmp_path / "started.0", proc)
            wait_for_file(tmp_path / "started.1", proc)
            proc.send_signal(signum)
            proc.wait(15)
            err = proc.stderr.read().decode()
            chunks = api.status("bf", made["backfill_id"])["chunks"]
        finally:
            kill_all(pattern)
    assert proc.returncode == 128 + signum, err
    assert [(c["status"], c["attempts"]) for c in chunks] == [("pending", 1), ("pending", 1), ("pending", 0)], err
    assert all(signal.Signals(signum).name in c["message"] for c in chunks[:2])
    assert not (tmp_path / "started.2").exists()  # nothing leased after the signal
    assert not running(pattern)


# -- commands that leave children behind ---------------------------------------------------------------

def test_a_background_child_does_not_hold_up_the_run_and_is_stopped(batchy, live):
    pattern = "sleep 12.501"
    try:
        begun = time.monotonic()
        code, _, err = batchy("run", "wf1", "--", "sh", "-c", f"{pattern} & exit 0")
        took = time.monotonic() - begun
        assert code == 0 and took < 5, (took, err)
        assert {job["status"] for job in live.status("wf1").values()} == {"success"}
        time.sleep(0.2)
        assert not running(pattern), "what the command left behind runs on"
    finally:
        kill_all(pattern)


def test_leave_children_leaves_them_running(batchy, live):
    pattern = "sleep 12.502"
    try:
        begun = time.monotonic()
        code, _, err = batchy("run", "wf1", "--leave-children", "--", "sh", "-c", f"{pattern} & exit 0")
        assert code == 0 and time.monotonic() - begun < 5, err
        assert running(pattern)
    finally:
        kill_all(pattern)


def test_a_child_that_left_the_session_holding_stderr_does_not_hold_up_the_run(batchy, live):
    pattern = "sleep 12.503"
    try:
        begun = time.monotonic()
        code, _, err = batchy("run", "wf1", "--", "sh", "-c", f"echo loading >&2; setsid {pattern} & exit 0")
        assert code == 0 and time.monotonic() - begun < 5, err
        assert "loading" in err
    finally:
        kill_all(pattern)


def test_chunk_timeout_ends_a_chunk_whose_command_left_a_child(real_app):
    pattern = "sleep 9.504"
    with serving(real_app) as url:
        api = backfill_runner.BackfillClient(Batchy(url))
        made = api.create("bf", "2024-02-01T00:00:00Z", "2024-02-02T00:00:00Z", jobs=["customers"], max_attempts=1)
        begun = time.monotonic()
        try:
            code = backfill_runner.run_backfill(api, "bf", made["backfill_id"], ["sh", "-c", f"{pattern} & wait"],
                                                chunk_timeout=1, poll=0.05, progress=backfill_runner.Progress(Lines()))
            took = time.monotonic() - begun
            chunk = api.status("bf", made["backfill_id"])["chunks"][0]
            assert code == 1 and took < 6, took
            assert chunk["status"] == "failed" and "chunk-timeout" in chunk["message"]
            assert not running(pattern)
        finally:
            kill_all(pattern)


def test_a_chunk_whose_command_daemonizes_ends_when_the_command_exits(real_app):
    pattern = "sleep 9.505"
    with serving(real_app) as url:
        api = backfill_runner.BackfillClient(Batchy(url))
        made = api.create("bf", "2024-02-01T00:00:00Z", "2024-02-02T00:00:00Z", jobs=["customers"])
        begun = time.monotonic()
        try:
            code = backfill_runner.run_backfill(api, "bf", made["backfill_id"],
                                                ["sh", "-c", f"setsid {pattern} & exit 0"], chunk_timeout=5,
                                                poll=0.05, progress=backfill_runner.Progress(Lines()))
            assert code == 0 and time.monotonic() - begun < 4
        finally:
            kill_all(pattern)


# -- the records file, --max-runs ----------------------------------------------------------------------

@pytest.mark.parametrize("written", ["99999999999999999999", "1e6", "12 rows", "9" * 200])
def test_a_bad_records_file_never_costs_the_success(batchy, live, written):
    code, _, err = batchy("run", "wf1", "--", "sh", "-c", f'printf "%s" "{written}" > "$BATCHY_RECORDS_FILE"')
    assert code == 0, err
    jobs = live.status("wf1")
    assert {job["status"] for job in jobs.values()} == {"success"}
    assert {job["records_processed"] for job in jobs.values()} == {None}
    assert all("records_processed not sent" in job["message"] for job in jobs.values())


def test_a_bad_records_file_never_costs_a_chunk_its_success(real_app):
    with serving(real_app) as url:
        api = backfill_runner.BackfillClient(Batchy(url))
        made = api.create("bf", "2024-02-01T00:00:00Z", "2024-02-02T00:00:00Z", jobs=["customers"])
        code = backfill_runner.run_backfill(api, "bf", made["backfill_id"],
                                            ["sh", "-c", 'echo 99999999999999999999 > "$BATCHY_RECORDS_FILE"'],
                                            poll=0.05, progress=backfill_runner.Progress(Lines()))
        chunk = api.status("bf", made["backfill_id"])["chunks"][0]
    assert code == 0 and chunk["status"] == "success" and chunk["records_processed"] is None
    assert "records_processed not sent" in chunk["message"]


def test_a_count_the_service_refuses_is_sent_again_without_it(live, monkeypatch, capsys):
    from batchy.cli import process, run as run_mod

    monkeypatch.setattr(process, "MAX_RECORDS", 10**30)  # past what the service takes: it answers 400
    code = run_mod.run_batches(Batchy(live.url), "wf1", ["sh", "-c", 'echo 99999999999999999999 > '
                                                                     '"$BATCHY_RECORDS_FILE"'])
    assert code == 0, capsys.readouterr().err
    assert {job["status"] for job in live.status("wf1").values()} == {"success"}


def test_max_runs_stopping_short_has_its_own_exit_code(batchy, live, write_cfg):
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    write_cfg("hourly", f"orders:\n  from_date: {(hour - timedelta(days=5)).isoformat()}\n  batch_size: hour\n"
                        "  max_window_hours: 24\n")
    live.load("hourly")
    code, _, err = batchy("run", "hourly", "--until-caught-up", "--max-runs", "2", "--", "true")
    assert code == 9, err
    assert "--max-runs 2" in err
    assert live.status("hourly")["orders"]["caught_up"] is False
    assert "--max-runs" in batchy("run", "--help")[1].split("Options:")[0]  # in the synopsis


# -- the environment: each job's parameters; a failed open under eval ----------------------------------

def test_each_jobs_parameters_are_in_the_environment(batchy, live):
    code, _, err = batchy("run", "wf1", "--", "sh", "-c", 'env | grep "^BATCHY_" | sort > env.txt')
    assert code == 0, err
    with open("env.txt") as fh:
        env = dict(line.rstrip("\n").split("=", 1) for line in fh)
    assert env["BATCHY_S_EXTRACT_SRC_SCHEMA"] == "CRM" and env["BATCHY_S_EXTRACT_REPROCESS_HOURS"] == "2"
    assert env["BATCHY_S_LOAD_TRUNC_START"] == "true" and env["BATCHY_S_LOAD_TIMEZONE"] == "Europe/Paris"
    assert "BATCHY_SRC_SCHEMA" not in env  # two jobs: per job only
    code, _, err = batchy("run", "wf1", "--job", "s_extract", "--", "sh", "-c", 'env | grep "^BATCHY_" > env.txt')
    with open("env.txt") as fh:
        env = dict(line.rstrip("\n").split("=", 1) for line in fh)
    assert env["BATCHY_SRC_SCHEMA"] == "CRM" and env["BATCHY_REPROCESS_HOURS"] == "2"


def test_parameter_names_are_sanitized_and_collisions_resolved_first_come_first_served():
    jobs = {"a": {"b_c": "from a", "url": "x", "from_date": "f", "weird key!": "it's $(x)", "to-date": 1},
            "a_b": {"c": "from a_b", "d": None, "e": [1, 2]}}
    env = params_env(jobs)
    assert env["BATCHY_A_B_C"] == "from a"  # job a's came first; a_b's c is left out
    assert env["BATCHY_A_WEIRD_KEY_"] == "it's $(x)" and env["BATCHY_A_URL"] == "x"
    assert "BATCHY_A_FROM_DATE" not in env and "BATCHY_A_TO_DATE" not in env  # windows are batchy's own
    assert env["BATCHY_A_B_D"] == "" and env["BATCHY_A_B_E"] == "[1,2]"
    single = params_env({"j": {"url": "http://elsewhere", "redis_url": "r", "batch_id": 3, "schema": "S"}})
    assert "BATCHY_URL" not in single and "BATCHY_REDIS_URL" not in single and single["BATCHY_SCHEMA"] == "S"
    assert single["BATCHY_J_URL"] == "http://elsewhere"


def test_a_failed_open_makes_the_eval_fail_and_unsets_the_last_batch(live, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHY_")}
    env.update(BATCHY_URL=live.url, PATH=os.pathsep.join([BIN, env.get("PATH", "")]))
    script = """
        eval "$(batchy open wf1 --format env)"
        echo "first $BATCHY_BATCH_ID $BATCHY_S_EXTRACT_SRC_SCHEMA"
        batchy close wf1 --batch-id "$BATCHY_BATCH_ID" --quiet
        batchy pause wf1 -m "deploying" --quiet
        if eval "$(batchy open wf1 --format env)"; then echo "carried on"; fi
        echo "after ${BATCHY_BATCH_ID-unset} ${BATCHY_S_EXTRACT_FROM_DATE-unset} ${BATCHY_S_EXTRACT_SRC_SCHEMA-unset}"
        eval "$(batchy open wf1 --format env)"
        echo "not reached"
    """
    done = subprocess.run(["sh", "-c", "set -e\n" + script], env=env, capture_output=True, text=True, timeout=60)
    lines = done.stdout.splitlines()
    assert done.returncode != 0, done
    assert lines[0].startswith("first ") and lines[0].endswith(" CRM")
    assert lines[1:] == ["after unset unset unset"], done
    assert "paused" in done.stderr


def test_main_turns_ctrl_c_into_130(monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("batchy.cli.commands.Batchy.status", interrupted)
    assert main(["status", "wf1"]) == 130
    assert "Aborted!" not in capsys.readouterr().err


# -- beyond the list: how supervisors stop a task ------------------------------------------------------

def test_airflow_sigterm_to_the_whole_process_group(live, tmp_path):
    """Airflow's timeout sends SIGTERM to the task's process group: batchy's, not the command's session."""
    started = tmp_path / "started"
    pattern = "sleep 15.601"
    proc = spawn(live.url, "run", "wf1", "--", "sh", "-c", f"touch {started}; {pattern}", new_session=True)
    try:
        wait_for_file(started, proc)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(15)
        assert proc.returncode == 143, proc.stderr.read()
        assert {job["status"] for job in live.status("wf1").values()} == {"failed"}
        assert not running(pattern)
    finally:
        kill_all(pattern)


@pytest.mark.skipif(subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True).returncode != 0,
                    reason="no PID namespaces here (unshare needs CAP_SYS_ADMIN)")
def test_a_pod_eviction_stops_batchy_running_as_pid_1(live, tmp_path):
    """Kubernetes sends SIGTERM to PID 1 of the container, which the kernel delivers only to a
    handler PID 1 installed itself: batchy's, not a default disposition."""
    started = tmp_path / "started"
    pattern = "sleep 15.602"
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHY_")}
    env["BATCHY_URL"] = live.url
    outer = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-m", "batchy.cli", "run",
                              "wf1", "--", "sh", "-c", f"touch {started}; {pattern} & wait"],
                             env=env, stderr=subprocess.PIPE, preexec_fn=default_signals)
    try:
        wait_for_file(started, outer)
        (pid_1,) = subprocess.run(["pgrep", "-P", str(outer.pid)], capture_output=True, text=True).stdout.split()
        os.kill(int(pid_1), signal.SIGTERM)
        outer.wait(15)
        assert outer.returncode == 143, outer.stderr.read()
        assert {job["status"] for job in live.status("wf1").values()} == {"failed"}
        assert not running(pattern)
    finally:
        kill_all(pattern)


def test_a_signal_after_the_command_exited_records_its_success_then_stops(live, tmp_path):
    """systemd stopping the unit while batchy closes the batch: the load happened, so it is recorded."""
    proc = spawn(live.url, "run", "wf1", "--leave-children", "--", "sh", "-c",
                 '(sleep 0.2; kill -TERM $PPID) & echo 4 > "$BATCHY_RECORDS_FILE"; exit 0')
    proc.wait(15)
    err = proc.stderr.read().decode()
    assert proc.returncode == 143, err
    jobs = live.status("wf1")
    assert {(job["status"], job["records_processed"]) for job in jobs.values()} == {("success", 4)}, err
