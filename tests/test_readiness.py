"""The readiness rule: success on the target date in the chosen zone, fail fast, never the wrong day."""
from datetime import date, datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from batchy.rules import readiness
from batchy.errors import JobNotFound

UTC = timezone.utc
PARIS = ZoneInfo("Europe/Paris")
LA = ZoneInfo("America/Los_Angeles")
DAY = date(2024, 3, 11)


def job(status, batch_end=None, **extra):
    return {"status": status, "batch_end": batch_end, "batch_id": 1, "batch_start": "2024-03-11T01:00:00+00:00", **extra}


@pytest.mark.parametrize(
    "value, tz, state",
    [
        (job("success", "2024-03-11T12:00:00+00:00"), UTC, "ready"),
        (job("success", "2024-03-10T23:59:59+00:00"), UTC, "waiting"),  # yesterday's success
        (job("success", "2024-03-12T00:00:01+00:00"), UTC, "waiting"),  # a later day is not this day
        (job("success", "2024-03-10T23:30:00+00:00"), PARIS, "ready"),  # 00:30 on the 11th in Paris
        (job("success", "2024-03-11T23:30:00+00:00"), PARIS, "waiting"),  # already the 12th in Paris
        (job("success", "2024-03-12T05:00:00+00:00"), LA, "ready"),  # still the 11th in Los Angeles
        (job("success", "2024-03-11T00:30:00+01:00"), UTC, "waiting"),  # stored offset is honoured
        (job("success", None), UTC, "waiting"),
        (job("success", "not a time"), UTC, "waiting"),
        (job("failed", "2024-03-11T08:00:00+00:00"), UTC, "failed"),
        (job("failed", "2024-03-10T08:00:00+00:00"), UTC, "waiting"),  # yesterday's failure: a rerun is due
        (job("open"), UTC, "waiting"),
        (job("new"), UTC, "waiting"),
    ],
)
def test_job_verdict(value, tz, state):
    assert readiness.job_verdict(value, DAY, tz)[0] == state


def test_reasons_say_why():
    assert "2024-03-10" in readiness.job_verdict(job("success", "2024-03-10T10:00:00+00:00"), DAY, UTC)[1]
    assert "open since" in readiness.job_verdict(job("open"), DAY, UTC)[1]
    assert readiness.job_verdict(job("new"), DAY, UTC)[1] == "never run"
    assert "disk full" in readiness.job_verdict(job("failed", "2024-03-11T08:00:00Z", message="disk full"), DAY, UTC)[1]


def test_workflow_ready_only_when_every_selected_job_is():
    jobs = {"a": job("success", "2024-03-11T10:00:00+00:00"), "b": job("open")}
    result = readiness.verdict(jobs, None, DAY, UTC)
    assert (result["state"], result["missing"]) == ("waiting", ["b"])
    assert readiness.verdict(jobs, ["a"], DAY, UTC)["state"] == "ready"


def test_one_failure_fails_the_workflow_at_once():
    jobs = {"a": job("failed", "2024-03-11T10:00:00+00:00"), "b": job("open")}
    result = readiness.verdict(jobs, None, DAY, UTC, "wf1")
    assert (result["state"], result["failed"], result["ready"]) == ("failed", ["a"], False)
    assert readiness.verdict(jobs, ["b"], DAY, UTC)["state"] == "waiting"


def test_unknown_selected_job_is_named():
    with pytest.raises(JobNotFound) as info:
        readiness.verdict({"a": job("new")}, ["a", "zz"], DAY, UTC, "wf1")
    assert info.value.context == {"workflow": "wf1", "job": "zz"}


def test_today_is_in_the_zone():
    moment = datetime(2024, 3, 11, 23, 30, tzinfo=UTC)
    assert readiness.today(moment, UTC) == date(2024, 3, 11)
    assert readiness.today(moment, PARIS) == date(2024, 3, 12)
