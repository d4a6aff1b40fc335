"""The HTML dashboard at / and /dashboard, on fakeredis (and once on a real redis-server)."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser

import fakeredis
import pytest

from batchy.web import dashboard
from batchy.rules import health, workflows
from batchy.web.db import get_store
from batchy.web.db import services_of

from .conftest import make_app


class Rows(HTMLParser):
    """Collect the job rows: their data-* attributes and each cell's class, text and title."""

    def __init__(self, html: str):
        super().__init__()
        self.rows: dict[tuple[str, str], dict] = {}
        self._row = None
        self._cell = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and attrs.get("class") == "job-row":
            self._row = {"attrs": attrs, "cells": {}}
            self.rows[(attrs["data-workflow"], attrs["data-job"])] = self._row
        elif tag == "td" and self._row is not None:
            self._cell = {"class": attrs.get("class", ""), "title": attrs.get("title", ""), "text": ""}
            self._row["cells"][(self._cell["class"].split() or ["cell"])[0]] = self._cell
        elif tag == "span" and self._cell is not None and "status" in attrs.get("class", ""):
            self._cell["class"] = "status " + attrs["class"]
            self._row["cells"]["status"] = self._cell

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        elif tag == "tr":
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data


def page(client, path="/"):
    response = client.get(path)
    assert response.status_code == 200, response.data[:500]
    return response.data.decode()


def shift_clock(client, monkeypatch, delta: timedelta):
    """Make the app's Redis clock read later than it is, as if time had passed."""
    clock = services_of(client.application).store.clock
    real = clock.moment
    monkeypatch.setattr(clock, "moment", lambda seconds: real(seconds) + delta)


