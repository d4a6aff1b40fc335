"""GET /metrics: Prometheus text computed from Redis at scrape time."""
from __future__ import annotations

import urllib.request
from datetime import datetime, timedelta

import fakeredis
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families


from .conftest import make_app
from batchy.web.db import services_of


def samples(text: str) -> dict[tuple, float]:
    """Return {(sample name, ((label, value), ...)): value} for a scrape's text."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def scrape(client) -> dict[tuple, float]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    return samples(response.data.decode())


def wf(name):
    return (("workflow", name),)


def job(name, job_name):
    return (("job", job_name), ("workflow", name))


def test_counters_status_and_last_success_after_open_close_fail(client, write_cfg):
    write_cfg("wf2", "a_job: {}\nb_job: {}\n")
    client.post("/load_cfg/wf1")
    client.post("/load_cfg/wf2")
    client.post("/open_batch/wf1")
    client.post("/close_batch/wf1", json={"records_processed": 7})
    closed = client.get("/get_status/wf1").json  # batch_end of the successful batch
    client.post("/open_batch/wf1")
    for _ in range(2):
        client.post("/open_batch/wf2")
        client.post("/fail_batch/wf2", json={"message": "boom"})
    client.post("/open_batch/wf1", query_string={"dry_run": "true"})  # changes nothing, counts nothing

    got = scrape(client)

    assert got[("batchy_redis_up", ())] == 1
    assert got[("batchy_workflows", ())] == 2
    assert got[("batchy_batches_opened_total", wf("wf1"))] == 2
    assert got[("batchy_batches_closed_total", wf("wf1"))] == 1
    assert got[("batchy_batches_failed_total", wf("wf1"))] == 0
    assert got[("batchy_batches_opened_total", wf("wf2"))] == 2
    assert got[("batchy_batches_closed_total", wf("wf2"))] == 0
    assert got[("batchy_batches_failed_total", wf("wf2"))] == 2
    assert got[("batchy_actions_total", (("action", "load"), ("workflow", "wf1")))] == 1
    for name in ("s_extract", "s_load"):
        expected = datetime.fromisoformat(closed[name]["batch_end"]).timestamp()
        assert got[("batchy_last_success_timestamp_seconds", job("wf1", name))] == expected
        assert ("batchy_job_records_processed", job("wf1", name)) not in got  # reopened: nothing reported yet
    # wf2 never succeeded: no last-success sample rather than a misleading 0.
    assert not [key for key in got if key[0] == "batchy_last_success_timestamp_seconds" and key[1][1] == ("workflow", "wf2")]
    for name, current in (("wf1", "open"), ("wf2", "failed")):
        for job_name in ({"wf1": ["s_extract", "s_load"], "wf2": ["a_job", "b_job"]}[name]):
            for status in ("new", "open", "success", "failed"):
                key = ("batchy_job_status", (("job", job_name), ("status", status), ("workflow", name)))
                assert got[key] == (1 if status == current else 0), key
    assert got[("batchy_open_batch_age_seconds", wf("wf2"))] == 0


def test_open_batch_age_uses_the_redis_clock(client, monkeypatch):
    client.post("/load_cfg/wf1")
    assert scrape(client)[("batchy_open_batch_age_seconds", wf("wf1"))] == 0
    client.post("/open_batch/wf1")
    start = datetime.fromisoformat(client.get("/get_status/wf1").json["s_extract"]["batch_start"])
    clock = services_of(client.application).store.clock
    monkeypatch.setattr(clock, "moment", lambda seconds: start + timedelta(seconds=120))
    assert scrape(client)[("batchy_open_batch_age_seconds", wf("wf1"))] == 120
    client.post("/close_batch/wf1", json={"records_processed": 42})
    got = scrape(client)
    assert got[("batchy_open_batch_age_seconds", wf("wf1"))] == 0
    assert got[("batchy_job_records_processed", job("wf1", "s_load"))] == 42


def test_stale_after_setting_is_exported(client, write_cfg):
    write_cfg("watched", ".batchy:\n  stale_after_hours: 1.5\njob_a: {}\n")
    client.post("/load_cfg/watched")
    client.post("/load_cfg/wf1")
    got = scrape(client)
    assert got[("batchy_stale_after_seconds", wf("watched"))] == 5400
    assert ("batchy_stale_after_seconds", wf("wf1")) not in got


def test_no_workflows(client):
    got = scrape(client)
    assert got[("batchy_redis_up", ())] == 1
    assert got[("batchy_workflows", ())] == 0
    assert not [key for key in got if key[0].startswith("batchy_job_status")]


def test_redis_down_still_answers_with_redis_up_zero(cfg_dir):
    server = fakeredis.FakeServer()
    app = make_app(fakeredis.FakeRedis(server=server, decode_responses=True), cfg_dir)
    server.connected = False
    got = scrape(app.test_client())
    assert got == {("batchy_redis_up", ()): 0, ("batchy_redis_writable", ()): 0}


def test_no_process_state_two_apps_one_redis_agree(fake_redis, cfg_dir):
    """Two apps on one Redis stand for two gunicorn workers: each sees the other's changes."""
    first, second = (make_app(fake_redis, cfg_dir).test_client() for _ in range(2))
    first.post("/load_cfg/wf1")
    first.post("/open_batch/wf1")
    second.post("/close_batch/wf1")
    second.post("/open_batch/wf1")
    a, b = scrape(first), scrape(second)
    a.pop(("batchy_open_batch_age_seconds", wf("wf1")))
    b.pop(("batchy_open_batch_age_seconds", wf("wf1")))
    assert a == b
    assert a[("batchy_batches_opened_total", wf("wf1"))] == 2
    assert a[("batchy_batches_closed_total", wf("wf1"))] == 1


