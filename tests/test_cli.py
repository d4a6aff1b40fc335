"""The batchy command against a live service (gunicorn) on a real redis-server."""
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import click
import pytest

from batchy import cli as cli_mod
from batchy.cli import env_lines, main
from batchy.cli.output import EXIT_USAGE
from batchy.client import BadServiceURL, Batchy
from batchy.web.openapi import spec
from batchy.testing import ServiceProcess

BIN = os.path.dirname(sys.executable)  # the venv's batchy and waitsy


@pytest.fixture
def batchy(service, monkeypatch, capsys):
    monkeypatch.setenv("BATCHY_URL", service.url)
    monkeypatch.delenv("BATCHY_API_TOKEN", raising=False)

    def run(*argv):
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def shell(service, script: str) -> subprocess.CompletedProcess:
    """Run a bash script with the venv's batchy first on PATH, against the service."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHY_")}
    env.update(BATCHY_URL=service.url, PATH=os.pathsep.join([BIN, env.get("PATH", "")]))
    return subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], env=env, capture_output=True,
                          text=True, timeout=60)


def test_operator_session(batchy, tmp_path):
    code, out, _ = batchy("load", "wf1")
    assert code == 0 and set(json.loads(out)) == {"s_extract", "s_load"}
    code, out, _ = batchy("open", "wf1", "--format", "infa")
    assert code == 0 and out.startswith("[s_extract]\n$$status=open\n")
    code, out, _ = batchy("close", "wf1", "--job", "s_extract", "--records-processed", "12")
    assert code == 0 and json.loads(out)["s_extract"]["records_processed"] == 12
    code, out, _ = batchy("fail", "wf1", "--message", "boom")
    assert code == 0 and json.loads(out)["s_load"]["status"] == "failed"
    code, out, err = batchy("close", "wf1")
    assert code == 4 and "no open job" in err and "409" in err
    code, out, _ = batchy("status", "wf1")
    assert json.loads(out)["s_load"]["message"] == "boom"
    code, out, _ = batchy("history", "wf1", "--limit", "1")
    assert code == 0 and json.loads(out)[0]["status"] == "failed"
    code, _, err = batchy("status", "nope")
    assert code == 3 and "not loaded" in err
    code, out, _ = batchy("open", "wf1", "--dry-run")
    assert code == 0 and json.loads(out)["s_load"]["status"] == "open"


def test_fail_takes_dash_m_like_pause(batchy):
    batchy("load", "wf1")
    batchy("open", "wf1")
    code, out, _ = batchy("fail", "wf1", "-m", "source down", "--job", "s_load")
    assert code == 0 and json.loads(out)["s_load"]["message"] == "source down"
    code, out, _ = batchy("close", "wf1", "-m", "fine")
    assert code == 0 and json.loads(out)["s_extract"]["message"] == "fine"


def test_history_pages_with_before_and_batch_shows_one(batchy):
    batchy("load", "wf1")
    ids = []
    for _ in range(3):
        ids.append(json.loads(batchy("open", "wf1")[1])["s_extract"]["batch_id"])
        batchy("close", "wf1")
    code, out, _ = batchy("history", "wf1", "--limit", "2")
    first = json.loads(out)
    assert code == 0 and [b["batch_id"] for b in first] == ids[:0:-1]
    code, out, _ = batchy("history", "wf1", "--limit", "2", "--before", str(first[-1]["batch_id"]))
    assert code == 0 and [b["batch_id"] for b in json.loads(out)] == [ids[0]]
    code, out, _ = batchy("batch", "wf1", str(ids[0]))
    snapshot = json.loads(out)
    assert code == 0 and set(snapshot) == {"s_extract", "s_load"} and snapshot["s_extract"]["status"] == "success"
    assert batchy("batch", "wf1", "12345")[0] == 3


def test_batches_filters_by_status_workflow_and_time(batchy, write_cfg):
    write_cfg("other", "job:\n")
    batchy("load", "wf1")
    batchy("load", "other")
    batchy("open", "wf1")
    batchy("fail", "wf1")
    batchy("open", "other")
    batchy("close", "other")
    code, out, _ = batchy("batches", "--status", "failed")
    assert code == 0 and [(b["workflow"], b["status"]) for b in json.loads(out)] == [("wf1", "failed")]
    code, out, _ = batchy("batches", "--workflow", "other", "--from", "2024-01-01", "--to", "2999-01-01")
    assert code == 0 and [b["workflow"] for b in json.loads(out)] == ["other"]
    code, out, _ = batchy("batches", "--limit", "1", "--offset", "1")
    assert code == 0 and len(json.loads(out)) == 1
    code, out, _ = batchy("batches", "--to", "2000-01-01")
    assert code == 0 and json.loads(out) == []
    assert batchy("batches", "--status", "nonsense")[0] == 2  # click checks the choice


def test_most_recent_and_events(batchy):
    batchy("load", "wf1")
    code, out, _ = batchy("most-recent", "wf1")
    assert code == 0 and json.loads(out)["most_recent"] is None
    opened = json.loads(batchy("open", "wf1")[1])
    batchy("close", "wf1", "--job", "s_extract")
    code, out, _ = batchy("most-recent", "wf1", "--job", "s_extract")
    answer = json.loads(out)
    assert code == 0 and answer["batch_id"] == opened["s_extract"]["batch_id"] and answer["job"] == "s_extract"
    assert json.loads(batchy("most-recent", "wf1")[1])["most_recent"] is None  # s_load never succeeded
    code, out, _ = batchy("events", "wf1", "--limit", "2")
    newest = json.loads(out)
    assert code == 0 and [e["action"] for e in newest] == ["close", "open"]
    code, out, _ = batchy("events", "wf1", "--before", newest[-1]["id"])
    assert code == 0 and [e["action"] for e in json.loads(out)] == ["load"]


def test_coverage_shows_what_succeeded_and_the_holes(batchy):
    batchy("load", "wf1")
    batchy("open", "wf1")
    batchy("close", "wf1")
    code, out, _ = batchy("coverage", "wf1", "--job", "s_extract", "--from", "2023-01-01")
    answer = json.loads(out)
    assert code == 0 and list(answer) == ["s_extract"]
    assert answer["s_extract"]["covered"] and answer["s_extract"]["holes"][0][0].startswith("2023-01-01")
    code, out, _ = batchy("coverage", "wf1", "--table")
    assert code == 0 and out.splitlines()[0].split() == ["JOB", "KIND", "FROM", "TO"]
    assert batchy("coverage", "wf1", "--from", "2024-02-01", "--to", "2024-01-01")[0] == 8


def test_pause_status_and_history(batchy):
    batchy("load", "wf1")
    code, out, _ = batchy("pause-status")
    assert code == 0 and json.loads(out) == {"service": None, "workflows": {}}
    batchy("pause", "wf1", "-m", "deploying")
    code, out, _ = batchy("pause-status")
    assert code == 0 and json.loads(out)["workflows"]["wf1"]["message"] == "deploying"
    batchy("resume", "wf1")
    code, out, _ = batchy("pause-history", "--limit", "5")
    assert code == 0 and [p["action"] for p in json.loads(out)] == ["resume", "pause"]


def test_list_and_remove(batchy, write_cfg):
    write_cfg("other", "job:\n")
    code, out, _ = batchy("list")
    assert code == 0 and json.loads(out) == []
    batchy("load", "wf1")
    batchy("load", "other")
    opened = json.loads(batchy("open", "other")[1])["job"]["batch_id"]
    code, out, _ = batchy("list")
    assert code == 0 and json.loads(out) == [
        {"workflow": "other", "jobs": 1, "last_batch_id": opened, "paused": False},
        {"workflow": "wf1", "jobs": 2, "last_batch_id": None, "paused": False},
    ]
    assert [w["workflow"] for w in json.loads(batchy("list", "--limit", "1", "--offset", "1")[1])] == ["wf1"]
    code, out, _ = batchy("remove", "other")
    assert code == 0 and json.loads(out) == {"workflow": "other", "removed": True, "history": "kept"}
    assert [w["workflow"] for w in json.loads(batchy("list")[1])] == ["wf1"]
    assert batchy("remove", "other")[0] == 3
    code, out, _ = batchy("remove", "wf1", "--purge-history")
    assert code == 0 and json.loads(out)["history"] == "purged"


def test_load_all_loads_every_file_and_exits_8_when_one_fails(batchy, write_cfg):
    write_cfg("other", "job:\n")
    code, out, err = batchy("load", "--all")
    assert code == 0 and sorted(json.loads(out)["loaded"]) == ["other", "wf1"] and err == ""
    write_cfg("broken", "job: [not, a, mapping]\n")
    code, out, err = batchy("load", "--all", "--reset")
    answer = json.loads(out)
    assert code == 8 and sorted(answer["loaded"]) == ["other", "wf1"] and list(answer["failed"]) == ["broken"]
    assert "broken" in err and "invalid_config" in err
    assert batchy("load")[0] == 2  # neither a workflow nor --all
    assert batchy("load", "wf1", "--all")[0] == 2


def test_quiet_prints_nothing_and_json_is_the_default_off_a_terminal(batchy):
    code, out, err = batchy("load", "wf1", "--quiet")
    assert (code, out, err) == (0, "", "")
    code, out, err = batchy("open", "wf1", "-q", "--format", "infa")
    assert (code, out, err) == (0, "", "")
    code, out, err = batchy("close", "wf1", "-q")
    assert (code, out) == (0, "")
    code, out, err = batchy("close", "wf1", "-q")  # an error still says why, on stderr
    assert code == 4 and out == "" and "not_open" in err
    assert json.loads(batchy("status", "wf1")[1]) == json.loads(batchy("status", "wf1", "--json")[1])
    code, out, _ = batchy("status", "wf1", "--table")
    assert code == 0 and out.splitlines()[0].split() == [c.upper() for c in cli_mod.STATE_COLUMNS]
    assert out.splitlines()[1].split()[:2] == ["s_extract", "success"]
    assert batchy("open", "wf1", "--format", "env", "--json")[0] == 2  # env is text, not JSON


def test_tables_on_a_terminal(service, monkeypatch):
    """Through a real pseudo-terminal: what an operator sees, without --table."""
    monkeypatch.setenv("BATCHY_URL", service.url)
    urllib.request.urlopen(service.url + "/load_cfg/wf1").close()
    master, slave = os.openpty()
    try:
        proc = subprocess.run([sys.executable, "-m", "batchy.cli", "list"], stdout=slave, stderr=subprocess.PIPE,
                              timeout=30)
        os.close(slave)
        slave = None
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the writer closed
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        if slave is not None:
            os.close(slave)
    lines = seen.decode().replace("\r\n", "\n").splitlines()
    assert proc.returncode == 0
    assert lines[0].split() == ["WORKFLOW", "JOBS", "LAST_BATCH_ID", "PAUSED"]
    assert lines[1].split() == ["wf1", "2", "-", "no"]


def test_table_formatter():
    rows = [{"a": 1, "b": None, "c": True}, {"a": "longer", "b": ["x", "y"], "c": "x" * 80}]
    assert cli_mod.table(rows, ["a", "b", "c"]).splitlines() == [
        "A       B    C",
        "1       -    yes",
        "longer  x,y  " + "x" * 57 + "...",
    ]


def test_open_with_an_idempotency_key_opens_once(batchy):
    batchy("load", "wf1")
    first = json.loads(batchy("open", "wf1", "--idempotency-key", "nightly-1")[1])
    again = json.loads(batchy("open", "wf1", "--idempotency-key", "nightly-1")[1])
    assert again["s_extract"]["batch_id"] == first["s_extract"]["batch_id"]
    assert len(json.loads(batchy("history", "wf1")[1])) == 1


# -- exit codes: one per class (docs/api.md#exit-codes) ------------------------------

def test_exit_0_ok(batchy):
    assert batchy("load", "wf1")[0] == 0


def test_exit_2_usage(batchy):
    code, _, err = batchy("history")
    assert code == 2 and "Missing argument" in err


def test_exit_3_not_found(batchy):
    batchy("load", "wf1")
    assert batchy("status", "nope")[0] == 3
    assert batchy("load", "nosuch")[0] == 3  # config_not_found
    assert batchy("close", "wf1", "--job", "nosuch")[0] == 3


def test_exit_4_conflict(batchy):
    batchy("load", "wf1")
    code, _, err = batchy("close", "wf1")
    assert code == 4 and "not_open" in err
    old = json.loads(batchy("open", "wf1")[1])["s_extract"]["batch_id"]
    batchy("open", "wf1")
    code, _, err = batchy("close", "wf1", "--batch-id", str(old))
    assert code == 4 and "stale_batch" in err


def test_exit_5_paused(batchy):
    batchy("load", "wf1")
    batchy("pause", "wf1", "-m", "deploying")
    code, _, err = batchy("open", "wf1")
    assert code == 5 and "deploying" in err and "423" in err


@pytest.mark.parametrize("argv", [["status", "wf1"], ["open", "wf1"], ["run", "wf1", "--", "touch", "ran"]])
def test_a_url_without_its_scheme_is_a_usage_error_not_an_outage(argv, monkeypatch, capsys, tmp_path):
    """BATCHY_URL=127.0.0.1:5000 was retried twice and reported as unavailable (exit 7)."""
    monkeypatch.setenv("BATCHY_URL", "127.0.0.1:5000")
    monkeypatch.chdir(tmp_path)
    assert main(argv) == EXIT_USAGE
    assert "must start with http:// or https://, not '127.0.0.1:5000'" in capsys.readouterr().err
    assert not (tmp_path / "ran").exists()  # no command ran without its window
    with pytest.raises(BadServiceURL):
        Batchy("localhost:5000")


@pytest.mark.slow  # real processes or waits: the CI run, not the everyday loop
def test_exit_6_unauthorized(redis_server, real_redis, cfg_dir, monkeypatch, capsys):
    svc = ServiceProcess(redis_server.url, str(cfg_dir), env={"BATCHY_API_TOKEN": "tok"}).start()
    try:
        monkeypatch.setenv("BATCHY_URL", svc.url)
        monkeypatch.setenv("BATCHY_API_TOKEN", "wrong")
        assert main(["load", "wf1"]) == 6
        assert "401" in capsys.readouterr().err
        monkeypatch.setenv("BATCHY_API_TOKEN", "tok")
        assert main(["load", "wf1", "-q"]) == 0
    finally:
        svc.stop()


def test_exit_7_unreachable_service_is_a_clear_message(monkeypatch, capsys):
    monkeypatch.setenv("BATCHY_URL", "http://127.0.0.1:9")
    waits = []
    monkeypatch.setattr(time, "sleep", waits.append)  # the backoff, recorded instead of slept
    assert main(["status", "wf1"]) == 7
    assert "cannot reach Batchy" in capsys.readouterr().err
    assert waits == [0.5, 1.0]  # a read is tried three times, backing off, before giving up


def test_exit_8_bad_input(batchy):
    batchy("load", "wf1")
    code, _, err = batchy("set-from-date", "wf1", "not-a-date")
    assert code == 8 and "400" in err
    assert batchy("batches", "--from", "yesterday-ish")[0] == 8


def test_set_from_date_and_rewind_tables_show_next_from_date(batchy):
    # Issue 22, item 6: the table looked unchanged, as only next_from_date changes.
    batchy("load", "wf1")
    code, out, _ = batchy("set-from-date", "wf1", "2026-11-01T00:00:00+00:00", "--job", "s_load", "--table")
    header, *rows = out.splitlines()
    assert code == 0 and header.split()[-1] == "NEXT_FROM_DATE"
    last = {line.split()[0]: line.split()[-1] for line in rows}
    assert last == {"s_extract": "-", "s_load": "2026-11-01T01:00:00+01:00"}  # s_load's zone is Europe/Paris
    batchy("open", "wf1")
    batch_id = json.loads(batchy("close", "wf1")[1])["s_load"]["batch_id"]
    code, out, _ = batchy("rewind", "wf1", str(batch_id), "--table")
    assert code == 0 and out.splitlines()[0].split()[-1] == "NEXT_FROM_DATE" and "-" not in out.split()


# The flags batchy's service commands and waitsy share (issue 22, item 5: `waitsy -q` was refused).
COMMON_FLAGS = {"-q", "--quiet", "--json", "--url", "--token"}


def service_commands(group=cli_mod.cli, prefix="batchy"):
    """Yield (name, command) for every command that talks to the service and prints its answer."""
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from service_commands(command, f"{prefix} {name}")
        elif any("--quiet" in param.opts for param in command.params):
            yield f"{prefix} {name}", command


def test_batchy_and_waitsy_share_their_common_flags():
    from waitsy.cli import build_parser

    assert COMMON_FLAGS <= set(build_parser()._option_string_actions), "waitsy lacks a common flag"
    commands = dict(service_commands())
    assert {"batchy status", "batchy open", "batchy backfill status"} <= set(commands)
    for name, command in commands.items():
        flags = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}
        assert COMMON_FLAGS <= flags, f"{name} lacks {sorted(COMMON_FLAGS - flags)}"


def test_url_token_and_q_work_alike(service, monkeypatch, capsys):
    monkeypatch.setenv("BATCHY_URL", "http://127.0.0.1:9")  # nothing listens there: --url must win
    monkeypatch.delenv("BATCHY_API_TOKEN", raising=False)
    assert main(["load", "wf1", "--url", service.url, "-q"]) == 0
    assert main(["status", "wf1", "--url", service.url, "--json"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"s_extract", "s_load"}
    assert os.environ["BATCHY_URL"] == "http://127.0.0.1:9"  # for that command only
    from waitsy.cli import main as waitsy_main

    assert waitsy_main(["-wf", "wf1", "--url", service.url, "-q", "--timeout", "0.2"]) == 1  # not run today
    assert capsys.readouterr().out == ""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            body = b'{"backfills": []}' if self.path.startswith("/backfills/") else b'{"s_a": {"status": "new"}}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert main(["status", "wf1", "--url", url, "--token", "s3cret", "-q"]) == 0
        assert main(["backfill", "list", "wf1", "--url", url, "--token", "other", "-q"]) == 0
    finally:
        server.shutdown()
    assert seen == ["Bearer s3cret", "Bearer other"] and "BATCHY_API_TOKEN" not in os.environ


@pytest.fixture
def answering():
    """A stand-in service that answers every request with one (status, code)."""
    reply = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"error": reply["code"], "message": "stand-in", "status": reply["status"]}).encode()
            self.send_response(reply["status"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def set_reply(status, code):
        reply.update(status=status, code=code)
        return f"http://127.0.0.1:{server.server_port}"

    yield set_reply
    server.shutdown()


@pytest.mark.parametrize("status, code, exit_code", [
    (500, "internal_error", 1), (405, "method_not_allowed", 1), (401, "unauthorized", 6),
    (503, "redis_unavailable", 7), (413, "request_entity_too_large", 8),
])
def test_exit_code_by_status(answering, monkeypatch, capsys, status, code, exit_code):
    monkeypatch.setenv("BATCHY_URL", answering(status, code))
    monkeypatch.setattr("batchy.client.time.sleep", lambda seconds: None)  # the 503 is retried
    assert main(["status", "wf1"]) == exit_code
    assert f"{status} {code}" in capsys.readouterr().err


# -- open --format env ---------------------------------------------------------------

def test_env_format_evals_in_bash(batchy, service, write_cfg):
    write_cfg("single", "etl.job-1:\n  from_date: 2024-05-01\n")
    batchy("load", "wf1")
    batchy("load", "single")
    done = shell(service, """
        eval "$(batchy open wf1 --format env)"
        printf '%s\\n' "$BATCHY_BATCH_ID" "$BATCHY_S_EXTRACT_FROM_DATE" "$BATCHY_S_EXTRACT_TO_DATE" \\
                       "$BATCHY_S_LOAD_FROM_DATE" "$BATCHY_S_LOAD_TO_DATE" "${BATCHY_FROM_DATE-unset}"
        eval "$(batchy open single --format env)"
        printf '%s\\n' "$BATCHY_BATCH_ID" "$BATCHY_ETL_JOB_1_FROM_DATE" "$BATCHY_FROM_DATE" "$BATCHY_TO_DATE"
    """)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    wf1 = json.loads(batchy("status", "wf1")[1])
    single = json.loads(batchy("status", "single")[1])["etl.job-1"]
    assert lines[:6] == [str(wf1["s_extract"]["batch_id"]), wf1["s_extract"]["from_date"], wf1["s_extract"]["to_date"],
                         wf1["s_load"]["from_date"], wf1["s_load"]["to_date"], "unset"]
    assert lines[6:] == [str(single["batch_id"]), "2024-05-01T00:00:00+00:00", single["from_date"], single["to_date"]]
    assert wf1["s_extract"]["status"] == "open" and single["status"] == "open"


def test_env_values_are_quoted_for_the_shell(service, tmp_path):
    hostile = "it's $(touch pwned) `x` \"y\" a b"
    text = env_lines({"j": {"batch_id": 7, "from_date": hostile, "to_date": None}})
    assert text.splitlines()[0] == "export BATCHY_BATCH_ID=7"
    done = subprocess.run(["bash", "-c", text + 'printf "%s|%s|%s" "$BATCHY_J_FROM_DATE" "$BATCHY_FROM_DATE" '
                                                '"$BATCHY_TO_DATE"'],
                          cwd=tmp_path, capture_output=True, text=True)
    assert done.stdout == f"{hostile}|{hostile}|" and not (tmp_path / "pwned").exists()


def test_env_refuses_two_jobs_with_one_name_before_opening(batchy, write_cfg):
    write_cfg("clash", "s-load:\n  from_date: 2024-01-01\ns.load:\n  from_date: 2024-01-01\n")
    batchy("load", "clash")
    code, out, err = batchy("open", "clash", "--format", "env")
    # Refused before opening, and the eval fails too (issue 21: a failed open stops `set -e`).
    assert code == 8 and out.endswith("\nfalse\n") and "BATCHY_BATCH_ID" in out
    assert "'s-load' and 's.load'" in err and "BATCHY_S_LOAD_" in err
    assert {job["status"] for job in json.loads(batchy("status", "clash")[1]).values()} == {"new"}


# -- wait: waitsy itself -------------------------------------------------------------

@pytest.mark.slow  # real processes or waits: the CI run, not the everyday loop
def test_wait_runs_waitsy_with_its_arguments_and_exit_codes(batchy, capsys):
    batchy("load", "wf1")
    assert main(["wait", "-wf", "wf1", "--timeout", "0.5", "--quiet"]) == 1  # waitsy's "timed out"
    batchy("open", "wf1")
    batchy("close", "wf1")
    assert main(["wait", "-wf", "wf1", "--timeout", "10", "--quiet"]) == 0
    assert main(["wait", "--help"]) == 0
    assert "usage: waitsy" in capsys.readouterr().out


# -- parity: every API parameter has an option ---------------------------------------

COMMAND_OF = {
    "/load_cfg/{wf}": "load", "/load_cfg": "load", "/workflows": "list", "/late": "late", "/remove_workflow/{wf}": "remove",
    "/get_status/{wf}": "status", "/open_batch/{wf}": "open", "/open_batch/{wf}/{fmt}": "open",
    "/close_batch/{wf}": "close", "/fail_batch/{wf}": "fail", "/history/{wf}": "history",
    "/batch/{wf}/{batch_id}": "batch", "/batches": "batches", "/most_recent/{wf}": "most-recent",
    "/coverage/{wf}": "coverage",
    "/events/{wf}": "events", "/set_from_date/{wf}": "set-from-date", "/rewind/{wf}": "rewind",
    "/invalidate/{wf}": "invalidate",
    "/pause": "pause", "/pause/{wf}": "pause", "/resume": "resume", "/resume/{wf}": "resume",
    "/pause_status": "pause-status", "/pause_history": "pause-history", "/wait/{wf}": "wait",
    "/backfill/{wf}": "backfill create", "/backfills/{wf}": "backfill list", "/backfill/{wf}/{backfill_id}":
    "backfill status", "/backfill/{wf}/{backfill_id}/lease": "backfill lease",
    "/backfill/{wf}/{backfill_id}/close": "backfill close", "/backfill/{wf}/{backfill_id}/fail": "backfill fail",
    "/backfill/{wf}/{backfill_id}/cancel": "backfill cancel", "/backfill/{wf}/{backfill_id}/renew": "backfill renew",
}
# Endpoints for machines and browsers, not for a shell script: no command.
NOT_COMMANDS = {"/healthz", "/readyz", "/", "/dashboard", "/coverage/{wf}/view", "/metrics", "/openapi.json"}
OPTION_OF = {"fmt": "--format", "Idempotency-Key": "--idempotency-key"}


@pytest.mark.parametrize("path", sorted(spec()["paths"]))
def test_every_api_parameter_is_an_option(path):
    if path in NOT_COMMANDS:
        return
    assert path in COMMAND_OF, f"{path} has no batchy command: add one, or list it in NOT_COMMANDS"
    command = cli_mod.cli
    for name in COMMAND_OF[path].split():  # "backfill create": a group's subcommand
        command = command.commands[name]
    if command.name == "wait":
        return  # waitsy's own arguments (docs/waitsy.md)
    arguments = {p.name for p in command.params if p.param_type_name == "argument"}
    options = {opt for p in command.params for opt in p.opts if opt.startswith("--")}
    for operation in spec()["paths"][path].values():
        for param in operation.get("parameters", []):
            name = param["name"]
            flag = OPTION_OF.get(name, "--" + name.replace("_", "-"))
            assert name in arguments or flag in options, f"batchy {command.name}: no {flag} for {path}'s {name}"


@pytest.mark.parametrize("environ, says", [
    ({"REDIS_URL": "redis://:s3cret@db.example:6380/2"},
     "batchy: state in Redis at redis://***@db.example:6380/2 (from REDIS_URL: BATCHY_REDIS_URL is not set)"),
    ({"BATCHY_REDIS_URL": "redis+sentinel://:pw@h1:26379,h2:26379/mymaster/0"},
     "batchy: state in Redis at redis+sentinel://***@h1:26379,h2:26379/mymaster/0\n"),
])
def test_serve_says_which_redis_holds_the_state(environ, says, capsys):
    """A REDIS_URL set for another program picked the store without a word (a newcomer's surprise)."""
    from batchy import settings
    from batchy.cli.serve import _announce_store

    _announce_store(settings.load(environ), environ)
    err = capsys.readouterr().err
    assert says in err and "s3cret" not in err and ":pw@" not in err, err


@pytest.mark.slow  # a real batchy serve
def test_serve_on_a_port_another_process_listens_on_says_so_at_once(cfg_dir):
    """It retried for 5 s, then said only "Can't connect to ('127.0.0.1', 5000)"."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHY_")}
        began = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "batchy.cli", "serve", "--port", str(port)], env={
            **env, "BATCHY_CFG_DIR": str(cfg_dir)}, capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and time.monotonic() - began < 4, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "--port" in done.stderr, done.stderr


@pytest.mark.slow  # real processes or waits: the CI run, not the everyday loop
def test_embedded_serve_preloads_cfg_and_warns(cfg_dir):
    svc = ServiceProcess("", str(cfg_dir), workers=3).start()
    try:
        with urllib.request.urlopen(svc.url + "/open_batch/wf1") as resp:
            assert json.loads(resp.read())["s_extract"]["status"] == "open"
        log = svc.log()
        assert "EMBEDDED IN-MEMORY" in log and "loaded at start" in log
        assert log.count("Booting worker") == 1  # one process holds the embedded store
    finally:
        svc.stop()


def listening_address(port: int) -> str | None:
    """Return the IPv4 address a socket listens on at port (Linux' /proc/net/tcp), None if none does."""
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if int(hex_port, 16) == port and state == "0A":  # 0A: LISTEN
                return socket.inet_ntoa(bytes.fromhex(address)[::-1])
    return None


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux' socket table")
@pytest.mark.slow  # a real batchy serve each
@pytest.mark.parametrize("env, address, says", [
    ({}, "127.0.0.1", "this host only (no BATCHY_API_TOKEN is set); --host 0.0.0.0 listens on every interface"),
    ({"BATCHY_API_TOKEN": "s3cret"}, "0.0.0.0", "changes need a write token"),
])
def test_serve_listens_on_every_interface_only_with_a_token(cfg_dir, env, address, says):
    # Issue 22, item 8: the embedded store listened on 0.0.0.0 without a token or a word.
    svc = ServiceProcess("", str(cfg_dir), workers=1, host=None, env=env).start()
    try:
        assert listening_address(svc.port) == address
        assert f"listening on {address}:{svc.port}" in svc.log() and says in svc.log()
    finally:
        svc.stop()


@pytest.mark.slow  # a real batchy serve
def test_serve_warns_when_told_to_listen_everywhere_without_a_token(cfg_dir):
    svc = ServiceProcess("", str(cfg_dir), workers=1, host="0.0.0.0").start()
    try:
        assert listening_address(svc.port) == "0.0.0.0"
        assert f"WARNING: listening on 0.0.0.0:{svc.port} without a write token" in svc.log()
    finally:
        svc.stop()


def test_export_and_import_between_redis_servers(batchy, redis_server, monkeypatch, tmp_path, capsys):
    from batchy.testing import RedisServer

    batchy("load", "wf1")
    batchy("open", "wf1")
    batchy("close", "wf1")
    monkeypatch.setenv("BATCHY_REDIS_URL", redis_server.url)
    dump = tmp_path / "backup.json"
    assert main(["export", "-o", str(dump)]) == 0
    doc = json.loads(dump.read_text())
    assert list(doc["workflows"]) == ["wf1"] and len(doc["workflows"]["wf1"]["batches"]) == 1
    other = RedisServer().start()
    try:
        monkeypatch.setenv("BATCHY_REDIS_URL", other.url)
        assert main(["import", str(dump)]) == 0
        assert main(["import", str(dump)]) == 1  # exists: needs --replace
        assert "replace" in capsys.readouterr().err
        assert main(["import", "--replace", str(dump)]) == 0
        copied = other.client().hgetall("wf1")
        assert copied == redis_server.client().hgetall("wf1")
    finally:
        other.cleanup()


def test_module_entry_points_run():
    out = subprocess.run([sys.executable, "-m", "batchy.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "serve" in out.stdout and "Exit codes" in out.stdout
