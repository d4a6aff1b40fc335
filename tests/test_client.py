"""batchy.client against a live service: the Jobs API loop and the batch context manager."""
import pytest

from batchy.client import Batchy, ServiceError
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


def test_errors_carry_the_service_error(api):
    with pytest.raises(ServiceError) as err:
        api.close("wf1")
    assert err.value.status == 409 and err.value.code == "not_open"
    with pytest.raises(ServiceError) as err:
        api.status("nope")
    assert err.value.status == 404


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
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = Batchy(f"http://127.0.0.1:{server.server_port}", token="")
        assert client.open("wf") == {"a": {"batch_id": 7}}
        assert len(seen) == 2 and seen[0] and seen[0] == seen[1]
        client.open("wf")
        assert seen[2] != seen[0]  # a new call, a new key
    finally:
        server.shutdown()
