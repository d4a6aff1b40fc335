"""Late and stuck jobs: what /late, the metrics and the alerts report. Pure.

Settings (on a job, or workflow-wide under `.batchy`; the job's own wins):
    expected_by     "HH:MM": a success is due every day by then, in the job's timezone;
                    or a 5-field cron expression: a success is due between two firings
    max_age_hours   the last success may be at most this old
    max_coverage_lag_hours
                    complete data (the unbroken coverage from the job's first window)
                    may end at most this long before now
and on the workflow: max_open_hours, the longest a batch may stay open.

A job is late when the due time passed without a success in its period (since the
day's midnight for HH:MM, since the previous firing for a cron expression), or when
its last success is older than max_age_hours. A workflow whose batch stays open longer
than max_open_hours is stuck.
"""
from __future__ import annotations

from datetime import datetime, time, timedelta

from croniter import croniter

from . import fields, times
from .fields import CLOCK
from .health import last_success, open_since

# The settings this module gives a meaning to (declared in fields.py); a job may set the first two.
SETTINGS = ("expected_by", "max_age_hours", "max_coverage_lag_hours", "max_open_hours")
JOB_SETTINGS = tuple(key for key in SETTINGS if key in fields.JOB_SETTINGS)


def usable(key: str, value):
    """Return a stored lateness setting if valid, else None (setting_problem names it)."""
    if value is None:
        return None
    try:
        return fields.check(key, value)
    except ValueError:
        return None


def setting_problem(jobs: dict[str, dict], settings: dict) -> str | None:
    """Return what is wrong with a lateness setting stored for a workflow (a hand edit, or one
    stored before a rule was added), or None: the workflow's own report, never a crash."""
    for key in SETTINGS:
        if settings.get(key) is not None and usable(key, settings[key]) is None:
            return _problem(key, settings[key], "the workflow setting")
    for name in sorted(jobs):
        for key in JOB_SETTINGS:
            value = jobs[name].get(key) if isinstance(jobs[name], dict) else None
            if value is not None and usable(key, value) is None:
                return _problem(key, value, f"job {name!r}")
    return None


def _problem(key: str, value, where: str) -> str:
    try:
        fields.check(key, value)
    except ValueError as exc:
        return f"{where} {exc}; its lateness is not checked until the workflow file is fixed and loaded again"
    return ""


def due(expected_by: str, now: datetime, tz) -> tuple[datetime, datetime]:
    """Return (period start, due time) of the latest due time at or before now."""
    clock = CLOCK.fullmatch(expected_by)
    local = now.astimezone(tz)
    if clock:
        at = time(int(clock.group(1)), int(clock.group(2)))
        day = local.date() if local.time() >= at else local.date() - timedelta(days=1)
        noon = datetime.combine(day, time(12), tzinfo=tz)
        return times.start_of_day(noon, tz), datetime.combine(day, at, tzinfo=tz).astimezone(times.UTC)
    it = croniter(expected_by, local)
    due_at = it.get_prev(datetime)
    return it.get_prev(datetime).astimezone(times.UTC), due_at.astimezone(times.UTC)


def _text(moment: datetime, tz=times.UTC) -> str:
    """Return moment to the second: fractional hours would otherwise show microseconds."""
    return times.format_time(moment.replace(microsecond=0), tz)


def job_lateness(job: dict, settings: dict, now: datetime) -> dict | None:
    """Return {"kind": "late", "reason", "since"} when the job is late at now, else None."""
    # A bad stored value is skipped here (setting_problem reports it): never a crash for every workflow.
    expected_by = usable("expected_by", job.get("expected_by") or settings.get("expected_by"))
    max_age = usable("max_age_hours", job.get("max_age_hours") or settings.get("max_age_hours"))
    success = last_success(job)
    tz = times.job_zone(job)
    if expected_by:
        start, due_at = due(expected_by, now, tz)
        if success is None or success < start:
            return {"kind": "late", "since": _text(due_at, tz),
                    "reason": f"no success since {_text(start, tz)}, due by "
                              f"{_text(due_at, tz)} (expected_by {expected_by})"}
    if max_age:
        limit = now - timedelta(hours=max_age)
        if success is None or success < limit:
            last = _text(success, tz) if success else "never"
            return {"kind": "late", "since": _text((success or limit) + timedelta(hours=max_age), tz)
                    if success else None,
                    "reason": f"last success {last}, older than max_age_hours {max_age:g}"}
    return None


def covered_through(ledger: list, first_from: float | None = None) -> float | None:
    """Return the end (epoch s) of the unbroken coverage that starts at first_from.

    ledger: sorted, merged [start, end) intervals (the coverage ledger, or the effective
    coverage once dirty and failed ranges are taken out of it); first_from: the job's first
    from_date, by default the ledger's first start. A hole stops the coverage: nothing
    covered from first_from returns first_from itself. None when there is nothing to go by.
    """
    if first_from is None:
        if not ledger:
            return None
        first_from = ledger[0][0]
    for low, high in ledger:
        if low > first_from:
            break
        if first_from < high:
            return high
    return first_from


def coverage_lag(job: dict, settings: dict, now: datetime) -> dict | None:
    """Return {"kind": "coverage_lag", "reason", "since"} when the job's complete data ends more
    than max_coverage_lag_hours before now (job["coverage_through"], epoch s), else None."""
    limit = usable("max_coverage_lag_hours", job.get("max_coverage_lag_hours")
                   or settings.get("max_coverage_lag_hours"))
    through = job.get("coverage_through")
    if not limit or not isinstance(through, (int, float)):
        return None
    lag = now.timestamp() - through
    if lag <= limit * 3600:
        return None
    tz = times.job_zone(job)
    end = datetime.fromtimestamp(through, times.UTC)
    return {"kind": "coverage_lag", "since": _text(end + timedelta(hours=limit), tz),
            "reason": f"complete data through {_text(end, tz)}, {lag / 3600:.1f} h behind, more than "
                      f"max_coverage_lag_hours {limit:g}"}


def workflow_stuck(jobs: dict[str, dict], settings: dict, now: datetime) -> dict | None:
    """Return {"kind": "stuck", "reason", "since"} when the open batch outlived max_open_hours."""
    limit = usable("max_open_hours", settings.get("max_open_hours"))
    since = open_since(jobs)
    if not limit or since is None or now - since <= timedelta(hours=limit):
        return None
    return {"kind": "stuck", "since": _text(since + timedelta(hours=limit)),
            "reason": f"a batch open since {_text(since)}, longer than max_open_hours {limit:g}"}


def late_list(overview: dict[str, dict], now: datetime) -> list[dict]:
    """Return every late job, job behind on coverage (kind "coverage_lag") and stuck workflow of
    an overview (history.History.overview), and each workflow whose lateness cannot be checked
    (kind "unchecked": a value stored for it cannot be read)."""
    found = []
    for wf in sorted(overview):
        data = overview[wf]
        settings = data.get("settings") or {}
        if data.get("error"):
            found.append({"workflow": wf, "job": None, "kind": "unchecked", "since": None, "reason": data["error"]})
        stuck = workflow_stuck(data["jobs"], settings, now)
        if stuck:
            found.append({"workflow": wf, "job": None, **stuck})
        for name, job in data["jobs"].items():
            late = job_lateness(job, settings, now)
            if late:
                found.append({"workflow": wf, "job": name, **late})
            behind = coverage_lag(job, settings, now)
            if behind:
                found.append({"workflow": wf, "job": name, **behind})
    return found
