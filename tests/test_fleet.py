"""The fleet read once per interval per process (storage/fleet.py) and its pure summaries (rules/fleet.py)."""
from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest

from batchy.rules import fleet
from batchy.storage.fleet import Periodic
from batchy.web.db import services_of

from .conftest import make_app

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)


class Clock:
    """A monotonic clock a test moves by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_value_is_computed_once_per_interval_and_refreshed_in_the_background():
    clock, values = Clock(), iter(range(100))
    kept = Periodic(lambda: next(values), interval=10, clock=clock)
    assert kept.get() == 0 and kept.get() == 0 and kept.computed == 1
    clock.now += 9.9
    assert kept.get() == 0 and kept.computed == 1
    clock.now += 0.2  # past the interval: the old value now, the next one computed meanwhile
    assert kept.get() == 0
    kept.settle()
    assert kept.computed == 2 and kept.get() == 1
    clock.now += kept.max_stale + 1  # too old to show (an idle process): computed before answering
    assert kept.get() == 2 and kept.computed == 3


def test_a_warm_up_gives_the_first_request_its_value():
    gate, values = threading.Event(), iter(range(100))

    def slow():
        gate.wait(5)
        return next(values)

    kept = Periodic(slow, interval=10, clock=Clock())
    kept.warm()  # as a service process starts
    gate.set()
    assert kept.get() == 0 and kept.computed == 1  # waited for the warm-up, no read of its own


def test_a_failed_refresh_keeps_the_last_value():
    clock, answers = Clock(), iter(["first", ConnectionError("redis went away"), "third"])

    def compute():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    kept = Periodic(compute, interval=5, clock=clock)
    assert kept.get() == "first"
    clock.now += 6
    assert kept.get() == "first"
    kept.settle()  # the refresh failed: the last value stays, and the next request tries again
    assert kept.get() == "first"
    kept.settle()
    assert kept.get() == "third" and kept.computed == 3


def test_interval_zero_computes_every_time_and_threads_share_one_computation():
    values = iter(range(100))
    fresh = Periodic(lambda: next(values), interval=0)
    assert [fresh.get() for _ in range(3)] == [0, 1, 2]

    gate = threading.Event()

    def slow():
        gate.wait(5)
        return "once"

    shared = Periodic(slow, interval=30)
    answers = []
    threads = [threading.Thread(target=lambda: answers.append(shared.get())) for _ in range(4)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(5)
    assert answers == ["once"] * 4 and shared.computed == 1


def test_the_dashboard_counts_the_fleet_once_per_interval_and_shows_its_rows_fresh(fake_redis, cfg_dir, write_cfg):
    clock = Clock()
    app = make_app(fake_redis, cfg_dir, BATCHY_FLEET_INTERVAL=10, FLEET_CLOCK=clock)
    client = app.test_client()
    client.post("/load_cfg/wf1")
    assert '<b data-count="new">2</b>' in client.get("/").data.decode()
    client.post("/open_batch/wf1")
    text = client.get("/").data.decode()
    assert '<b data-count="new">2</b>' in text  # the counts: as read at most 10 s ago
    assert text.count('data-status="open"') == 2  # the rows shown: read now
    assert services_of(app).fleet.snapshot.computed == 1
    clock.now += 11
    client.get("/")  # answered from the old read while the next one is made
    services_of(app).fleet.snapshot.settle()
    text = client.get("/").data.decode()
    assert '<b data-count="open">2</b>' in text and '<b data-count="new">0</b>' in text
    write_cfg("wf2", "a: {}\n")
    client.post("/load_cfg/wf2")
    assert 'data-workflow="wf2"' not in client.get("/").data.decode()  # listed from the next read on
    clock.now += 11
    client.get("/")
    services_of(app).fleet.snapshot.settle()
    assert 'data-workflow="wf2"' in client.get("/").data.decode()


def test_the_dashboard_metrics_and_late_share_one_read_of_the_fleet_per_interval(fake_redis, cfg_dir):
    clock = Clock()
    app = make_app(fake_redis, cfg_dir, BATCHY_FLEET_INTERVAL=10, FLEET_CLOCK=clock)
    client = app.test_client()
    client.post("/load_cfg/wf1")
    fleet_of = services_of(app).fleet
    for path in ("/", "/metrics", "/late"):  # each figure first asked for: derived from a read of its own
        assert client.get(path).status_code == 200
    assert fleet_of.reads == 3
    clock.now += 11
    client.get("/late")
    fleet_of.snapshot.settle()  # one read in the background, every figure derived from it
    assert fleet_of.reads == 4
    for _ in range(3):
        for path in ("/", "/metrics", "/late"):
            assert client.get(path).status_code == 200
    assert fleet_of.reads == 4 and fleet_of.snapshot.computed == 2


# -- the pure summaries -----------------------------------------------------------

def overview_entry(*statuses, settings=None, holes=0, error=None):
    jobs = {f"j{i}": {"status": s, "coverage_holes": holes} for i, s in enumerate(statuses)}
    return {"jobs": jobs, "settings": settings or {}, "counts": {}, "last_batch_id": None,
            **({"error": error} if error else {})}


def test_a_summary_counts_what_needs_attention():
    quiet = fleet.summary("quiet", overview_entry("success", "new"), NOW)
    assert quiet["statuses"] == {"success": 1, "new": 1} and not quiet["attention"]
    failing = fleet.summary("failing", overview_entry("failed", "success", holes=2), NOW, paused=True, backfills=1)
    assert failing["attention"] and failing["failing"] == 1 and failing["holes"] == 4
    late = fleet.summary("late", overview_entry("new", settings={"max_age_hours": 1}), NOW)
    assert late["late"] == 1 and late["attention"]
    broken = fleet.summary("broken", {"jobs": {}, "error": "bad"}, NOW)
    assert broken["error"] and broken["attention"]
    ordered = fleet.ordered([quiet, late, failing, broken])
    assert [s["name"] for s in ordered] == ["broken", "failing", "late", "quiet"]
    totals = fleet.totals(ordered)
    assert totals["statuses"] == {"new": 2, "open": 0, "success": 2, "failed": 1}
    assert (totals["workflows"], totals["jobs"], totals["late"], totals["failing"], totals["holes"],
            totals["paused"], totals["backfills"], totals["errors"], totals["attention"]) == (4, 5, 1, 1, 4, 1, 1, 1, 3)


@pytest.mark.parametrize("text, state, expected", [
    ("", "", ["a_sales", "b_stock"]),
    ("SALES", "", ["a_sales"]),
    ("j1", "", ["a_sales"]),  # a job's name
    ("", "failed", ["a_sales"]),
    ("", "new", ["b_stock"]),
    ("", "holes", ["a_sales"]),
    ("", "attention", ["a_sales"]),
    ("stock", "failed", []),
])
def test_matches(text, state, expected):
    summaries = [fleet.summary("a_sales", overview_entry("success", "failed", holes=1), NOW),
                 fleet.summary("b_stock", overview_entry("new"), NOW)]
    assert [s["name"] for s in summaries if fleet.matches(s, text, state)] == expected


def test_page_of():
    items = list(range(120))
    assert fleet.page_of(items, 1, 50) == (items[:50], 3)
    assert fleet.page_of(items, 3, 50) == (items[100:], 3)
    assert fleet.page_of([], 1, 50) == ([], 1)


def test_a_figure_of_the_first_read_is_given_as_soon_as_it_is_derived(fake_redis, cfg_dir):
    app = make_app(fake_redis, cfg_dir, BATCHY_FLEET_INTERVAL=10, FLEET_CLOCK=Clock())
    app.test_client().post("/load_cfg/wf1")
    fleet_of, slow = services_of(app).fleet, threading.Event()
    fleet_of.register("slow", lambda read: slow.wait(10))  # derived after the summaries
    fleet_of.warm()
    assert fleet_of.summaries()["totals"]["workflows"] == 1  # while "slow" is still being derived
    assert fleet_of.snapshot.busy() and not fleet_of.snapshot.ready()
    slow.set()
    assert fleet_of.get("slow") is True and fleet_of.reads == 1
