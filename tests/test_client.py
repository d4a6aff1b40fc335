"""batchy.client against a live service: the Jobs API loop and the batch context manager."""
import json
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from batchy.client import Batchy, ServiceError, Window
from batchy.testing import ServiceProcess


@pytest.fixture
def api(service):
    client = Batchy(service.url, token="")
    client.load("wf1")
    return client


def test_jobs_api_loop(api):
    assert api.most_recent("wf1") is None
    jobs = api.open("wf1")
    assert jobs["s_extract"]["status"] == "open"
    assert api.most_recent("wf1") is None  # in progress does not count
    done = api.close("wf1", records_processed=503)
    assert done["s_extract"]["records_processed"] == 503
    first = api.most_recent("wf1", job="s_extract")
    assert first == jobs["s_extract"]["batch_id"] or abs(first - jobs["s_extract"]["batch_id"]) <= 1
    api.open("wf1")
    api.fail("wf1", message="A database error occured.")
    assert api.most_recent("wf1", job="s_extract") == first  # a failure keeps the last success
    history = api.history("wf1")
    assert [b["status"] for b in history] == ["failed", "success"]
    assert api.open("wf1", fmt="infa").startswith("[s_extract]\n")


def test_batch_context_manager_closes_on_success(api, write_cfg):
    write_cfg("single", "etl_job:\n  from_date: 2024-05-01\n")
    api.load("single")
    with api.batch("single") as batch:
        assert batch.from_date.isoformat() == "2024-05-01T00:00:00+00:00"
        assert batch.to_date > batch.from_date
        batch.records_processed = 42
    state = api.status("single")["etl_job"]
    assert state["status"] == "success" and state["records_processed"] == 42


def test_batch_context_manager_fails_with_the_message_and_reraises(api, write_cfg):
    write_cfg("single", "etl_job:\n")
    api.load("single")
    with pytest.raises(ZeroDivisionError):
        with api.batch("single"):
            1 / 0
    state = api.status("single")["etl_job"]
    assert state["status"] == "failed" and "ZeroDivisionError" in state["message"]
    with api.batch("single") as again:  # the failed window is handed out again
        assert again.params["from_date"] == state["from_date"]


def test_batch_per_step_of_an_open_workflow(api):
    api.open("wf1")
    with api.batch("wf1", job="s_load", open=False) as step:
        step.records_processed = 7
    state = api.status("wf1")
    assert state["s_load"]["status"] == "success" and state["s_extract"]["status"] == "open"
    with pytest.raises(ValueError):
        with api.batch("wf1", open=False) as both:
            both.params  # two jobs: ambiguous


def test_the_window_is_datetimes_and_the_jobs_stay_json(api):
    with api.batch("wf1") as batch:
        for job in ("s_extract", "s_load"):
            window = batch.window(job)
            assert isinstance(window, Window) and all(isinstance(t, datetime) and t.tzinfo for t in window)
            assert window == (datetime.fromisoformat(batch.jobs[job]["from_date"]),
                              datetime.fromisoformat(batch.jobs[job]["to_date"]))
        assert batch.window("s_load").from_date.utcoffset().total_seconds() in (3600, 7200)  # Europe/Paris
        # Issue 22, item 10: the job's zone itself, not a fixed offset, so local arithmetic follows DST.
        assert all(t.tzinfo == ZoneInfo("Europe/Paris") for t in batch.window("s_load"))
        assert all(t.tzinfo == ZoneInfo("UTC") for t in batch.window("s_extract"))
        assert batch.window("s_load").from_date.isoformat() == batch.jobs["s_load"]["from_date"]
        assert json.loads(json.dumps(batch.jobs)) == batch.jobs  # the service's answer, as it came
        with pytest.raises(ValueError):
            batch.window()  # two jobs: which one?
        with pytest.raises(ServiceError):
            batch.window("nosuch")
    with api.batch("wf1", job="s_extract") as step:
        assert step.window() == step.window("s_extract") == (step.from_date, step.to_date)
        from_date, to_date = step.window()
        assert to_date > from_date


def test_per_job_records_close_each_job_with_its_own_count(api, service):
    with api.batch("wf1") as batch:
        batch.records_processed = {"s_load": 10, "s_extract": 5}
    state = api.status("wf1")
    assert {job: (s["status"], s["records_processed"]) for job, s in state.items()} == {
        "s_extract": ("success", 5), "s_load": ("success", 10)}
    closes = [e for e in api.events("wf1", limit=3) if e["action"] == "close"]
    assert sorted(e["jobs"][0] for e in closes) == ["s_extract", "s_load"]
    assert {e["batch_id"] for e in closes} == {str(batch.batch_id)}  # each close names the batch
    assert api.history("wf1", limit=1)[0]["records_processed"] == 15


def test_per_job_records_leave_no_job_open_and_fail_each_job(api):
    with api.batch("wf1") as batch:
        batch.records_processed = {"s_load": 3}  # s_extract: closed too, without a count
    state = api.status("wf1")
    assert (state["s_load"]["records_processed"], state["s_extract"]["records_processed"]) == (3, None)
    assert {s["status"] for s in state.values()} == {"success"}
    with pytest.raises(RuntimeError):
        with api.batch("wf1") as batch:
            batch.records_processed = {"s_load": 1, "s_extract": 2}
            raise RuntimeError("load died")
    state = api.status("wf1")
    assert {job: (s["status"], s["records_processed"]) for job, s in state.items()} == {
        "s_extract": ("failed", 2), "s_load": ("failed", 1)}
    assert "load died" in state["s_load"]["message"]


