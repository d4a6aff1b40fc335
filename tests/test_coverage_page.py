"""The coverage page at /coverage/<wf>/view, on fakeredis: holes, their repairs or hints, zoom, size."""
from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

from batchy.rules.times import format_time
from batchy.web.db import services_of

START = datetime(2024, 1, 1, tzinfo=UTC)


def skipped(client, write_cfg) -> list:
    """Load daily (one job, sales), close day 1, skip days 2-3, close day 4, skip 5, close day 6: two holes."""
    write_cfg("daily", f"sales:\n  from_date: {START.isoformat()}\n  batch_size: day\n  max_window_hours: 25\n")
    assert client.post("/load_cfg/daily").status_code == 200
    for day in (0, 3, 5):
        moment = (START + timedelta(days=day)).isoformat().replace("+", "%2B")
        client.post(f"/set_from_date/daily?from_date={moment}")
        client.post("/open_batch/daily")
        client.post("/close_batch/daily")
    holes = client.get("/coverage/daily").json["sales"]["holes"]
    assert holes == [[format_time(START + timedelta(days=1)), format_time(START + timedelta(days=3))],
                     [format_time(START + timedelta(days=4)), format_time(START + timedelta(days=5))]]
    return holes


def test_a_hole_links_its_running_backfill_or_shows_the_command_that_would_create_one(client, write_cfg):
    holes = skipped(client, write_cfg)
    before = client.get("/coverage/daily").get_data()
    made = client.post("/backfill/daily", json={"from": holes[0][0], "to": holes[0][1]}).json
    text = client.get("/coverage/daily/view?zoom=month&at=2024-01-10").get_data(as_text=True)
    assert f'href="../../backfill/daily/{made["backfill_id"]}"' in text
    assert text.count('class="repair"') == 1 and text.count('class="hint"') == 1
    assert (f"<code>batchy backfill create daily --from {holes[1][0]} --to {holes[1][1]} --job sales</code>"
            in text)
    # The backfill's pending chunks are drawn in their own colour; the legend names every colour.
    assert re.search(r'<rect class="pending" [^>]*><title>pending: 2 chunks</title>', text)
    for kind in ("covered", "hole", "success", "pending", "leased", "failed"):
        assert f'<li data-kind="{kind}">' in text
    # Read-only: no form, no button; and /coverage's JSON answer is what it was.
    assert "<form" not in text and "<button" not in text
    assert client.get("/coverage/daily").get_data() == before


def test_zoom_links_keep_the_zone_and_step_by_period(client, write_cfg):
    skipped(client, write_cfg)
    text = client.get("/coverage/daily/view?zoom=week&at=2024-01-03T12:00&tz=Europe/Paris").get_data(as_text=True)
    assert "2024-01-01 00:00:00 +01:00 to 2024-01-08 00:00:00 +01:00" in text
    previous = re.search(r'id="previous" href="\?([^"]+)"', text).group(1)
    assert "tz=Europe%2FParis" in previous and "zoom=week" in previous and "at=2023-12-25T00%3A00%3A00%2B01%3A00" in previous
    for zoom in ("day", "month", "all"):
        assert f'data-zoom="{zoom}" href="?tz=Europe%2FParis&amp;zoom={zoom}&amp;at=' in text
    everything = client.get("/coverage/daily/view").get_data(as_text=True)
    assert '<b data-zoom="all">' in everything and 'id="previous"' not in everything
    assert "2024-01-01 00:00:00 +00:00 to 2024-01-07 00:00:00 +00:00" in everything  # the data's extent


def test_bad_parameters_get_the_json_error(client, write_cfg):
    skipped(client, write_cfg)
    for query, parameter in (("zoom=year", "zoom"), ("tz=Mars/Base", "tz"), ("at=soon", "at"), ("job=nope", None),
                             ("zom=day", "zom")):
        answer = client.get(f"/coverage/daily/view?{query}")
        assert answer.status_code in (400, 404) and answer.json["error"], query
        assert parameter is None or answer.json["parameter"] == parameter
    assert client.get("/coverage/nowhere/view").status_code == 404


def test_the_dashboards_coverage_links_open_the_page(client, write_cfg):
    skipped(client, write_cfg)
    text = client.get("/").get_data(as_text=True)
    assert 'href="coverage/daily/view"' in text and 'href="coverage/daily/view?job=sales"' in text
    assert client.get("/coverage/daily/view?job=sales").status_code == 200


