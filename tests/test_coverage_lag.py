"""Coverage lag: how far complete data (the unbroken coverage from a job's first window) is
behind now; the rule, /late, /metrics in both details, and one webhook per episode."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from batchy import create_app
from batchy.rules import lateness
from batchy.rules.fields import check as check_field
from batchy.storage import keys
from batchy.web.db import services_of

from .conftest import FRESH
from .reliability_helpers import VirtualClock
from .test_metrics import scrape
from .test_webhooks import Receiver

UTC = timezone.utc


@pytest.mark.parametrize("ledger, first_from, through", [
    ([], None, None),  # nothing to go by
    ([], 100, 100),  # nothing covered yet: behind since the first from_date
    ([[0, 10]], None, 10),
    ([[0, 10], [20, 30]], None, 10),  # a hole stops it
    ([[0, 10], [20, 30]], 20, 30),
    ([[10, 20]], 0, 0),  # the first window never succeeded
    ([[0, 10]], 10, 10),
])
def test_covered_through_ends_at_the_first_hole(ledger, first_from, through):
    assert lateness.covered_through(ledger, first_from) == through


def test_the_setting_is_checked_like_the_other_hours():
    assert check_field("max_coverage_lag_hours", 1.5) == 1.5
    for bad in (0, -1, "2", True):
        with pytest.raises(ValueError, match="max_coverage_lag_hours must be a number of hours"):
            check_field("max_coverage_lag_hours", bad)


def test_coverage_lag_rule():
    now = datetime(2024, 3, 5, 12, 0, tzinfo=UTC)
    through = datetime(2024, 3, 5, 9, 0, tzinfo=UTC).timestamp()
    job = {"coverage_through": through}
    assert lateness.coverage_lag(job, {"max_coverage_lag_hours": 4}, now) is None
    behind = lateness.coverage_lag(job, {"max_coverage_lag_hours": 2}, now)
    assert behind["kind"] == "coverage_lag" and behind["since"] == "2024-03-05T11:00:00+00:00"
    assert "through 2024-03-05T09:00:00+00:00" in behind["reason"] and "3.0 h behind" in behind["reason"]
    assert lateness.coverage_lag({**job, "max_coverage_lag_hours": 4}, {"max_coverage_lag_hours": 2}, now) is None
    assert lateness.coverage_lag({}, {"max_coverage_lag_hours": 2}, now) is None


WF = """
extract:
  from_date: '2024-03-05 00:00'
  max_coverage_lag_hours: 2
other:
  from_date: '2024-03-05 00:00'