def test_per_job_records_name_jobs_of_the_batch_only(api):
    with pytest.raises(ValueError, match="nosuch"):
        with api.batch("wf1") as batch:
            batch.records_processed = {"nosuch": 1}
    assert {s["status"] for s in api.status("wf1").values()} == {"failed"}  # the ETL's error failed it


def test_an_int_keeps_the_one_whole_workflow_close(api):
    with api.batch("wf1") as batch:
        batch.records_processed = 7
    assert {(s["status"], s["records_processed"]) for s in api.status("wf1").values()} == {("success", 7)}
    assert [e["action"] for e in api.events("wf1", limit=2)] == ["close", "open"]  # one close


def test_the_batch_close_names_its_batch_id(api):
    """A run overtaken by a newer one cannot close the newer one's window."""
    with pytest.raises(ServiceError) as err:
        with api.batch("wf1"):
            api.open("wf1")  # another run opens meanwhile
    assert err.value.code == "stale_batch"
    assert {s["status"] for s in api.status("wf1").values()} == {"open"}  # the newer batch is untouched


def test_reads_and_admin_calls(api, write_cfg):
    write_cfg("other", "job:\n")
    write_cfg("broken", "job: [1]\n")
    done = api.load_all()
    assert sorted(done["loaded"]) == ["other", "wf1"] and list(done["failed"]) == ["broken"]
    opened = api.open("wf1", idempotency_key="run-1")
    assert api.open("wf1", idempotency_key="run-1") == opened
    batch_id = opened["s_extract"]["batch_id"]
    api.close("wf1")
    assert [w["workflow"] for w in api.workflows()] == ["other", "wf1"]
    assert api.workflows()[1]["last_batch_id"] == batch_id
    assert api.workflows(page_size=1) == api.workflows()  # one a page: it follows next_offset
    assert api.snapshot("wf1", batch_id)["s_extract"]["status"] == "success"
    assert [b["batch_id"] for b in api.batches(workflow="wf1", start=datetime(2024, 1, 1).astimezone())] == [batch_id]
    assert api.batches(status="failed") == []
    full = api.most_recent("wf1", full=True)
    assert full["batch_id"] == batch_id and full["timestamp"] == api.most_recent("wf1")
    newest = api.events("wf1", limit=1)
    assert [e["action"] for e in api.events("wf1", before=newest[0]["id"])][:1] == ["open"]
    api.pause("other", message="why")
    assert api.pause_status()["workflows"]["other"]["message"] == "why"
    assert api.pause_history(limit=1)[0]["action"] == "pause"
    assert api.remove("other", purge_history=True) == {"workflow": "other", "removed": True, "history": "purged"}
    assert [w["workflow"] for w in api.workflows()] == ["wf1"]


def test_errors_carry_the_service_error(api):
    with pytest.raises(ServiceError) as err:
        api.close("wf1")
    assert err.value.status == 409 and err.value.code == "not_open"
    with pytest.raises(ServiceError) as err:
        api.status("nope")
    assert err.value.status == 404


@pytest.mark.slow  # real processes or waits: the CI run, not the everyday loop
def test_token_is_sent(redis_server, real_redis, cfg_dir):
    svc = ServiceProcess(redis_server.url, str(cfg_dir), env={"BATCHY_API_TOKEN": "tok"}).start()
    try:
        with pytest.raises(ServiceError) as err:
            Batchy(svc.url, token="").load("wf1")
        assert err.value.status == 401
        assert "s_extract" in Batchy(svc.url, token="tok").load("wf1")
    finally:
        svc.stop()


def test_an_open_is_retried_with_one_idempotency_key():
    """A 503 (or a lost answer) is retried; every attempt carries the same key, so the
    service answers the batch the first attempt opened instead of opening a second."""
    import http.server
    import threading

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(self.headers.get("Idempotency-Key"))
            status, body = (503, b'{"error": "redis_unavailable", "message": "x", "status": 503}') \
                if len(seen) == 1 else (200, b'{"a": {"batch_id": 7}}')
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        client = Batchy(f"http://127.0.0.1:{server.server_port}", token="")
        assert client.open("wf") == {"a": {"batch_id": 7}}
        assert len(seen) == 2 and seen[0] and seen[0] == seen[1]
        client.open("wf")
        assert seen[2] != seen[0]  # a new call, a new key
    finally:
        server.shutdown()


def test_a_call_not_safe_to_repeat_fails_at_once_with_the_connection_error(monkeypatch):
    """It used to sleep, then raise AssertionError("unreachable") instead of the error."""
    import time

    waits = []
    monkeypatch.setattr(time, "sleep", waits.append)
    client = Batchy("http://127.0.0.1:9", token="")
    with pytest.raises(OSError):
        client.request("POST", "/load_cfg/wf", retry=False)
    assert waits == []
    with pytest.raises(OSError):
        client.request("GET", "/get_status/wf", retry=True)
    assert waits == [0.5, 1.0]
