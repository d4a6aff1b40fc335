"""Window policies, pure: the table of docs/workflows.md, DST days, and the rules' edges."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from batchy.rules import times, windows
from batchy.rules.fields import check as check_field
from batchy.rules.windows import Policy

UTC = timezone.utc
PARIS = times.zone("Europe/Paris")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize("policy, now, start, end, caught_up, behind", [
    (Policy(batch_size="hour"), "2024-03-08 10:30", "2024-03-08 00:00", "2024-03-08 10:00", True, 0),
    (Policy(batch_size="hour", max_window_hours=24), "2024-03-08 10:30", "2024-03-01 00:00", "2024-03-02 00:00",
     False, 554400),
    (Policy(settle_minutes=45), "2024-03-08 10:30", "2024-03-08 09:00", "2024-03-08 09:45", True, 0),
    (Policy(batch_size="hour"), "2024-03-08 10:20", "2024-03-08 10:00", "2024-03-08 10:00", True, 0),
    (Policy(max_window_hours=2.5), "2024-03-08 10:20", "2024-03-08 00:00", "2024-03-08 02:30", False, 28200),
])
def test_the_documented_examples(policy, now, start, end, caught_up, behind):
    span = windows.window(at(start), at(now), policy, UTC)
    assert (span.start, span.end, span.caught_up, span.behind_seconds) == (at(start), at(end), caught_up, behind)


@pytest.mark.parametrize("now, start, end, hours", [
    ("2024-03-31 23:30", "2024-03-30 23:00", "2024-03-31 22:00", 23),  # spring forward: a 23-hour day
    ("2024-10-28 00:30", "2024-10-26 22:00", "2024-10-27 23:00", 25),  # fall back: a 25-hour day
])
def test_days_in_a_real_zone_follow_dst(now, start, end, hours):
    span = windows.window(at(start), at(now), Policy(batch_size="day"), PARIS)
    assert span.end == at(end) and (span.end - span.start).total_seconds() == hours * 3600


def test_a_midnight_that_does_not_exist_starts_the_day_at_the_jump():
    santiago = times.zone("America/Santiago")  # 2024-09-08 00:00 jumps to 01:00
    assert windows.floor_to_unit(at("2024-09-08 12:00"), "day", santiago) == at("2024-09-08 04:00")


def test_weeks_and_months_start_where_told():
    assert windows.floor_to_unit(at("2024-03-14 12:00"), "week", UTC) == at("2024-03-11 00:00")  # a Monday
    assert windows.floor_to_unit(at("2024-03-14 12:00"), "week", UTC, "sunday") == at("2024-03-10 00:00")
    assert windows.floor_to_unit(at("2024-03-14 12:00"), "month", PARIS) == at("2024-02-29 23:00")


def test_a_capped_window_from_an_unaligned_start_still_moves_forward():
    span = windows.window(at("2024-03-01 00:30"), at("2024-03-08 00:00"),
                          Policy(batch_size="day", max_window_hours=25), UTC)
    assert span.start < span.end == at("2024-03-02 00:00")


@pytest.mark.parametrize("field, value", [("max_window_hours", 0), ("max_window_hours", -1), ("settle_minutes", -5),
                                          ("batch_size", "fortnight"), ("week_start", "someday"),
                                          ("max_window_hours", True), ("settle_minutes", float("nan"))])
def test_bad_fields_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        check_field(field, value)


@pytest.mark.parametrize("fields", [{"batch_size": "day", "max_window_hours": 24},
                                    {"batch_size": "month", "max_window_hours": 744},
                                    {"week_start": "sunday"}])
def test_policies_that_cannot_work_are_refused(fields):
    with pytest.raises(ValueError):
        windows.check_policy(fields)


def test_a_jobs_own_policy_wins_over_the_workflows():
    policy = windows.policy_of({"batch_size": "hour"}, {"batch_size": "day", "settle_minutes": 5})
    assert policy == Policy(batch_size="hour", settle_minutes=5)
    assert not windows.policy_of({}, {}).active
    assert windows.policy_of({"batch_size": "hour"}, {}) is windows.policy_of({"batch_size": "hour", "x": 1}, {})


def test_an_unhashable_value_of_a_hand_edited_job_is_still_read():
    assert windows.policy_of({"batch_size": ["hour"]}, {}) == Policy(batch_size=["hour"])


def test_the_two_instances_of_a_repeated_hour_floor_apart():
    from zoneinfo import ZoneInfo

    paris = ZoneInfo("Europe/Paris")
    first = datetime(2024, 10, 27, 2, 30, tzinfo=paris)  # 00:30 UTC, summer time
    second = datetime(2024, 10, 27, 2, 30, fold=1, tzinfo=paris)  # 01:30 UTC, winter time
    assert windows.floor_to_unit(first, "hour", paris) == datetime(2024, 10, 27, 0, 0, tzinfo=timezone.utc)
    assert windows.floor_to_unit(second, "hour", paris) == datetime(2024, 10, 27, 1, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("text, refused", [
    ("j:\n  max_window_hours: 24\n  reprocess_hours: 100\n", True),  # windows walked back 76 h an open
    ("j:\n  max_window_hours: 24\n  reprocess_hours: 24\n", True),  # the same window forever
    (".batchy:\n  max_window_hours: 6\nj:\n  reprocess_hours: 8\n", True),  # the workflow's window, the job's overlap
    ("j:\n  max_window_hours: 24\n  reprocess_hours: 23.5\n", False),
])
def test_a_reprocess_overlap_as_long_as_the_window_is_refused(client, write_cfg, text, refused):
    write_cfg("rp", text)
    r = client.post("/load_cfg/rp")
    if refused:
        assert r.status_code == 400 and r.json["error"] == "invalid_config", r.json
        assert "reprocess_hours" in r.json["message"] and "never move on" in r.json["message"], r.json
        assert r.json["field"] == "reprocess_hours" and r.json["line"] == text.split("\n").index(
            next(line for line in text.split("\n") if "reprocess_hours" in line)) + 1, r.json
    else:
        assert r.status_code == 200, r.json
