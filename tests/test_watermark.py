"""Table-driven tests of the watermark rules."""
from datetime import datetime, timedelta, timezone

import pytest

from batchy.rules import times
from batchy.rules.fields import check as check_field
from batchy.rules.jobs import Status
from batchy.rules import watermark as wm
from batchy.errors import JobNotFound, NotOpen, StaleBatch

UTC = timezone.utc
NOW = datetime(2024, 3, 10, 12, 0, 0, tzinfo=UTC)


def job(**fields):
    base = {"status": "new", "batch_id": None, "from_date": None, "batch_start": None,
            "reprocess_hours": 0, "trunc_start": False, "timezone": "UTC"}
    base.update(fields)
    return base


@pytest.mark.parametrize(
    "fields, expected",
    [
        # never run, no from_date: the beginning of time
        ({}, "1970-01-01T00:00:00+00:00"),
        # never run, configured from_date is used as is
        ({"from_date": "2024-01-01T00:00:00+00:00"}, "2024-01-01T00:00:00+00:00"),
        # success: previous batch_start minus reprocess_hours
        ({"status": "success", "from_date": "2024-01-01T00:00:00+00:00",
          "batch_start": "2024-03-09T12:00:00+00:00", "reprocess_hours": 2}, "2024-03-09T10:00:00+00:00"),
        # fractional hours
        ({"status": "success", "batch_start": "2024-03-09T12:00:00+00:00", "reprocess_hours": 0.25},
         "2024-03-09T11:45:00+00:00"),
        ({"status": "success", "batch_start": "2024-03-09T12:00:00+00:00", "reprocess_hours": 1.5},
         "2024-03-09T10:30:00+00:00"),
        # failed: the same window again, reprocess_hours not applied twice
        ({"status": "failed", "from_date": "2024-03-08T10:00:00+00:00",
          "batch_start": "2024-03-09T12:00:00+00:00", "reprocess_hours": 2}, "2024-03-08T10:00:00+00:00"),
        # open and never closed (crash): the same window again
        ({"status": "open", "from_date": "2024-03-08T10:00:00+00:00",
          "batch_start": "2024-03-09T12:00:00+00:00"}, "2024-03-08T10:00:00+00:00"),
        # new with a from_date that was never run
        ({"status": "new", "from_date": "2024-02-01T05:00:00+00:00",
          "batch_start": "2024-03-09T12:00:00+00:00"}, "2024-02-01T05:00:00+00:00"),
        # truncation to midnight UTC
        ({"status": "success", "batch_start": "2024-03-09T12:00:00+00:00", "reprocess_hours": 2,
          "trunc_start": True}, "2024-03-09T00:00:00+00:00"),
        # truncation crosses back a day when reprocess_hours does
        ({"status": "success", "batch_start": "2024-03-09T01:00:00+00:00", "reprocess_hours": 2,
          "trunc_start": True}, "2024-03-08T00:00:00+00:00"),
        # success without a batch_start (loaded verbatim): keep from_date
        ({"status": "success", "from_date": "2024-01-05T00:00:00+00:00"}, "2024-01-05T00:00:00+00:00"),
    ],
)
def test_next_from_date(fields, expected):
    assert times.format_time(wm.next_from_date(job(**fields))) == expected


