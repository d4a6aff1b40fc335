"""batchy.client against a live service: the Jobs API loop and the batch context manager."""
import pytest

from batchy.client import Batchy, BatchyError

from .servers import ServiceProcess


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
    with pytest.raises(BatchyError) as err:
        api.close("wf1")
    assert err.value.status == 409 and err.value.code == "not_open"
    with pytest.raises(BatchyError) as err:
        api.status("nope")
    assert err.value.status == 404


def test_token_is_sent(redis_server, real_redis, cfg_dir):
    svc = ServiceProcess(redis_server.url, str(cfg_dir), env={"BATCHY_API_TOKEN": "tok"}).start()
    try:
        with pytest.raises(BatchyError) as err:
            Batchy(svc.url, token="").load("wf1")
        assert err.value.status == 401
        assert "s_extract" in Batchy(svc.url, token="tok").load("wf1")
    finally:
        svc.stop()
