"""Time, as Batchy reads and writes it: parsing, formatting, zones, midnight.

Pure functions: no Redis, no Flask. Every stored time is ISO-8601 with an explicit
offset; a time given without one is UTC.
"""
from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

# A century of hours: the most any field or parameter counted in hours may take.
MAX_HOURS = 24 * 366 * 100

UTC = timezone.utc
# Times outside this range overflow once shifted by reprocess_hours or shown in a far
# time zone, which would break every later open of the workflow: refused at the door.
MIN_TIME = datetime(1900, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9000, 1, 1, tzinfo=UTC)
# What Batchy itself stores may start before MIN_TIME: a from_date truncated to midnight in its
# zone lies up to a day before the time it was truncated from. An export holds it; an import
# and a stored state's check accept it.
STORED_MIN_TIME = MIN_TIME - timedelta(days=2)

_OFFSET_NO_COLON = re.compile(r"([+-]\d\d)(\d\d)$")


@lru_cache(maxsize=256)
def zone(name: str) -> ZoneInfo | timezone:
    """Return the time zone called name (an IANA name such as Europe/Paris, or UTC)."""
    if name in ("UTC", "utc", "Z"):
        return UTC
    if not isinstance(name, str) or not name or len(name) > 64 or name.startswith(("/", ".")) or ".." in name:
        raise ValueError(f"unknown time zone {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}: use an IANA name such as Europe/Paris") from None


@lru_cache(maxsize=512)
def changes_offset(tz) -> bool:
    """Return True if tz's offset from UTC changes from 1970 to 2100 (DST, or a new offset):
    its clock then shows some wall times twice, so a wall time alone does not name an instant."""
    offsets = {datetime(year, month, day, tzinfo=UTC).astimezone(tz).utcoffset()
               for year in range(1970, 2101) for month in range(1, 13) for day in (1, 16)}
    return len(offsets) > 1


def job_zone(job: dict) -> ZoneInfo | timezone:
    return zone(job.get("timezone") or "UTC")


def parse_time(value, field: str = "date") -> datetime:
    """Return value as an aware datetime; a value without an offset is UTC.

    Accepts what a YAML author or an HTTP client writes: datetime and date objects,
    ISO-8601 strings with 'T' or a space, date only, 'Z', '+01:00' or '+0100'.
    """
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(0), tzinfo=UTC)
    if not isinstance(value, str):
        raise ValueError(f"{field} must be an ISO-8601 date or time, not {type(value).__name__} {value!r}")
    if len(value) <= 32:  # the common case, a time Batchy stored itself (format_time)
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            parsed = None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed
    text = value.strip()
    if len(text) > 64:
        raise ValueError(f"{field} is not a date: too long")
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    text = _OFFSET_NO_COLON.sub(r"\1:\2", text) if "T" in text or " " in text else text
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{field} {value!r} is not an ISO-8601 date or time (e.g. 2024-01-31, 2024-01-31T13:45:00+01:00)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_input_time(value, field: str = "date", earliest: datetime = MIN_TIME) -> datetime:
    """Return a time given by a person (file or request) as parse_time does, within the range.

    A stored window may end up just outside it after truncation, and must still read back:
    an import of what Batchy stored reads with earliest=STORED_MIN_TIME.
    """
    moment = parse_time(value, field)
    if not earliest <= moment < MAX_TIME:
        raise ValueError(f"{field} must be from {earliest.date()} to before {MAX_TIME.date()}, not {value!r}")
    return moment


def format_time(moment: datetime, tz=UTC) -> str:
    """Return moment as ISO-8601 with an explicit offset, in zone tz."""
    return moment.astimezone(tz).isoformat()


# The last `now` rendered per zone, {tz: (moment, text)}: every change in one second of
# Redis' clock renders the same batch_start, to_date, batch_end and event time.
_NOW_TEXTS: dict = {}


def format_now(moment: datetime, tz=UTC) -> str:
    """Return format_time(moment, tz) for the moment of a change, rendered once per second and zone.

    Threads share the memo: a tuple is replaced whole, and a reader checks its moment.
    """
    last = _NOW_TEXTS.get(tz)
    if last is not None and last[0] == moment:
        return last[1]
    text = format_time(moment, tz)
    _NOW_TEXTS[tz] = (moment, text)
    return text


def start_of_day(moment: datetime, tz) -> datetime:
    """Return the first instant of moment's calendar day in zone tz.

    On a day whose midnight does not exist (a DST jump at 00:00), zoneinfo maps the
    missing wall time with the earlier offset, which lands on the jump itself: the
    day's first instant. The result is never later than moment.
    """
    local = moment.astimezone(tz)
    midnight = datetime.combine(local.date(), time(0), tzinfo=tz).astimezone(UTC)
    return min(midnight, moment.astimezone(UTC))


def has_offset(value) -> bool:
    """Return True if a time as given carries its own offset (Z, +01:00, -5...)."""
    if isinstance(value, datetime):
        return value.tzinfo is not None
    if not isinstance(value, str):
        return False  # a date
    text = value.strip()
    split = re.search(r"[Tt ]", text)  # offsets follow the time; a date's dashes are not one
    return split is not None and re.search(r"[Zz+-]", text[split.end():]) is not None


def in_zone(moment: datetime, tz) -> datetime:
    """Return moment, or a wall time without an offset (naive) read in zone tz."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=tz)