@pytest.mark.parametrize(
    "tz, batch_start, expected_local",
    [
        # New York, DST starts 2024-03-10 02:00 local: midnight is still EST (-05:00)
        ("America/New_York", "2024-03-10T16:00:00+00:00", "2024-03-10T00:00:00-05:00"),
        # the day after the change: midnight is EDT (-04:00)
        ("America/New_York", "2024-03-11T16:00:00+00:00", "2024-03-11T00:00:00-04:00"),
        # DST ends 2024-11-03 02:00 local: midnight is EDT, the day is 25 hours long
        ("America/New_York", "2024-11-03T23:00:00+00:00", "2024-11-03T00:00:00-04:00"),
        # Paris: 23:30 UTC is already the next local day
        ("Europe/Paris", "2024-06-01T23:30:00+00:00", "2024-06-02T00:00:00+02:00"),
        # Sao Paulo 2018-11-04: clocks jumped from 00:00 to 01:00, midnight did not exist;
        # the day starts at 01:00 local (03:00 UTC)
        ("America/Sao_Paulo", "2018-11-04T15:00:00+00:00", "2018-11-04T01:00:00-02:00"),
        # Asia/Kolkata has a half-hour offset
        ("Asia/Kolkata", "2024-03-09T20:00:00+00:00", "2024-03-10T00:00:00+05:30"),
    ],
)
def test_truncation_in_time_zone(tz, batch_start, expected_local):
    j = job(status="success", batch_start=batch_start, trunc_start=True, timezone=tz)
    start = wm.next_from_date(j)
    assert times.format_time(start, times.zone(tz)) == expected_local
    assert start <= times.parse_time(batch_start)  # truncation never moves the watermark forward


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "2", True, None, 10**9])
def test_reprocess_hours_must_be_a_sane_number(bad):
    with pytest.raises(ValueError):
        check_field("reprocess_hours", bad)


def test_open_sets_the_window_and_clears_the_previous_outcome():
    jobs = {
        "a": job(status="success", batch_start="2024-03-09T12:00:00+00:00", reprocess_hours=1,
                 batch_end="2024-03-09T12:30:00+00:00", records_processed=10, message="done"),
        "b": job(status="failed", from_date="2024-03-01T00:00:00+00:00", timezone="Europe/Paris"),
    }
    opened = wm.open_jobs(jobs, NOW, 42)
    assert opened["a"]["from_date"] == "2024-03-09T11:00:00+00:00"
    assert opened["a"]["to_date"] == opened["a"]["batch_start"] == "2024-03-10T12:00:00+00:00"
    assert opened["b"]["from_date"] == "2024-03-01T01:00:00+01:00"  # rendered in the job's zone
    assert opened["b"]["to_date"] == "2024-03-10T13:00:00+01:00"
    for j in opened.values():
        assert j["status"] == "open" and j["batch_id"] == 42
        assert j["batch_end"] is None and j["records_processed"] is None and j["message"] is None
    assert jobs["a"]["status"] == "success"  # inputs are not mutated


def test_successive_windows_leave_no_gap():
    j = job(from_date="2024-01-01T00:00:00+00:00", reprocess_hours=0)
    now = NOW
    previous_to = None
    for step in range(5):
        j = wm.open_jobs({"j": j}, now, step + 1)["j"]
        if previous_to is not None:
            assert times.parse_time(j["from_date"]) <= times.parse_time(previous_to)
        previous_to = j["to_date"]
        j = wm.close_jobs("wf", {"j": j}, Status.SUCCESS, now + timedelta(minutes=5))["j"]
        now += timedelta(hours=1)


def test_abandoned_jobs_are_the_open_ones():
    jobs = {"a": job(status="open", batch_id=7), "b": job(status="success", batch_id=7), "c": job()}
    assert list(wm.abandoned_jobs(jobs, 8)) == [7]
    snapshot = wm.abandoned_jobs(jobs, 8)[7]
    assert list(snapshot) == ["a"] and snapshot["a"]["status"] == "abandoned"


def test_close_marks_open_jobs_only_and_records_the_outcome():
    jobs = {"a": job(status="open", batch_id=5, batch_start="2024-03-10T11:00:00+00:00"),
            "b": job(status="success", batch_id=5)}
    closed = wm.close_jobs("wf", jobs, Status.SUCCESS, NOW, current_batch_id=5, records_processed=3, message="ok")
    assert list(closed) == ["a"]
    assert closed["a"]["status"] == "success" and closed["a"]["batch_end"] == "2024-03-10T12:00:00+00:00"
    assert closed["a"]["records_processed"] == 3 and closed["a"]["message"] == "ok"
    assert wm.success_marks(closed) == {
        "a": {"batch_id": 5, "start": "2024-03-10T11:00:00+00:00", "end": "2024-03-10T12:00:00+00:00"}}


def test_a_failure_leaves_no_success_mark():
    jobs = {"a": job(status="open", batch_id=5)}
    failed = wm.close_jobs("wf", jobs, Status.FAILED, NOW, current_batch_id=5)
    assert failed["a"]["status"] == "failed" and wm.success_marks(failed) == {}