def test_a_year_of_hourly_windows_with_a_hundred_holes_stays_small(client, app):
    """8,760 hourly windows, a hundred one-hour holes and a running backfill of 500 hourly chunks: the
    page of the whole year is a bounded number of marks and well under 300 KB."""
    client.post("/load_cfg/wf1")
    store = services_of(app).store
    start = int(START.timestamp())
    missing = {17 + 87 * i for i in range(100)}  # hours no window covered, spread over the year
    ledger, low = [], start
    for hour in sorted(missing):
        ledger.append([low, start + hour * 3600])
        low = start + (hour + 1) * 3600
    ledger.append([low, start + 8760 * 3600])
    doc = json.loads(json.dumps(store.export(["wf1"], history=False)))
    meta = doc["workflows"]["wf1"]["meta"]
    for field in [f for f in meta if f.startswith("coverage:")]:
        del meta[field]
    meta["coverage:s_extract"] = json.dumps(ledger)
    store.import_(doc, replace=True)
    made = client.post("/backfill/wf1", json={"from": "2024-03-01T00:00:00Z", "to": "2024-03-21T20:00:00Z",
                                              "job": "s_extract", "chunk_hours": 1})
    assert made.status_code == 201 and len(made.json["chunks"]) == 500

    answer = client.get("/coverage/wf1/view?job=s_extract")
    text = answer.get_data(as_text=True)
    assert answer.status_code == 200
    assert text.count('class="hole-item"') == 100
    march = range(1440, 1940)  # the backfill's hours of the year
    assert text.count('class="repair"') == len(missing & set(march)) == 6
    elements = len(re.findall(r"<(?:rect|line|text|title)\b", text))
    assert elements < 600, elements
    assert len(answer.get_data()) < 300_000
    # Marks never go below a pixel: every hole is visible, and 500 chunks are one pending mark.
    widths = [float(w) for w in re.findall(r'<rect class="hole" x="[^"]+" y="2" width="([^"]+)"', text)]
    assert widths and min(widths) >= 1.0
    assert len(re.findall(r'<rect class="pending"', text)) == 1


def test_a_workflow_of_many_jobs_shows_the_first_hundred_timelines(client, write_cfg):
    write_cfg("wide", "".join(f"j{i:03d}: {{}}\n" for i in range(150)))
    assert client.post("/load_cfg/wide").status_code == 200
    text = client.get("/coverage/wide/view").get_data(as_text=True)
    assert text.count('<section class="job"') == 100 and 'data-job="j099"' in text and 'data-job="j100"' not in text
    assert "and 50 more jobs" in text
    assert 'data-job="j120"' in client.get("/coverage/wide/view?job=j120").get_data(as_text=True)


def test_dirty_ranges_and_quality_failures_are_drawn_in_their_own_colours_and_listed_with_their_repair(
        client, write_cfg):
    write_cfg("daily", f"sales:\n  from_date: {START.isoformat()}\n  batch_size: day\n  max_window_hours: 25\n")
    assert client.post("/load_cfg/daily").status_code == 200
    for day, dq in ((0, "pass"), (1, "fail"), (2, "pass"), (3, "pass")):
        client.post(f"/set_from_date/daily?from_date={format_time(START + timedelta(days=day)).replace('+', '%2B')}")
        client.post("/open_batch/daily")
        assert client.post("/close_batch/daily", query_string={"dq": dq}).status_code == 200
    late = [format_time(START + timedelta(days=2, hours=10)), format_time(START + timedelta(days=2, hours=12))]
    assert client.post("/invalidate/daily", query_string={"from": late[0], "to": late[1]}).status_code == 200
    made = client.post("/backfill/daily", json={"from": late[0], "to": late[1], "chunk_hours": 2}).json
    text = client.get("/coverage/daily/view?zoom=week&at=2024-01-02").get_data(as_text=True)
    for kind in ("dirty", "quality"):
        assert f'<li data-kind="{kind}">' in text  # in the legend
    assert re.search(r'<rect class="dirty" [^>]*><title>invalidated by late data: 1 range</title>', text)
    assert re.search(r'<rect class="quality" [^>]*><title>failed quality check: 1 range</title>', text)
    assert "generation 1" in text
    items = re.findall(r'<li class="hole-item" data-kind="(\w+)">(.*?)</li>', text, re.S)
    assert [kind for kind, _ in items] == ["quality", "dirty"]
    quality, dirty = (body for _, body in items)
    assert "(failed quality)" in quality and "batchy backfill create daily --from" in quality
    assert "(invalidated)" in dirty and f'href="../../backfill/daily/{made["backfill_id"]}"' in dirty
