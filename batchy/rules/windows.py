"""Window policies: how far a window reaches. Pure: no Redis, no Flask.

With no policy a window ends at the open: [from_date, now), the seed's rule. A policy,
set on a job or workflow-wide under `.batchy` (the job's own wins), changes where it ends:

    settle_minutes    the window ends this long before now (rows that become visible late)
    batch_size        the end is the last boundary of this unit (hour, day, week, month)
                      in the job's timezone, so a run loads whole units, never a partial one
    week_start        the day weeks start on (monday by default)
    max_window_hours  a window is at most this long: a long outage is caught up in pieces

The newest end a window may have is `limit` = now - settle, floored to a unit boundary.
A window that reaches it is caught up; behind_seconds says how far it is from it.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import NamedTuple

from .times import UTC, start_of_day

UNITS = ("hour", "day", "week", "month")
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# The longest a unit can be (a DST day has 25 h): a max window shorter cannot hold one.
LONGEST_UNIT_HOURS = {"hour": 1, "day": 25, "week": 169, "month": 745}


@functools.lru_cache(maxsize=64)
def _minutes(minutes: float) -> timedelta:
    return timedelta(minutes=minutes)


@functools.lru_cache(maxsize=64)
def _hours(hours: float) -> timedelta:
    return timedelta(hours=hours)


@dataclass(frozen=True)
class Policy:
    max_window_hours: float | None = None
    settle_minutes: float = 0
    batch_size: str | None = None
    week_start: str = "monday"

    @property
    def active(self) -> bool:
        return self is not NO_POLICY and self != NO_POLICY  # most jobs have none: no field compared


NO_POLICY = Policy()
POLICY_FIELDS = tuple(f.name for f in dataclasses.fields(Policy))  # as a job or .batchy names them



def check_policy(fields: dict) -> None:
    """Raise ValueError if a policy's fields do not fit together."""
    size, limit = fields.get("batch_size"), fields.get("max_window_hours")
    if size and limit is not None and limit < LONGEST_UNIT_HOURS[size]:
        raise ValueError(f"max_window_hours {limit:g} is shorter than one batch_size {size} "
                         f"(up to {LONGEST_UNIT_HOURS[size]} h): no window could hold a whole {size}")
    if fields.get("week_start") not in (None, "monday") and size != "week":
        raise ValueError("week_start applies to batch_size week only")
    reprocess = fields.get("reprocess_hours") or 0
    if limit is not None and reprocess >= limit:  # the next from_date: the last to_date less reprocess_hours
        raise ValueError(f"reprocess_hours {reprocess:g} is not shorter than max_window_hours {limit:g}: each window "
                         "would start at or before the start of the one before, and the load would never move on")


def policy_of(job: dict, settings: dict) -> Policy:
    """Return the policy of a job: its own fields over the workflow's settings."""
    own = [k for k in POLICY_FIELDS if k in job]  # the common case: none, nowhere
    if not own and not settings:
        return NO_POLICY
    own, shared = tuple(map(job.get, POLICY_FIELDS)), tuple(map(settings.get, POLICY_FIELDS))
    try:
        return _policy(own, shared)
    except TypeError:  # an unhashable value (a hand-edited job): built, not remembered
        return _policy.__wrapped__(own, shared)


@functools.lru_cache(maxsize=1024)
def _policy(own: tuple, shared: tuple) -> Policy:
    """Return the Policy of a job's and its workflow's policy fields (in POLICY_FIELDS order),
    built once per combination: an open asks for each job's on every call."""
    merged = {k: v for k, v in zip(POLICY_FIELDS, shared) if v is not None}
    merged.update({k: v for k, v in zip(POLICY_FIELDS, own) if v is not None})
    return Policy(**merged) if merged else NO_POLICY


def floor_to_unit(moment: datetime, unit: str, tz, week_start: str = "monday") -> datetime:
    """Return the last boundary of unit at or before moment, in zone tz (DST-correct).

    A boundary is a wall time (the hour, midnight, the week's first midnight, the 1st):
    a day in Europe/Paris may last 23 or 25 hours. An hour boundary is an instant at which
    tz's clock shows a whole hour (hh:00:00): in Asia/Kolkata (+05:30) that is hh:30 UTC,
    and where a DST change of 30 minutes (Australia/Lord_Howe) skips or repeats the
    clock's hh:00, the hour across it lasts 90 minutes.
    """
    # Remembered by instant: two wall times of a repeated hour (fold 0 and 1) compare equal.
    return _floor_to_unit(moment.astimezone(UTC), unit, tz, week_start)


@functools.lru_cache(maxsize=4096)  # pure; the jobs of one open share their limit's boundary
def _floor_to_unit(moment: datetime, unit: str, tz, week_start: str) -> datetime:
    if unit == "hour":  # moment is in UTC already (floor_to_unit)
        return _floor_hour(moment, tz)
    local = moment.astimezone(tz)
    day = local.date()
    if unit == "week":
        day -= timedelta(days=(day.weekday() - WEEKDAYS.index(week_start)) % 7)
    elif unit == "month":
        day = day.replace(day=1)
    boundary = _midnight(day, tz)
    if boundary > moment:  # a midnight that does not exist landed after moment
        boundary = _midnight(day - timedelta(days=1), tz)
    return boundary


def _floor_hour(moment: datetime, tz) -> datetime:
    """Return the last instant at or before moment (UTC) at which tz's clock shows hh:00:00."""
    while True:
        local = moment.astimezone(tz)
        past = timedelta(minutes=local.minute, seconds=local.second, microseconds=local.microsecond)
        if not past:
            return moment
        # Back by what the clock shows past the hour; a DST change in between moved the
        # clock, so look again from there (it shows hh:30 after a 30-minute change).
        moment -= past


def _midnight(day, tz) -> datetime:
    """Return the first instant of a calendar day in tz (on a DST jump at 00:00, the jump)."""
    return start_of_day(datetime.combine(day, time(12), tzinfo=tz), tz)


class Window(NamedTuple):
    start: datetime
    end: datetime
    caught_up: bool
    behind_seconds: float


def window(start: datetime, now: datetime, policy: Policy, tz) -> Window:
    """Return the window a job opened at now extracts from start on.

    Never backwards: when nothing complete is newer than start (settle lag, a unit not
    yet over), the window is empty, [start, start), and caught up.
    """
    limit = now - _minutes(policy.settle_minutes) if policy.settle_minutes else now
    if policy.batch_size:
        limit = floor_to_unit(limit, policy.batch_size, tz, policy.week_start)
    end = limit
    if policy.max_window_hours is not None:
        cap = start + _hours(policy.max_window_hours)
        if cap < end:
            end = floor_to_unit(cap, policy.batch_size, tz, policy.week_start) if policy.batch_size else cap
            if end <= start:  # an unaligned start: at least reach the next boundary
                end = min(limit, cap)
    if end <= start:
        return Window(start, start, True, 0.0)
    return Window(start, end, end >= limit, max(0.0, (limit - end).total_seconds()))