def test_next_from_date_override_is_used_exactly_once():
    j = job(status="success", batch_start="2024-03-09T12:00:00+00:00", reprocess_hours=2, trunc_start=True,
            next_from_date="2024-02-01T07:30:00+00:00")
    assert times.format_time(wm.next_from_date(j)) == "2024-02-01T07:30:00+00:00"  # not truncated
    opened = wm.open_jobs({"j": j}, NOW, 1)["j"]
    assert opened["from_date"] == "2024-02-01T07:30:00+00:00" and "next_from_date" not in opened


def test_set_next_from_date_is_refused_while_open_unless_forced():
    from batchy.errors import BatchOpen
    jobs = {"a": job(status="open", batch_id=3), "b": job()}
    moment = datetime(2024, 1, 1, tzinfo=UTC)
    with pytest.raises(BatchOpen):
        wm.set_next_from_date("wf", jobs, {"a": moment})
    assert wm.set_next_from_date("wf", jobs, {"a": moment}, force=True)["a"]["next_from_date"] == \
        "2024-01-01T00:00:00+00:00"
    changed = wm.set_next_from_date("wf", jobs, {"b": moment})
    assert changed["b"]["from_date"] == changed["b"]["next_from_date"]  # a new job shows it as its from_date


@pytest.mark.parametrize("status", ["new", "success", "failed"])
def test_closing_what_is_not_open_names_its_state(status):
    with pytest.raises(NotOpen) as err:
        wm.close_jobs("wf", {"a": job(status=status)}, Status.SUCCESS, NOW)
    assert status in err.value.message and err.value.context["states"] == {"a": status}


def test_close_of_one_job_and_unknown_job():
    jobs = {"a": job(status="open", batch_id=1), "b": job(status="open", batch_id=1)}
    assert list(wm.close_jobs("wf", jobs, Status.FAILED, NOW, job="b", current_batch_id=1)) == ["b"]
    with pytest.raises(JobNotFound):
        wm.close_jobs("wf", jobs, Status.FAILED, NOW, job="zz")


def test_stale_batch_id_is_refused():
    jobs = {"a": job(status="open", batch_id=9)}
    with pytest.raises(StaleBatch):
        wm.close_jobs("wf", jobs, Status.SUCCESS, NOW, batch_id=8, current_batch_id=9)
    assert wm.close_jobs("wf", jobs, Status.SUCCESS, NOW, batch_id=9, current_batch_id=9)


def test_exclusive_workflows_refuse_a_second_open_until_the_lease_expires():
    from batchy.errors import BatchOpen
    jobs = {"a": job(status="open", batch_id=7, batch_start="2024-03-10T10:00:00+00:00"), "b": job()}
    wm.check_exclusive("wf", jobs, NOW, {}, 7)  # not exclusive: the seed's rerun
    with pytest.raises(BatchOpen) as err:
        wm.check_exclusive("wf", jobs, NOW, {"exclusive": True, "lease_hours": 3}, 7)
    assert err.value.context["batch_id"] == 7 and "lease 3 h" in err.value.message
    wm.check_exclusive("wf", jobs, NOW, {"exclusive": True, "lease_hours": 1.5}, 7)  # 2 h open: expired
    with pytest.raises(BatchOpen):
        wm.check_exclusive("wf", jobs, NOW, {"exclusive": True}, 7)  # no lease: never expires
    closed = {"a": job(status="success", batch_id=7)}
    wm.check_exclusive("wf", closed, NOW, {"exclusive": True}, 7)


def test_a_window_truncated_below_the_input_range_still_reruns():
    j = job(status="failed", from_date="1900-01-01T00:00:00+00:00", trunc_start=True, timezone="Asia/Tokyo")
    opened = wm.open_jobs({"j": j}, NOW, 1)["j"]
    again = wm.open_jobs({"j": dict(opened, status="failed")}, NOW, 2)["j"]
    assert again["from_date"] == opened["from_date"]
    assert times.parse_time(opened["from_date"]) <= times.parse_time("1900-01-01T00:00:00+00:00")
