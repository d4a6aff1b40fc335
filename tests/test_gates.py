"""Coverage gates, missed waits and deadlines: GET /wait with through/since/deadline."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from batchy.rules import gates

from .conftest import make_app
from .reliability_helpers import VirtualClock

UTC = timezone.utc


@pytest.fixture
def hourly(fake_redis, cfg_dir, write_cfg):
    clock = VirtualClock(datetime(2024, 3, 2, 0, 30, tzinfo=UTC))
    client = make_app(fake_redis, cfg_dir, CLOCK=clock).test_client()
    write_cfg("up", "h:\n  from_date: 2024-03-01T00:00:00Z\n  batch_size: hour\n  max_window_hours: 6\n")
    client.post("/load_cfg/up")
    return client, clock


def run_once(client) -> dict:
    job = client.post("/open_batch/up").json["h"]
    assert client.post("/close_batch/up").status_code == 200
    return job


def test_a_daily_gate_on_an_hourly_upstream_opens_with_the_last_hour(hourly):
    client, _clock = hourly
    gate = "/wait/up?through=2024-03-02T00:00:00Z&timeout=0"
    for _ in range(3):  # 00:00-18:00 loaded: the gate still waits for 18:00-24:00
        run_once(client)
        answer = client.get(gate).json
        assert answer["state"] == "waiting" and answer["jobs"]["h"]["holes"], answer
    assert answer["since"] == "2024-03-01T00:00:00+00:00"  # 24 hours before through
    run_once(client)
    answer = client.get(gate).json
    assert answer["state"] == "ready" and answer["ready"] and answer["jobs"]["h"]["holes"] == []


def test_today_means_midnight_at_the_start_of_today_in_the_zone(hourly):
    client, _clock = hourly
    for _ in range(4):
        run_once(client)
    answer = client.get("/wait/up?through=today&timeout=0").json
    assert answer["through"] == "2024-03-02T00:00:00+00:00" and answer["ready"]
    paris = client.get("/wait/up?through=today&tz=Europe/Paris&timeout=0").json
    assert paris["through"] == "2024-03-02T00:00:00+01:00"
    # 24 hours before Paris midnight is an hour before the upstream's first from_date: never loaded
    assert paris["state"] == "missed" and paris["since"] == "2024-03-01T00:00:00+01:00"
    paris = client.get("/wait/up?through=today&since=2024-03-01T01:00:00%2B01:00&tz=Europe/Paris&timeout=0").json
    assert paris["ready"], paris


def test_a_hole_behind_the_watermark_is_missed_at_once(hourly):
    client, clock = hourly
    run_once(client)  # 00:00 - 06:00
    client.post("/set_from_date/up?from_date=2024-03-01T08:00:00Z")  # an operator skips 06:00 - 08:00
    for _ in range(3):
        run_once(client)
    answer = client.get("/wait/up?through=2024-03-02T00:00:00Z&timeout=5").json
    assert answer["state"] == "missed" and answer["missed"] == ["h"], answer
    assert answer["waited"] < 1 and "rewind or backfill" in answer["jobs"]["h"]["reason"]


def test_a_past_date_that_did_not_succeed_is_missed(hourly):
    client, _clock = hourly
    answer = client.get("/wait/up?date=2024-02-01&timeout=5").json
    assert answer["state"] == "missed" and answer["waited"] < 1


@pytest.mark.parametrize("action", ["fail", "proceed", "skip"])
def test_a_passed_deadline_answers_with_its_fallback(hourly, action):
    client, _clock = hourly
    answer = client.get(f"/wait/up?through=2024-03-02T00:00:00Z&deadline=2024-03-02T00:10:00Z"
                        f"&on_deadline={action}&timeout=5").json
    assert answer["state"] == "waiting" and answer["waited"] < 1
    assert answer["deadline"] == {"at": "2024-03-02T00:10:00+00:00", "passed": True, "action": action}
    later = client.get("/wait/up?through=2024-03-02T00:00:00Z&deadline=23:00&timeout=0").json
    assert later["deadline"]["passed"] is False


@pytest.mark.parametrize("query, parameter", [("through=soon", "through"), ("since=2024-03-01", "since"),
                                               ("through=2024-03-01&since=2024-03-02", "since"),
                                               ("through=today&on_deadline=later", "on_deadline")])
def test_bad_gate_parameters_are_refused(hourly, query, parameter):
    client, _clock = hourly
    r = client.get(f"/wait/up?{query}")
    assert r.status_code == 400 and r.json["parameter"] == parameter, r.json


def test_the_pure_verdict_names_each_hole():
    since, through = datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC)
    jobs = {"a": {"status": "success", "to_date": "2024-03-01T12:00:00+00:00"}}
    ledger = {"a": [[since.timestamp(), since.timestamp() + 12 * 3600]]}
    verdict = gates.coverage_verdict(jobs, ledger, ["a"], since, through)
    assert verdict["state"] == "waiting"
    assert verdict["jobs"]["a"]["holes"] == [["2024-03-01T12:00:00+00:00", "2024-03-02T00:00:00+00:00"]]


def test_a_hole_a_running_backfill_will_fill_is_waited_for(hourly):
    client, _clock = hourly
    run_once(client)  # 00:00 - 06:00
    client.post("/set_from_date/up?from_date=2024-03-01T08:00:00Z")  # the 06:00 - 08:00 hole
    for _ in range(3):
        run_once(client)
    gate = "/wait/up?through=2024-03-02T00:00:00Z&timeout=0"
    assert client.get(gate).json["state"] == "missed"
    created = client.post("/backfill/up?from=2024-03-01T06:00:00Z&to=2024-03-01T08:00:00Z&chunk_hours=1")
    assert created.status_code == 201, created.json
    answer = client.get(gate).json
    assert answer["state"] == "waiting" and "running backfill" in answer["jobs"]["h"]["reason"], answer
    backfill_id = created.json["backfill_id"]
    for _ in range(2):
        chunk = client.post(f"/backfill/up/{backfill_id}/lease").json
        client.post(f"/backfill/up/{backfill_id}/close?chunk={chunk['chunk']}&attempt={chunk['attempt']}"
                    f"&lease_token={chunk['lease_token']}")
    assert client.get(gate).json["state"] == "ready"