"""


def test_late_metrics_and_one_webhook_per_episode(redis_server, real_redis, cfg_dir, write_cfg):
    receiver = Receiver()
    clock = VirtualClock(datetime(2024, 3, 5, 6, 0, tzinfo=UTC))
    write_cfg("lagging", WF)
    config = {"BATCHY_REDIS_URL": redis_server.url, "BATCHY_CFG_DIR": str(cfg_dir), "CLOCK": clock, **FRESH}
    app = create_app({**config, "BATCHY_WEBHOOK_URL": receiver.url, "BATCHY_WEBHOOK_INTERVAL": 3600})
    per_workflow = create_app({**config, "BATCHY_METRICS_DETAIL": "workflow"}).test_client()
    client = app.test_client()
    watchman = services_of(app).webhooks
    try:
        client.post("/load_cfg/lagging")
        client.post("/open_batch/lagging")
        assert client.post("/close_batch/lagging").status_code == 200  # covered 00:00 -> 06:00
        assert [i for i in client.get("/late").json if i["kind"] == "coverage_lag"] == []
        got = scrape(client)
        lag = got[("batchy_coverage_lag_seconds", (("job", "extract"), ("workflow", "lagging")))]
        assert 0 <= lag < 60
        assert got[("batchy_coverage_behind", (("job", "extract"), ("workflow", "lagging")))] == 0

        clock.advance(3 * 3600)  # 09:00: complete data ends at 06:00, 3 h behind
        behind = [i for i in client.get("/late").json if i["kind"] == "coverage_lag"]
        assert [(i["workflow"], i["job"]) for i in behind] == [("lagging", "extract")]  # only the job that asks
        assert behind[0]["since"].startswith("2024-03-05T08:00:00")
        got = scrape(client)
        assert 3 * 3600 <= got[("batchy_coverage_lag_seconds", (("job", "extract"), ("workflow", "lagging")))] < 3 * 3600 + 60
        assert ("batchy_coverage_lag_seconds", (("job", "other"), ("workflow", "lagging"))) in got
        assert got[("batchy_coverage_behind", (("job", "extract"), ("workflow", "lagging")))] == 1
        assert got[("batchy_coverage_behind", (("job", "other"), ("workflow", "lagging")))] == 0  # no limit set
        wide = scrape(per_workflow)
        assert 3 * 3600 <= wide[("batchy_workflow_coverage_lag_seconds", (("workflow", "lagging"),))] < 3 * 3600 + 60
        assert wide[("batchy_workflow_coverage_behind_jobs", (("workflow", "lagging"),))] == 1
        assert not [key for key in wide if key[0] == "batchy_coverage_lag_seconds"]

        watchman.round()
        clock.advance(3600)  # still behind, further: the same episode
        watchman.round()
        watchman.round()
        lags = [e for e in receiver.received if e["event"] == "coverage_lag"]
        assert len(lags) == 1 and lags[0]["job"] == "extract" and "lagging/extract is behind on coverage: complete data through" in lags[0]["text"]

        client.post("/open_batch/lagging")  # caught up: the episode ends
        client.post("/close_batch/lagging")
        watchman.round()
        assert real_redis.hgetall(keys.lag_episodes("lagging")) == {}
        clock.advance(3 * 3600)  # behind again: a new episode, announced again
        watchman.round()
        watchman.round()
        lags = [e for e in receiver.received if e["event"] == "coverage_lag"]
        assert len(lags) == 2 and lags[0]["id"] != lags[1]["id"]
    finally:
        watchman.stop()
        receiver.close()


def test_a_hole_stops_the_coverage(fake_redis, cfg_dir, write_cfg):
    from .conftest import make_app
    clock = VirtualClock(datetime(2024, 3, 5, 6, 0, tzinfo=UTC))
    write_cfg("holed", "extract:\n  from_date: '2024-03-05 00:00'\n  max_coverage_lag_hours: 2\n")
    client = make_app(fake_redis, cfg_dir, CLOCK=clock).test_client()
    client.post("/load_cfg/holed")
    client.post("/open_batch/holed")
    client.post("/close_batch/holed")  # 00:00 -> 06:00
    clock.advance(3600)
    client.post("/set_from_date/holed", json={"from_date": "2024-03-05T06:30:00+00:00"})  # skips 06:00-06:30
    client.post("/open_batch/holed")
    client.post("/close_batch/holed")  # 06:30 -> 07:00
    clock.advance(2.5 * 3600)  # 09:30: data is complete through 06:00 only
    behind = [i for i in client.get("/late").json if i["kind"] == "coverage_lag"]
    assert len(behind) == 1 and "through 2024-03-05T06:00:00+00:00" in behind[0]["reason"]


def test_late_data_stops_the_coverage_until_it_is_repaired(fake_redis, cfg_dir, write_cfg):
    from .conftest import make_app
    clock = VirtualClock(datetime(2024, 3, 5, 6, 0, tzinfo=UTC))
    write_cfg("late", "extract:\n  from_date: '2024-03-05 00:00'\n  max_coverage_lag_hours: 2\n")
    client = make_app(fake_redis, cfg_dir, CLOCK=clock).test_client()
    client.post("/load_cfg/late")
    client.post("/open_batch/late")
    client.post("/close_batch/late")  # 00:00 -> 06:00: complete through 06:00, not late
    assert [i for i in client.get("/late").json if i["kind"] == "coverage_lag"] == []
    client.post("/invalidate/late", json={"from": "2024-03-05T02:00:00+00:00", "to": "2024-03-05T03:00:00+00:00"})
    behind = [i for i in client.get("/late").json if i["kind"] == "coverage_lag"]
    assert len(behind) == 1 and "through 2024-03-05T02:00:00+00:00" in behind[0]["reason"]
    made = client.post("/backfill/late", json={"from": "2024-03-05T02:00:00+00:00",
                                              "to": "2024-03-05T03:00:00+00:00"}).json
    chunk = client.post(f"/backfill/late/{made['backfill_id']}/lease").json
    assert client.post(f"/backfill/late/{made['backfill_id']}/close", json={
        "chunk": chunk["chunk"], "attempt": chunk["attempt"], "lease_token": chunk["lease_token"]}).status_code == 200
    assert [i for i in client.get("/late").json if i["kind"] == "coverage_lag"] == []