def test_empty_state_is_friendly(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert response.headers["Cache-Control"] == "no-store"
    text = response.data.decode()
    assert "No workflows yet" in text
    assert "/load_cfg/" in text
    assert not Rows(text).rows


@pytest.mark.parametrize("path", ["/", "/dashboard"])
def test_lists_every_workflow_and_job(client, write_cfg, path):
    write_cfg("wf2", "a_job: {}\nb_job: {}\n")
    for wf in ("wf1", "wf2"):
        assert client.post(f"/load_cfg/{wf}").status_code == 200
    client.post("/open_batch/wf1")
    client.post("/close_batch/wf1", json={"records_processed": 1234567, "message": "all good"})
    client.post("/open_batch/wf2")
    client.post("/fail_batch/wf2", json={"job": "b_job", "message": "ORA-00942"})
    status = client.get("/get_status/wf1").json

    rows = Rows(page(client, path)).rows

    assert set(rows) == {("wf1", "s_extract"), ("wf1", "s_load"), ("wf2", "a_job"), ("wf2", "b_job")}
    extract = rows[("wf1", "s_extract")]
    assert extract["attrs"]["data-status"] == "success"
    assert "status-success" in extract["cells"]["status"]["class"]
    assert extract["cells"]["num"]["text"] == "1,234,567"
    assert extract["cells"]["message"]["text"] == "all good"
    assert extract["cells"]["from"]["text"] == "2024-01-01 00:00:00 +00:00"  # in the page's zone, UTC by default
    assert extract["cells"]["batch"]["text"] == str(status["s_extract"]["batch_id"])
    start = datetime.fromisoformat(status["s_extract"]["batch_start"]).astimezone(timezone.utc)
    assert extract["cells"]["start"]["title"] == status["s_extract"]["batch_start"]
    assert extract["cells"]["start"]["text"] == start.strftime("%Y-%m-%d %H:%M:%S +00:00")
    assert extract["cells"]["since"]["text"].endswith(" ago")
    assert "src_schema=CRM" in extract["cells"]["job"]["title"]  # free-form params on hover
    assert rows[("wf2", "a_job")]["attrs"]["data-status"] == "open"
    assert "status-open" in rows[("wf2", "a_job")]["cells"]["status"]["class"]
    assert "(running)" in rows[("wf2", "a_job")]["cells"]["dur"]["text"]
    failed = rows[("wf2", "b_job")]
    assert failed["attrs"]["data-status"] == "failed"
    assert "status-failed" in failed["cells"]["status"]["class"]
    assert failed["cells"]["message"]["text"] == "ORA-00942"
    assert failed["cells"]["since"]["text"] == "never"


def test_new_jobs_are_grey_and_summary_counts(client, write_cfg):
    write_cfg("wf2", "a_job: {}\nb_job: {}\n")
    client.post("/load_cfg/wf1")
    client.post("/load_cfg/wf2")
    client.post("/open_batch/wf2")
    text = page(client)
    rows = Rows(text).rows
    assert rows[("wf1", "s_load")]["attrs"]["data-status"] == "new"
    assert "status-new" in rows[("wf1", "s_load")]["cells"]["status"]["class"]
    assert '<b data-count="new">2</b>' in text
    assert '<b data-count="open">2</b>' in text
    assert "opened 1 · closed 0 · failed 0" in text


def test_stale_after_hours_marks_old_successes(client, write_cfg, monkeypatch):
    write_cfg("watched", ".batchy:\n  stale_after_hours: 1\njob_a: {}\n")
    write_cfg("relaxed", "job_b: {}\n")
    for wf in ("watched", "relaxed"):
        client.post(f"/load_cfg/{wf}")
        client.post(f"/open_batch/{wf}")
        client.post(f"/close_batch/{wf}")

    rows = Rows(page(client)).rows
    assert "data-stale" not in rows[("watched", "job_a")]["attrs"]

    shift_clock(client, monkeypatch, timedelta(hours=2))
    text = page(client)
    rows = Rows(text).rows
    watched = rows[("watched", "job_a")]
    assert watched["attrs"]["data-stale"] == "true"
    assert "stale" in watched["cells"]["since"]["class"].split()
    assert watched["cells"]["since"]["text"].startswith("2h 00m")
    # Without stale_after_hours a workflow is never flagged, however old its success.
    assert "data-stale" not in rows[("relaxed", "job_b")]["attrs"]
    assert "stale after 1 h" in text
    assert '<b data-count="stale">1</b>' in text


def freeze_clock(client, monkeypatch) -> list:
    """Stop the app's clock at the current second; returns [moment]: change it to move time."""
    clock = services_of(client.application).store.clock
    frozen = [clock.moment(int(time.time()))]
    monkeypatch.setattr(clock, "moment", lambda seconds: frozen[0])
    return frozen


def test_open_batch_shows_running_duration(client, monkeypatch):
    frozen = freeze_clock(client, monkeypatch)  # a real second passing must not make it 1m 31s
    client.post("/load_cfg/wf1")
    client.post("/open_batch/wf1")
    frozen[0] += timedelta(seconds=90)
    text = page(client)
    rows = Rows(text).rows
    assert rows[("wf1", "s_extract")]["cells"]["dur"]["text"] == "1m 30s (running)"
    assert rows[("wf1", "s_extract")]["cells"]["start"]["text"]  # start shown, no end yet
    assert rows[("wf1", "s_extract")]["cells"]["end"]["text"] == ""
    assert "batch open for 1m 30s" in text


def test_escapes_user_data(client, write_cfg):
    evil = "<script>alert(1)</script>"
    write_cfg("xss", f'job_x:\n  note: "{evil}"\n  quote: "a\\" onmouseover=\\"alert(2)"\n')
    client.post("/load_cfg/xss")
    client.post("/open_batch/xss")
    client.post("/fail_batch/xss", json={"message": "<img src=x onerror=alert(3)>"})
    text = page(client)
    assert evil not in text
    assert "<img src=x" not in text
    assert '" onmouseover="' not in text
    assert "&lt;img src=x onerror=alert(3)&gt;" in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    row = Rows(text).rows[("xss", "job_x")]
    assert row["cells"]["message"]["text"] == "<img src=x onerror=alert(3)>"  # as text, not markup
    assert 'quote=a" onmouseover="alert(2)' in row["cells"]["job"]["title"]


@pytest.mark.parametrize(
    "query, seconds",
    [("", 30), ("?refresh=5", 5), ("?refresh=0", 0), ("?refresh=3600", 3600)],
)
def test_refresh_interval(client, query, seconds):
    text = page(client, "/" + query)
    if seconds:
        assert f'<meta http-equiv="refresh" content="{seconds}">' in text
        assert f"var seconds = {seconds};" in text
        assert f"refreshes every {seconds} s" in text
    else:
        assert "http-equiv" not in text
        assert "var seconds" not in text  # no refresh script (the filter box's script stays)
        assert "auto-refresh off" in text


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "86401", "%C2%B2"])
def test_bad_refresh_is_the_json_error(client, value):
    response = client.get(f"/?refresh={value}")
    assert response.status_code == 400
    assert response.json["error"] == "invalid_parameter"
    assert response.json["parameter"] == "refresh"
    assert response.json["status"] == 400


