"""Holes that repair themselves: auto_backfill, the rule (pure) and the elected repairer (fakeredis)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from batchy import create_app
from batchy.rules import repair
from batchy.rules.times import format_time
from batchy.storage.repair import Repairer
from batchy.web.db import services_of

START = datetime(2024, 1, 1, tzinfo=UTC)
DAY = 86400.0


# -- the rule ----------------------------------------------------------------------------------

def test_a_settled_hole_is_due_less_what_a_running_backfill_fills_or_an_automatic_one_gave_up_on():
    holes = [[0.0, 100.0], [200.0, 300.0], [400.0, 500.0]]
    assert repair.due(holes, [], [], now=1000.0, settle=0) == holes
    # settle: a range is repaired once its end is settle before now, whole; one ending later waits
    assert repair.due(holes, [], [], now=550.0, settle=100.0) == [[0.0, 100.0], [200.0, 300.0]]
    assert repair.due(holes, [], [], now=199.0, settle=100.0) == []
    # being filled, or given up on: left alone; only the rest is due
    assert repair.due(holes, [[0.0, 60.0], [250.0, 500.0]], [], 1000.0, 0) == [[60.0, 100.0], [200.0, 250.0]]
    assert repair.due(holes, [[0.0, 60.0]], [[420.0, 480.0]], 1000.0, 0) == [
        [60.0, 100.0], [200.0, 300.0], [400.0, 420.0], [480.0, 500.0]]


def test_a_plan_groups_the_jobs_sharing_a_range_and_skips_jobs_without_the_setting():
    jobs = {"a": {"auto_backfill": True}, "b": {}, "c": {"auto_backfill": False}, "d": {}}
    holes = {name: [[0.0, 10.0]] for name in jobs}
    assert repair.plan(jobs, {}, holes, {}, {}, 100.0) == [(0.0, 10.0, ["a"])]
    # workflow-wide: every job but the one that says false
    assert repair.plan(jobs, {"auto_backfill": True}, holes, {}, {}, 100.0) == [(0.0, 10.0, ["a", "b", "d"])]
    # settle_minutes, the job's own winning over the workflow's
    jobs = {"a": {"auto_backfill": True, "settle_minutes": 60}, "b": {"auto_backfill": True}}
    assert repair.plan(jobs, {"settle_minutes": 1}, {"a": [[0.0, 3600.0]], "b": [[0.0, 3600.0]]}, {}, {},
                       3600.0 + 120) == [(0.0, 3600.0, ["b"])]


def test_auto_backfill_must_be_true_or_false(client, write_cfg):
    write_cfg("daily", "sales:\n  from_date: 2024-01-01T00:00:00+00:00\n  auto_backfill: 'yes'\n")
    r = client.post("/load_cfg/daily")
    assert r.status_code == 400 and "auto_backfill must be true or false" in r.json["message"]


# -- the repairer ------------------------------------------------------------------------------

def skipped(client, write_cfg, setting: str = "  auto_backfill: true\n") -> list:
    """Load daily (one job, sales), close day 1, skip days 2-3, close day 4, skip 5, close day 6: two holes."""
    write_cfg("daily", f"sales:\n  from_date: {START.isoformat()}\n  batch_size: day\n  max_window_hours: 25\n"
              + setting)
    assert client.post("/load_cfg/daily").status_code == 200
    for day in (0, 3, 5):
        moment = (START + timedelta(days=day)).isoformat().replace("+", "%2B")
        assert client.post(f"/set_from_date/daily?from_date={moment}").status_code == 200
        assert client.post("/open_batch/daily").status_code == 200
        assert client.post("/close_batch/daily").status_code == 200
    holes = client.get("/coverage/daily").json["sales"]["holes"]
    assert holes == [[format_time(START + timedelta(days=1)), format_time(START + timedelta(days=3))],
                     [format_time(START + timedelta(days=4)), format_time(START + timedelta(days=5))]]
    return holes


def repairer(app) -> Repairer:
    found = services_of(app)
    return Repairer(found.store, found.backfills, found.fleet, interval=60.0)


def run_backfill(client, wf: str, backfill_id: int) -> int:
    """Lease and close every chunk of a backfill; return how many ran."""
    ran = 0
    while (r := client.post(f"/backfill/{wf}/{backfill_id}/lease")).status_code == 200:
        chunk = r.json
        closed = client.post(f"/backfill/{wf}/{backfill_id}/close", query_string={
            "chunk": chunk["chunk"], "attempt": chunk["attempt"], "lease_token": chunk["lease_token"]})
        assert closed.status_code == 200, closed.json
        ran += 1
    return ran


def test_each_settled_hole_becomes_one_backfill_once_and_running_it_closes_the_hole(app, client, write_cfg):
    holes = skipped(client, write_cfg)
    made = repairer(app).round()
    assert [(m["from"], m["to"], m["jobs"], m["actor"]) for m in made] == [
        (hole[0], hole[1], ["sales"], "auto_backfill") for hole in holes]
    listed = client.get("/backfills/daily").json
    assert sorted(b["backfill_id"] for b in listed["backfills"]) == sorted(m["backfill_id"] for m in made)
    audit = client.get("/events/daily").json["events"]
    assert [e for e in audit if e.get("actor") == "auto_backfill"], audit
    # never twice: the ranges are being filled now, by this process or another
    assert repairer(app).round() == [] and repairer(app).round() == []
    assert len(client.get("/backfills/daily").json["backfills"]) == 2
    assert [run_backfill(client, "daily", m["backfill_id"]) for m in made] == [2, 1]  # days 2-3, day 5
    assert client.get("/coverage/daily").json["sales"]["holes"] == []
    assert repairer(app).round() == []


def test_a_job_without_the_setting_keeps_its_holes(app, client, write_cfg):
    skipped(client, write_cfg, setting="")
    assert repairer(app).round() == []
    assert client.get("/backfills/daily").json["backfills"] == []


def test_an_automatic_backfill_cancelled_is_not_made_again(app, client, write_cfg):
    skipped(client, write_cfg)
    first, second = repairer(app).round()
    assert client.post(f"/backfill/daily/{first['backfill_id']}/cancel").status_code == 200
    assert repairer(app).round() == []  # an operator stopped it: creating it again would fight them
    assert run_backfill(client, "daily", second["backfill_id"]) == 1
    holes = client.get("/coverage/daily").json["sales"]["holes"]
    assert holes == [[first["from"], first["to"]]]  # still a hole, on view, for a human to decide


def test_two_processes_never_repair_the_same_range_twice(app, client, write_cfg):
    skipped(client, write_cfg)
    one, other = repairer(app), repairer(app)
    assert len(one.round()) == 2 and other.round() == []
    assert one.leading and not other.leading
    one.stop()  # a graceful stop hands over the lead at once
    assert other.round() == [] and other.leading
    assert len(client.get("/backfills/daily").json["backfills"]) == 2


def test_with_nothing_to_repair_the_repairer_writes_nothing(app, client, write_cfg, fake_redis):
    skipped(client, write_cfg, setting="")
    before = set(fake_redis.keys("*"))
    assert repairer(app).round() == []
    assert set(fake_redis.keys("*")) == before


@pytest.mark.parametrize("interval, started", [(0, False), (60, True)])
def test_the_service_starts_a_repairer_unless_the_interval_is_0(fake_redis, cfg_dir, interval, started):
    app = create_app({"REDIS_CLIENT": fake_redis, "BATCHY_CFG_DIR": str(cfg_dir),
                      "BATCHY_AUTO_BACKFILL_INTERVAL": interval})
    found = services_of(app).repairer
    try:
        assert (found is not None and found.thread.is_alive()) is started
    finally:
        if found is not None:
            found.stop()