def test_every_gunicorn_worker_reports_the_same(service):
    """A live service with 2 workers on a real redis-server: repeated scrapes agree."""

    def call(path, method="GET"):
        request = urllib.request.Request(service.url + path, method=method)
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.read().decode(), response.headers["Content-Type"]

    call("/load_cfg/wf1", "POST")
    call("/open_batch/wf1", "POST")
    call("/fail_batch/wf1", "POST")
    scrapes = []
    for _ in range(8):  # new connections each time, so both workers get some of them
        text, content_type = call("/metrics")
        assert content_type == CONTENT_TYPE_LATEST
        scrapes.append(samples(text))
    assert all(s == scrapes[0] for s in scrapes)
    got = scrapes[0]
    assert got[("batchy_batches_opened_total", wf("wf1"))] == 1
    assert got[("batchy_batches_failed_total", wf("wf1"))] == 1
    assert got[("batchy_job_status", (("job", "s_load"), ("status", "failed"), ("workflow", "wf1")))] == 1
    assert got[("batchy_redis_up", ())] == 1


def test_pauses(client, write_cfg):
    write_cfg("wf2", "a_job: {}\n")
    client.post("/load_cfg/wf1")
    client.post("/load_cfg/wf2")
    got = scrape(client)
    assert got[("batchy_service_paused", ())] == 0
    assert got[("batchy_workflow_paused", wf("wf1"))] == 0
    client.post("/pause/wf1", json={"message": "upgrade"})
    client.post("/pause", json={"message": "maintenance"})
    got = scrape(client)
    assert got[("batchy_service_paused", ())] == 1
    assert got[("batchy_workflow_paused", wf("wf1"))] == 1
    assert got[("batchy_workflow_paused", wf("wf2"))] == 0


def test_per_workflow_detail_counts_the_jobs_instead(fake_redis, cfg_dir, write_cfg):
    write_cfg("wf2", ".batchy:\n  max_age_hours: 1\na_job: {}\nb_job: {}\n")
    client = make_app(fake_redis, cfg_dir, BATCHY_METRICS_DETAIL="workflow").test_client()
    client.post("/load_cfg/wf1")
    client.post("/load_cfg/wf2")
    client.post("/open_batch/wf1")
    client.post("/close_batch/wf1")
    client.post("/open_batch/wf2")
    client.post("/fail_batch/wf2", json={"job": "a_job"})
    ended = min(datetime.fromisoformat(j["batch_end"]).timestamp() for j in client.get("/get_status/wf1").json.values())

    got = scrape(client)

    assert not [key for key in got if "job" in dict(key[1])]  # no series names a job
    assert got[("batchy_workflow_jobs", (("status", "success"), ("workflow", "wf1")))] == 2
    assert got[("batchy_workflow_jobs", (("status", "failed"), ("workflow", "wf2")))] == 1
    assert got[("batchy_workflow_jobs", (("status", "open"), ("workflow", "wf2")))] == 1
    assert got[("batchy_workflow_late_jobs", wf("wf2"))] == 2 and got[("batchy_workflow_late_jobs", wf("wf1"))] == 0
    assert got[("batchy_workflow_last_success_timestamp_seconds", wf("wf1"))] == ended
    assert ("batchy_workflow_last_success_timestamp_seconds", wf("wf2")) not in got  # never succeeded
    assert got[("batchy_workflow_coverage_holes", wf("wf1"))] == 0
    assert got[("batchy_batches_failed_total", wf("wf2"))] == 1 and got[("batchy_redis_up", ())] == 1


def test_the_fleet_is_read_once_per_interval_but_redis_up_on_every_scrape(cfg_dir):
    server = fakeredis.FakeServer()
    now = [1000.0]
    app = make_app(fakeredis.FakeRedis(server=server, decode_responses=True), cfg_dir,
                   BATCHY_FLEET_INTERVAL=15, FLEET_CLOCK=lambda: now[0])
    client = app.test_client()
    client.post("/load_cfg/wf1")
    assert scrape(client)[("batchy_batches_opened_total", wf("wf1"))] == 0
    client.post("/open_batch/wf1")
    assert scrape(client)[("batchy_batches_opened_total", wf("wf1"))] == 0  # the read of the interval
    server.connected = False
    assert scrape(client) == {("batchy_redis_up", ()): 0, ("batchy_redis_writable", ()): 0}  # this scrape's
    server.connected = True
    now[0] += 16
    scrape(client)  # answered from the last read while the next one is made
    services_of(app).fleet.snapshot.settle()
    got = scrape(client)
    assert got[("batchy_batches_opened_total", wf("wf1"))] == 1 and got[("batchy_redis_up", ())] == 1


def test_a_scrape_that_accepts_gzip_gets_it(client):
    import gzip

    client.post("/load_cfg/wf1")
    plain = client.get("/metrics")
    zipped = client.get("/metrics", headers={"Accept-Encoding": "gzip, deflate"})
    assert "Content-Encoding" not in plain.headers and zipped.headers["Content-Encoding"] == "gzip"
    assert samples(gzip.decompress(zipped.data).decode()) == samples(plain.data.decode())
    assert samples(gzip.decompress(zipped.data).decode())[("batchy_redis_up", ())] == 1