def test_redis_down_is_an_html_page_that_keeps_refreshing(cfg_dir):
    server = fakeredis.FakeServer()
    app = make_app(fakeredis.FakeRedis(server=server, decode_responses=True), cfg_dir)
    server.connected = False
    response = app.test_client().get("/?refresh=7")
    assert response.status_code == 503
    assert response.mimetype == "text/html"
    text = response.data.decode()
    assert "Redis is not reachable" in text
    assert "var seconds = 7;" in text


def hundred_workflows(app):
    """Load wf_000..wf_099 (5 jobs each), open each, close the odd ones."""
    config = workflows.parse_config("w", "\n".join(f"job_{j}:\n  param: {j}" for j in range(5)))
    with app.app_context():
        store = get_store()
        for i in range(100):
            store.load(f"wf_{i:03d}", config)
            store.open(f"wf_{i:03d}")
            if i % 2:
                store.close(f"wf_{i:03d}", "success", records_processed=i)


def shown(text: str) -> list[str]:
    """Return the workflows a page shows, in its order."""
    return list(dict.fromkeys(wf for wf, _job in Rows(text).rows))


def test_a_hundred_workflows_come_fifty_to_a_page(app, client):
    hundred_workflows(app)
    first = page(client)
    assert shown(first) == [f"wf_{i:03d}" for i in range(50)]
    assert len(Rows(first).rows) == 250
    assert Rows(first).rows[("wf_001", "job_4")]["attrs"]["data-status"] == "success"
    assert Rows(first).rows[("wf_002", "job_0")]["attrs"]["data-status"] == "open"
    # The summary counts the whole fleet, not the page.
    assert '<b data-count="workflows">100</b>' in first and '<b data-count="jobs">500</b>' in first
    assert '<b data-count="success">250</b>' in first and '<b data-count="open">250</b>' in first
    assert "page 1 of 2" in first and 'id="page-previous"' not in first
    assert 'id="page-next" rel="next" href="?page=2"' in first
    second = page(client, "/?page=2")
    assert shown(second) == [f"wf_{i:03d}" for i in range(50, 100)]
    assert "page 2 of 2" in second and 'id="page-next"' not in second
    assert 'id="no-match"' in page(client, "/?page=3")


def test_the_filter_is_applied_on_the_server_and_kept_by_the_links(app, client):
    hundred_workflows(app)
    text = page(client, "/?q=WF_00&refresh=5")
    assert shown(text) == [f"wf_00{i}" for i in range(10)]  # any case
    assert '<b data-count="matching">10</b> of 100 workflows match' in text
    assert 'value="wf_00"' in text.replace("WF_00", "wf_00") and '<input type="hidden" name="refresh" value="5">' in text
    text = page(client, "/?state=success&refresh=5")
    assert shown(text) == [f"wf_{i:03d}" for i in range(1, 100, 2)]
    assert shown(page(client, "/?state=open&q=wf_01")) == ["wf_010", "wf_012", "wf_014", "wf_016", "wf_018"]
    text = page(client, "/?q=wf_0&refresh=5")
    assert len(shown(text)) == 50
    assert 'href="?q=wf_0&amp;refresh=5&amp;page=2"' in text  # the next page keeps the filter
    assert shown(page(client, "/?q=job_3")) == shown(page(client, "/"))  # a job's name matches too
    assert 'id="no-match"' in page(client, "/?q=nothing-like-it")
    for query, name in (("state=weird", "state"), ("page=0", "page"), ("page=x", "page"), ("pge=2", "pge")):
        response = client.get("/?" + query)
        assert response.status_code == 400 and response.json["parameter"] == name, query


