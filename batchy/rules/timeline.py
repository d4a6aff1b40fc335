"""The geometry of the coverage page's timeline. Pure: epoch seconds and zones in, pixels and labels out.

A period (a day, a week, a month of the page's zone, or everything) maps onto a strip
`width` pixels wide. Intervals are clipped to it and turned into marks; marks closer
than a pixel to each other merge into one, and a mark is never narrower than
MIN_WIDTH, so a lane never holds more than about width / MIN_WIDTH marks however many
intervals it is given (a year of hourly windows, a hundred holes, ten thousand chunks).
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple

from .times import UTC

ZOOMS = ("day", "week", "month", "all")
MIN_WIDTH = 1.0  # pixels: a sliver narrower than this is drawn this wide, so it stays visible
MIN_GAP = 1.0  # pixels: marks closer than this merge into one
WIDTH = 1000  # the strip's width in the SVG's own units


class Mark(NamedTuple):
    """One drawn rectangle: x and width in pixels, the span it stands for, and how many intervals it merges."""

    x: float
    width: float
    start: float
    end: float
    count: int


class Tick(NamedTuple):
    x: float
    label: str


def period(zoom: str, at: datetime, tz, extent: tuple[float, float] | None = None) -> tuple[float, float]:
    """Return [start, end) in epoch seconds of the day, week (from Monday) or month of zone tz holding at;
    for "all", extent (the data's first and last second) or the day of at when there is none."""
    if zoom == "all":
        if extent and extent[0] < extent[1]:
            return extent
        zoom = "day"
    local = at.astimezone(tz)
    first = local.date()
    if zoom == "week":
        first -= timedelta(days=first.weekday())
    elif zoom == "month":
        first = first.replace(day=1)
    start = datetime(first.year, first.month, first.day, tzinfo=tz)
    return start.timestamp(), _following(start, zoom, tz).timestamp()


def _following(start: datetime, zoom: str, tz) -> datetime:
    """Return the wall-clock midnight one day, week or month after start (a local midnight)."""
    if zoom == "month":
        year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
        return datetime(year, month, 1, tzinfo=tz)
    day = (start.replace(tzinfo=None) + timedelta(days=7 if zoom == "week" else 1)).date()
    return datetime(day.year, day.month, day.day, tzinfo=tz)


def neighbours(zoom: str, start: float, tz) -> tuple[datetime, datetime] | None:
    """Return the first instants of the periods before and after the one starting at start (None for "all")."""
    if zoom == "all":
        return None
    begin = datetime.fromtimestamp(start, UTC).astimezone(tz)
    local = begin.replace(tzinfo=None)
    if zoom == "month":
        year, month = (local.year - 1, 12) if local.month == 1 else (local.year, local.month - 1)
        before = datetime(year, month, 1, tzinfo=tz)
    else:
        day = (local - timedelta(days=7 if zoom == "week" else 1)).date()
        before = datetime(day.year, day.month, day.day, tzinfo=tz)
    return before, _following(datetime(local.year, local.month, local.day, tzinfo=tz), zoom, tz)


def marks(intervals, start: float, end: float, width: float = WIDTH, min_width: float = MIN_WIDTH,
          min_gap: float = MIN_GAP) -> list[Mark]:
    """Return the marks of intervals ([from, to] epoch seconds, sorted or not) within [start, end).

    Each is clipped to the period; those less than min_gap pixels apart merge into one mark;
    a mark narrower than min_width is widened to it (kept inside the strip).
    """
    if end <= start:
        return []
    scale = width / (end - start)
    found: list[list] = []
    for low, high in sorted(intervals):
        low, high = max(low, start), min(high, end)
        if high <= low:
            continue
        x0, x1 = (low - start) * scale, (high - start) * scale
        if found and x0 - found[-1][1] < min_gap:
            last = found[-1]
            last[1], last[3], last[4] = max(last[1], x1), max(last[3], high), last[4] + 1
        else:
            found.append([x0, x1, low, high, 1])
    result = []
    for x0, x1, low, high, count in found:
        if x1 - x0 < min_width:
            x0 = min(max(0.0, (x0 + x1 - min_width) / 2), width - min_width)
            x1 = x0 + min_width
        result.append(Mark(round(x0, 2), round(x1 - x0, 2), low, high, count))
    return result


# Tick steps, in seconds, from fine to coarse: the first that yields at most max_ticks labels is used.
_STEPS = [(3600, "hour"), (3 * 3600, "hour"), (6 * 3600, "hour"), (12 * 3600, "hour"), (86400, "day"),
          (7 * 86400, "week"), (None, "month"), (None, "year")]


def ticks(start: float, end: float, tz, width: float = WIDTH, max_ticks: int = 12) -> list[Tick]:
    """Return the time axis' labels within [start, end): wall-clock hours, midnights, Mondays, months
    or years of zone tz, the finest step that gives at most max_ticks of them."""
    if end <= start:
        return []
    scale = width / (end - start)
    for step, unit in _STEPS:
        if step is not None and (end - start) / step > max_ticks:
            continue
        moments = list(_boundaries(start, end, tz, unit, (step or 0) // 3600))
        if len(moments) <= max_ticks or unit == "year":
            shown = moments[:: max(1, -(-len(moments) // max_ticks))]
            return [Tick(round((m.timestamp() - start) * scale, 2), _label(m, unit)) for m in shown]
    return []


def _boundaries(start: float, end: float, tz, unit: str, hours: int):
    """Yield the local boundaries of unit (every `hours` hours for "hour") within [start, end)."""
    local = datetime.fromtimestamp(start, UTC).astimezone(tz)
    if unit == "hour":
        moment = local.replace(minute=0, second=0, microsecond=0)
        while moment.timestamp() < end:
            if moment.timestamp() >= start and moment.hour % hours == 0:
                yield moment
            moment = (moment.astimezone(UTC) + timedelta(hours=1)).astimezone(tz)
        return
    day = local.date()
    if unit == "week":
        day -= timedelta(days=day.weekday())
    elif unit == "month":
        day = day.replace(day=1)
    elif unit == "year":
        day = day.replace(month=1, day=1)
    moment = datetime(day.year, day.month, day.day, tzinfo=tz)
    while moment.timestamp() < end:
        if moment.timestamp() >= start:
            yield moment
        moment = _following(moment, {"year": "month"}.get(unit, unit), tz) if unit != "year" \
            else datetime(moment.year + 1, 1, 1, tzinfo=tz)


def _label(moment: datetime, unit: str) -> str:
    if unit == "hour":
        return moment.strftime("%H:%M") if moment.hour else moment.strftime("%a %d %H:%M")
    if unit in ("day", "week"):
        return moment.strftime("%a %d %b")
    if unit == "month":
        return moment.strftime("%b %Y")
    return moment.strftime("%Y")


def extent(*interval_lists) -> tuple[float, float] | None:
    """Return the first start and the last end of every interval given, or None when there is none."""
    lows = [min(low for low, _ in i) for i in interval_lists if i]
    highs = [max(high for _, high in i) for i in interval_lists if i]
    return (min(lows), max(highs)) if lows else None


def repairing(hole, spans: dict) -> object | None:
    """Return the key of spans ({key: merged [[from, to]...]}, e.g. a running backfill's chunks of a job)
    whose intervals cover the hole [from, to] entirely, or None."""
    low, high = hole
    for key, found in spans.items():
        if any(a <= low and high <= b for a, b in found):
            return key
    return None
