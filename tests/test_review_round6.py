"""What an independent review of round 6 found, each a test that failed before its fix."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from batchy.cli.output import env_lines
from batchy.cli.run import base_env, run_batches
from batchy.client import Batchy, ServiceError
from batchy.errors import InvalidParameter
from batchy.web.db import services_of


def open_(client, wf, *jobs, **params):
    return client.post(f"/open_batch/{wf}", query_string={"job": list(jobs), **params})


def two_batches(client, store):
    client.post("/load_cfg/wf1")
    b0 = client.post("/open_batch/wf1").json["s_extract"]["batch_id"]
    client.post(f"/close_batch/wf1?batch_id={b0}")
    b1 = client.post("/open_batch/wf1").json["s_extract"]["batch_id"]
    backup = json.loads(json.dumps(store.export(["wf1"])))
    assert client.post(f"/close_batch/wf1?batch_id={b1}&records_processed=777").status_code == 200
    return b1, backup


def test_a_restore_then_an_open_keeps_a_success_recorded_after_the_export(real_client, real_app):
    client, store = real_client, services_of(real_app).store
    b1, backup = two_batches(client, store)
    assert store.import_(backup, replace=True) == ["wf1"]
    # The jobs ended B1 here since the export: they come back failed (B1's window reruns), not open.
    assert {j["status"] for j in client.get("/get_status/wf1").json.values()} == {"failed"}
    assert client.post("/open_batch/wf1").status_code == 200
    snapshot = client.get(f"/batch/wf1/{b1}").json
    assert {(j["status"], j["records_processed"]) for j in snapshot.values()} == {("success", 777)}


def test_a_retried_close_after_a_restore_never_rewrites_the_success(real_client, real_app):
    client, store = real_client, services_of(real_app).store
    b1, backup = two_batches(client, store)
    store.import_(backup, replace=True)
    client.post(f"/close_batch/wf1?batch_id={b1}&records_processed=5")  # the runner's retried close
    assert {j["records_processed"] for j in client.get(f"/batch/wf1/{b1}").json.values()} == {777}


@pytest.mark.parametrize("field, value", [("count:close", "99999999999999999999"), ("last_batch_id", str(2**53 + 5))])
def test_an_import_refuses_numbers_no_caller_could_name_again(real_client, real_app, real_redis, field, value):
    client, store = real_client, services_of(real_app).store
    client.post("/load_cfg/wf1")
    doc = json.loads(json.dumps(store.export(["wf1"])))
    doc["workflows"]["wf1"]["meta"][field] = value
    before = real_redis.hgetall("batchy:wf:wf1")
    with pytest.raises(InvalidParameter, match=field):
        store.import_(doc, replace=True)
    assert real_redis.hgetall("batchy:wf:wf1") == before  # nothing written


@pytest.mark.slow  # real processes or waits: the CI run, not the everyday loop
def test_an_exclusive_lease_is_each_jobs_own(client, write_cfg):
    write_cfg("tables", ".batchy:\n  exclusive: true\n  lease_hours: 0.0006\n"  # about 2 s
                        "a:\n  from_date: 2024-01-01\nb:\n  from_date: 2024-01-01\n")
    client.post("/load_cfg/tables")
    assert open_(client, "tables", "a").status_code == 200
    time.sleep(2.5)  # a's lease ran out
    assert open_(client, "tables", "b").status_code == 200  # b's runs
    assert open_(client, "tables", "b").status_code == 409
    whole = open_(client, "tables")
    assert whole.status_code == 409 and whole.json["error"] == "batch_open"  # b would run twice


def test_a_retried_whole_open_is_stale_once_a_job_of_it_was_opened_again(client, write_cfg):
    write_cfg("tables", "a:\n  from_date: 2024-01-01\nb:\n  from_date: 2024-01-01\n")
    client.post("/load_cfg/tables")
    key = {"Idempotency-Key": "run-1"}
    b1 = client.post("/open_batch/tables", headers=key).json["a"]["batch_id"]
    open_(client, "tables", "a")  # a's own runner opens a again
    retry = client.post("/open_batch/tables", headers=key)
    assert retry.status_code == 409 and retry.json["error"] == "stale_batch" and retry.json["batch_id"] == b1


def test_an_empty_job_list_opens_nothing(client, write_cfg):
    write_cfg("tables", "a:\n  from_date: 2024-01-01\n")
    client.post("/load_cfg/tables")
    resp = client.post("/open_batch/tables", json={"job": []})
    assert resp.status_code == 400 and resp.json["error"] == "invalid_parameter"
    assert [e for e in client.get("/events/tables").json["events"] if e["action"] == "open"] == []


def test_one_count_for_jobs_in_several_batches_is_refused(client, write_cfg):
    write_cfg("tables", "a:\n  from_date: 2024-01-01\nb:\n  from_date: 2024-01-01\n")
    client.post("/load_cfg/tables")
    open_(client, "tables", "a")
    open_(client, "tables", "b")
    resp = client.post("/close_batch/tables?records_processed=1000")
    assert resp.status_code == 400 and "records_processed" in resp.json["message"]
    assert client.post("/close_batch/tables").status_code == 200  # without a count: both end


@pytest.mark.slow  # real processes or waits: the CI run, not the everyday loop
def test_eval_of_open_format_env_fails_when_job_names_clash(service, write_cfg):
    write_cfg("clash", "t-x:\n  from_date: 2024-01-01\nt_x:\n  from_date: 2024-01-01\n")
    Batchy(service.url).load("clash")
    script = ('set -e; export BATCHY_BATCH_ID=OLD; '
              f'eval "$({sys.executable} -m batchy.cli open clash --format env)"; echo "carried on"')
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True,
                         env={**os.environ, "BATCHY_URL": service.url}, timeout=60)
    assert out.returncode != 0 and "carried on" not in out.stdout


def test_batchy_run_retries_a_close_answered_busy(capsys):
    class Busy:
        closes = 0

        def open(self, wf, idempotency_key=None, job=None):
            return {"a": {"batch_id": 7, "from_date": "2024-01-01T00:00:00+00:00",
                          "to_date": "2024-01-02T00:00:00+00:00"}}

        def close(self, wf, **kw):
            Busy.closes += 1
            if Busy.closes == 1:
                raise ServiceError(409, "busy", "workflow 'w' is changing too fast to update; retry")
            return {}

        fail = close

    assert run_batches(Busy(), "w", ["true"], outage_seconds=5) == 0 and Busy.closes == 2


def test_parameters_of_an_enclosing_run_or_eval_are_not_passed_on(monkeypatch):
    lines = env_lines({"j": {"batch_id": 7, "from_date": "x", "to_date": "y", "src_table": "outer"}})
    assert "BATCHY_SRC_TABLE=outer" in lines and "BATCHY_RUN_PARAMS=" in lines
    exported = dict(line[len("export "):].split("=", 1) for line in lines.splitlines() if line.startswith("export "))
    for name, value in exported.items():
        monkeypatch.setenv(name, value.strip("'"))
    env = base_env()
    assert "BATCHY_SRC_TABLE" not in env and "BATCHY_J_SRC_TABLE" not in env and "BATCHY_RUN_PARAMS" not in env