def test_on_real_redis(real_client):
    real_client.post("/load_cfg/wf1")
    real_client.post("/open_batch/wf1")
    real_client.post("/close_batch/wf1", json={"job": "s_load", "records_processed": 3})
    rows = Rows(page(real_client)).rows
    assert rows[("wf1", "s_load")]["attrs"]["data-status"] == "success"
    assert rows[("wf1", "s_load")]["cells"]["num"]["text"] == "3"
    assert rows[("wf1", "s_extract")]["attrs"]["data-status"] == "open"


# -- the pure view functions ----------------------------------------------------

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "seconds, text",
    [(None, ""), (-5, "0s"), (0, "0s"), (59.9, "59s"), (61, "1m 01s"), (3600, "1h 00m"),
     (86399, "23h 59m"), (90061, "1d 01h"), (10 * 86400, "10d 00h")],
)
def test_human_duration(seconds, text):
    assert dashboard.human_duration(seconds) == text


def test_job_view_of_legacy_success_without_last_success_fields():
    job = {"status": "success", "batch_start": "2024-03-01T10:00:00+00:00", "batch_end": "2024-03-01T11:00:00+00:00"}
    view = dashboard.job_view("j", job, NOW, stale_after=1800)
    assert view["since"] == "1h 00m"
    assert view["stale"] is True
    assert view["duration"] == "1h 00m"


def test_job_view_survives_odd_values():
    job = {"status": "weird", "batch_start": "not a date", "records_processed": "many", "message": "x" * 1000}
    view = dashboard.job_view("j", job, NOW, stale_after=None)
    assert view["status_class"] == "other"
    assert view["start"] == "" and view["duration"] == ""
    assert view["records"] == "many"
    assert len(view["message"]) == dashboard.MAX_MESSAGE_SHOWN + 1
    assert view["message_full"] == "x" * 1000


def test_last_success_prefers_the_recorded_end():
    job = {"status": "failed", "last_success_start": "2024-03-01T08:00:00+00:00",
           "last_success_end": "2024-03-01T09:30:00+01:00"}
    assert health.last_success(job) == datetime(2024, 3, 1, 8, 30, tzinfo=timezone.utc)
    assert health.last_success({"status": "failed"}) is None


def test_open_since_is_the_oldest_open_start():
    jobs = {
        "a": {"status": "open", "batch_start": "2024-03-01T10:00:00+00:00"},
        "b": {"status": "open", "batch_start": "2024-03-01T09:00:00+00:00"},
        "c": {"status": "success", "batch_start": "2024-03-01T01:00:00+00:00"},
    }
    assert health.open_since(jobs) == datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)
    assert health.open_since({"c": jobs["c"]}) is None


def test_pauses_are_shown(client, write_cfg):
    write_cfg("wf2", "a_job: {}\n")
    client.post("/load_cfg/wf1")
    client.post("/load_cfg/wf2")
    text = page(client)
    assert "paused" not in text.split("<main", 1)[1]

    client.post("/pause/wf1", json={"message": "<b>upgrading</b> the warehouse"})
    text = page(client)
    assert "paused: &lt;b&gt;upgrading&lt;/b&gt; the warehouse" in text
    assert '<b data-count="paused">1</b>' in text
    assert 'id="service-pause"' not in text

    client.post("/pause", json={"message": "maintenance window"})
    text = page(client)
    assert 'id="service-pause"' in text
    assert "maintenance window" in text

    client.post("/resume")
    client.post("/resume/wf1")
    text = page(client)
    assert 'id="service-pause"' not in text
    assert "data-count=\"paused\"" not in text


