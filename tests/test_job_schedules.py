"""Jobs on their own schedule: one task per table, each opening, closing and failing its own batch."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request

import pytest

from batchy.client import Batchy

EIGHT = "".join(f"t_{i}:\n  from_date: 2024-01-01\n  src_table: table_{i}\n" for i in range(8))


def open_(client, wf, *jobs, **params):
    resp = client.post(f"/open_batch/{wf}", query_string={"job": list(jobs), **params})
    assert resp.status_code == 200, resp.json
    return resp.json


def test_open_with_job_opens_that_job_only(client, write_cfg):
    write_cfg("tables", "t_customers:\n  from_date: 2024-01-01\nt_orders:\n  from_date: 2024-01-01\n")
    client.post("/load_cfg/tables")
    customers = open_(client, "tables", "t_customers")
    assert customers["t_customers"]["status"] == "open" and customers["t_orders"]["status"] == "new"
    b1 = customers["t_customers"]["batch_id"]
    orders = open_(client, "tables", "t_orders")
    b2 = orders["t_orders"]["batch_id"]
    assert b2 > b1 and orders["t_customers"]["batch_id"] == b1  # left as it was: still open in its batch
    assert orders["t_customers"]["status"] == "open"
    # Each ends exactly its own batch, in either order.
    assert client.post(f"/close_batch/tables?job=t_orders&batch_id={b2}").status_code == 200
    assert client.post(f"/close_batch/tables?job=t_customers&batch_id={b1}&records_processed=5").status_code == 200
    state = client.get("/get_status/tables").json
    assert {name: job["status"] for name, job in state.items()} == {"t_customers": "success", "t_orders": "success"}
    # Each batch's snapshot holds the job it opened; history lists both as successes.
    assert list(client.get(f"/batch/tables/{b1}").json) == ["t_customers"]
    assert list(client.get(f"/batch/tables/{b2}").json) == ["t_orders"]
    statuses = {e["batch_id"]: e["status"] for e in client.get("/history/tables").json["batches"]}
    assert statuses == {b1: "success", b2: "success"}
    events = client.get("/events/tables").json["events"]
    opens = [(e["batch_id"], e["jobs"]) for e in events if e["action"] == "open"]
    assert sorted(opens) == [(str(b1), ["t_customers"]), (str(b2), ["t_orders"])]


def test_a_batch_id_names_the_batch_a_job_runs_in(client, write_cfg):
    write_cfg("tables", "a:\n  from_date: 2024-01-01\nb:\n  from_date: 2024-01-01\n")
    client.post("/load_cfg/tables")
    b1 = open_(client, "tables", "a")["a"]["batch_id"]
    b2 = open_(client, "tables", "b")["b"]["batch_id"]
    wrong = client.post(f"/close_batch/tables?job=a&batch_id={b2}")
    assert wrong.status_code == 409 and wrong.json["error"] == "stale_batch"
    # A whole-workflow close with a batch id ends the jobs of that batch only.
    assert client.post(f"/fail_batch/tables?batch_id={b1}&message=source%20down").status_code == 200
    state = client.get("/get_status/tables").json
    assert (state["a"]["status"], state["b"]["status"]) == ("failed", "open")
    again = client.post(f"/fail_batch/tables?batch_id={b1}&message=source%20down")  # a retry: answered, no change
    assert again.status_code == 200 and again.json["a"]["status"] == "failed"
    # Reopened, the failed job gets the same window again: nothing skipped.
    reopened = open_(client, "tables", "a")["a"]
    assert reopened["from_date"] == state["a"]["from_date"] and reopened["batch_id"] > b2


def test_the_same_job_opened_twice_abandons_only_its_own_older_batch(client, write_cfg):
    write_cfg("tables", "a:\n  from_date: 2024-01-01\nb:\n  from_date: 2024-01-01\n")
    client.post("/load_cfg/tables")
    first = open_(client, "tables", "a", "b")
    b1 = first["a"]["batch_id"]
    second = open_(client, "tables", "a")
    assert second["b"]["batch_id"] == b1 and second["b"]["status"] == "open"
    snapshot = client.get(f"/batch/tables/{b1}").json
    assert (snapshot["a"]["status"], snapshot["b"]["status"]) == ("abandoned", "open")
    assert second["a"]["from_date"] == first["a"]["from_date"]  # its window is rerun


def test_exclusive_leases_are_per_job(client, write_cfg):
    write_cfg("tables", ".batchy:\n  exclusive: true\na:\n  from_date: 2024-01-01\nb:\n  from_date: 2024-01-01\n")
    client.post("/load_cfg/tables")
    open_(client, "tables", "a")
    open_(client, "tables", "b")  # another job: may run at the same time
    again = client.post("/open_batch/tables?job=a")
    assert again.status_code == 409 and again.json["error"] == "batch_open"
    whole = client.post("/open_batch/tables")
    assert whole.status_code == 409 and whole.json["error"] == "batch_open"


def test_an_idempotency_key_is_one_open_of_one_set_of_jobs(client, write_cfg):
    write_cfg("tables", "a:\n  from_date: 2024-01-01\nb:\n  from_date: 2024-01-01\n")
    client.post("/load_cfg/tables")
    key = {"Idempotency-Key": "nightly-2024-03-01"}
    first = client.post("/open_batch/tables?job=a", headers=key).json["a"]["batch_id"]
    other = client.post("/open_batch/tables?job=b", headers=key).json["b"]["batch_id"]
    assert other > first  # the same key naming another job is another open
    retry = client.post("/open_batch/tables?job=a", headers=key).json
    assert retry["a"]["batch_id"] == first and retry["b"]["batch_id"] == other  # answered, nothing opened


def test_an_unknown_job_opens_nothing(client, write_cfg):
    write_cfg("tables", "a:\n  from_date: 2024-01-01\n")
    client.post("/load_cfg/tables")
    resp = client.post("/open_batch/tables?job=a&job=nope")
    assert resp.status_code == 404 and resp.json["error"] == "job_not_found"
    assert client.get("/get_status/tables").json["a"]["status"] == "new"


def test_wait_is_ready_when_every_job_succeeded_in_its_own_batch(client, write_cfg):
    write_cfg("tables", "a:\n  from_date: 2024-01-01\nb:\n  from_date: 2024-01-01\n")
    client.post("/load_cfg/tables")
    open_(client, "tables", "a")
    open_(client, "tables", "b")
    client.post("/close_batch/tables?job=a")
    assert client.get("/wait/tables?timeout=0").json["state"] == "waiting"
    client.post("/close_batch/tables?job=b")
    assert client.get("/wait/tables?timeout=0").json["state"] == "ready"


def test_batchy_open_job_format_env_exports_that_job(service, write_cfg, tmp_path):
    write_cfg("tables", "a:\n  from_date: 2024-01-01\n  src_table: A\nb:\n  from_date: 2024-01-01\n")
    Batchy(service.url).load("tables")
    env = {**os.environ, "BATCHY_URL": service.url}
    out = subprocess.run([sys.executable, "-m", "batchy.cli", "open", "tables", "--job", "a", "--format", "env"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "BATCHY_SRC_TABLE=A" in out.stdout and "BATCHY_B_" not in out.stdout
    assert Batchy(service.url).status("tables")["b"]["status"] == "new"


@pytest.mark.slow  # eight real `batchy run` processes
def test_eight_tables_each_on_its_own_schedule(service, write_cfg, tmp_path):
    """The acceptance of issue 22: 8 concurrent `batchy run WF --job t_i` (some failing, some slow)
    each end with their own outcome, no 409, no job left open, and the next runs get the right windows."""
    write_cfg("tables", EIGHT)
    client = Batchy(service.url)
    client.load("tables")
    env = {**os.environ, "BATCHY_URL": service.url}
    script = ('sleep "$1"; [ "$BATCHY_SRC_TABLE" = "table_$2" ] || exit 90; '
              'echo "$2 $BATCHY_FROM_DATE $BATCHY_TO_DATE" > "out_$2"; exit "$3"')
    runs = {}
    for i in range(8):
        slow, code = (1.5 if i % 3 == 0 else 0.1), (3 if i % 4 == 1 else 0)
        runs[i] = subprocess.Popen(
            [sys.executable, "-m", "batchy.cli", "run", "tables", "--job", f"t_{i}", "--",
             "sh", "-c", script, "sh", str(slow), str(i), str(code)],
            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {i: (proc.wait(timeout=120), proc.stderr.read()) for i, proc in runs.items()}
    for i, (code, err) in results.items():
        assert code == (3 if i % 4 == 1 else 0), f"t_{i}: exit {code}: {err}"
        # A conflict prints as "409 <code>: <message>" (client.ServiceError); a bare "409" can be
        # part of a batch id or a time.
        assert not re.search(r"\b409 [a-z_]+:", err) and "stale_batch" not in err, err
    state = client.status("tables")
    for i in range(8):
        job = state[f"t_{i}"]
        assert job["status"] == ("failed" if i % 4 == 1 else "success"), (i, job)
        written = (tmp_path / f"out_{i}").read_text().split()
        assert written[1:] == [job["from_date"], job["to_date"]]  # each ran with its own window
    ids = {state[f"t_{i}"]["batch_id"] for i in range(8)}
    assert len(ids) == 8  # eight batches, one per job
    # The next runs: a success moves on from its to_date, a failure reruns the same window.
    with urllib.request.urlopen(urllib.request.Request(f"{service.url}/open_batch/tables?job=t_0&job=t_1",
                                                       method="POST")) as resp:
        reopened = json.loads(resp.read())
    assert reopened["t_0"]["from_date"] == state["t_0"]["to_date"]
    assert reopened["t_1"]["from_date"] == state["t_1"]["from_date"]
    coverage = client.coverage("tables")
    assert all(coverage[f"t_{i}"]["covered"] for i in range(8) if i % 4 != 1)