def test_one_time_zone_per_page_and_yaml_booleans(client, write_cfg):
    write_cfg("paris", "s:\n  from_date: 2024-01-01T00:00:00Z\n  trunc_start: false\n  flag: true\n")
    client.post("/load_cfg/paris")
    client.post("/open_batch/paris")
    text = page(client, "/?tz=Europe/Paris")
    row = Rows(text).rows[("paris", "s")]
    assert row["cells"]["from"]["text"] == "2024-01-01 01:00:00 +01:00"  # midnight UTC shown in Paris time
    assert "Started (Europe/Paris)" in text and "(UTC)" not in text
    assert "flag=true" in row["cells"]["job"]["title"] and "True" not in row["cells"]["job"]["title"]
    assert client.get("/?tz=Mars/Olympus").status_code == 400


def test_late_failing_and_stuck_come_first_with_their_links(client, write_cfg):
    write_cfg("aaa", "a: {}\n")
    write_cfg("zzz", ".batchy:\n  max_age_hours: 1\nz: {}\n")
    for wf in ("aaa", "zzz"):
        client.post(f"/load_cfg/{wf}")
    text = page(client)
    assert text.index('id="wf-zzz"') < text.index('id="wf-aaa"')  # zzz never succeeded: late
    rows = Rows(text).rows
    assert rows[("zzz", "z")]["attrs"]["data-late"] == "true" and "data-late" not in rows[("aaa", "a")]["attrs"]
    for link in ("history/zzz", "events/zzz", "coverage/zzz/view", "backfills/zzz"):
        assert f'href="{link}"' in text
    assert 'id="filter"' in text


def test_running_backfills_show_their_progress(client):
    client.post("/load_cfg/wf1")
    created = client.post("/backfill/wf1?from=2024-01-01T00:00:00Z&to=2024-01-05T00:00:00Z&job=s_extract"
                          "&batch_size=day").json
    chunk = client.post(f"/backfill/wf1/{created['backfill_id']}/lease").json
    client.post(f"/backfill/wf1/{created['backfill_id']}/close?chunk={chunk['chunk']}&attempt={chunk['attempt']}"
                f"&lease_token={chunk['lease_token']}")
    text = page(client)
    assert f'data-backfill="{created["backfill_id"]}"' in text and "1/4 chunks" in text
    client.post(f"/backfill/wf1/{created['backfill_id']}/cancel")
    assert "data-backfill" not in page(client)  # only running ones


def test_a_page_reads_its_own_workflows_only(redis_server, real_redis, cfg_dir, redis_commands):
    from batchy import create_app

    app = create_app({"BATCHY_REDIS_URL": redis_server.url, "BATCHY_CFG_DIR": str(cfg_dir),
                      "BATCHY_FLEET_INTERVAL": 60, "FLEET_CLOCK": lambda: 1000.0})
    config = workflows.parse_config("w", "a: {}\nb: {}\n")
    with app.app_context():
        for i in range(120):
            get_store().load(f"wf_{i:03d}", config)
    client = app.test_client()
    assert client.get("/").status_code == 200  # the fleet's read, kept for the interval
    since = redis_commands.mark()
    text = page(client, "/?page=2")
    redis_commands.mark()
    assert shown(text) == [f"wf_{i:03d}" for i in range(50, 100)]
    assert redis_commands.count(since, "HGETALL", "wf_050") == 1  # on the page: read fresh
    assert redis_commands.count(since, "HGETALL", "wf_000") == 0  # the rest of the fleet: not at all
    assert redis_commands.count(since, "HGETALL", "wf_119") == 0
    assert redis_commands.count(since, "SMEMBERS") == 0
    assert redis_commands.count(since, "HGETALL") <= 2 * dashboard.PAGE_SIZE + 1 + dashboard.PAGE_SIZE
