"""The coverage ledger: every successful window of a job, as merged intervals. Pure.

A job's ledger is a sorted list of disjoint [start, end) intervals in epoch seconds:
a window that touches or overlaps one is merged into it, so a year of contiguous
hourly windows is one interval, and the ledger grows only with the holes in it.
A hole is a stretch between the job's first covered start and its latest covered end
that no successful window (batch or backfill chunk) covered: skipped data.
"""
from __future__ import annotations

import bisect
import functools
import json

Interval = list  # [start, end], epoch seconds, start < end


def add(intervals: list[Interval], start: float, end: float) -> list[Interval]:
    """Return intervals with [start, end) merged in (a new list; the input is not changed)."""
    if end <= start:
        return intervals
    result = []
    placed = False
    for low, high in intervals:
        if high < start:
            result.append([low, high])
        elif low > end:
            if not placed:
                result.append([start, end])
                placed = True
            result.append([low, high])
        else:  # overlaps or touches: absorb
            start, end = min(start, low), max(end, high)
    if not placed:
        result.append([start, end])
    result.sort()
    return result


def union(first: list[Interval], second: list[Interval]) -> list[Interval]:
    """Return the merged union of two ledgers, in one pass over both (a new list)."""
    result: list[Interval] = []
    for low, high in sorted(first + second):
        if result and low <= result[-1][1]:  # overlaps or touches the last one
            result[-1][1] = max(result[-1][1], high)
        else:
            result.append([low, high])
    return result


def holes(intervals: list[Interval], start: float | None = None, end: float | None = None) -> list[Interval]:
    """Return the stretches of [start, end) not covered (default: first start to last end)."""
    if not intervals:
        return [[start, end]] if start is not None and end is not None and start < end else []
    start = intervals[0][0] if start is None else start
    end = intervals[-1][1] if end is None else end
    gaps, cursor = [], start
    for low, high in intervals:
        if high <= cursor:
            continue
        if low >= end:
            break
        if low > cursor:
            gaps.append([cursor, min(low, end)])
        cursor = max(cursor, high)
    if cursor < end:
        gaps.append([cursor, end])
    return gaps


def clip(intervals: list[Interval], start: float | None, end: float | None) -> list[Interval]:
    """Return the parts of intervals inside [start, end)."""
    low_bound = float("-inf") if start is None else start
    high_bound = float("inf") if end is None else end
    return [[max(low, low_bound), min(high, high_bound)] for low, high in intervals
            if high > low_bound and low < high_bound]


def covers(intervals: list[Interval], start: float, end: float) -> bool:
    """Return True if [start, end) lies inside one interval."""
    i = bisect.bisect_right([low for low, _ in intervals], start) - 1
    return i >= 0 and intervals[i][1] >= end


def covers_all(intervals: list[Interval], spans: list[Interval]) -> bool:
    """Return True if every span lies inside one interval: one pass over both, each sorted."""
    i = 0
    for start, end in spans:
        while i < len(intervals) and intervals[i][1] < end:
            i += 1
        if i == len(intervals) or intervals[i][0] > start:
            return False
    return True


def loads(text: str | None) -> list[Interval]:
    """Return a ledger from its stored JSON text; ValueError if it is not one."""
    if not text:
        return []
    value = json.loads(text)
    if not isinstance(value, list) or not all(
            isinstance(i, list) and len(i) == 2 and all(isinstance(x, (int, float)) for x in i) and i[0] < i[1]
            for i in value):
        raise ValueError("not a list of [start, end] pairs")
    return value


@functools.lru_cache(maxsize=4096)
def _loads(text: str) -> tuple:
    return tuple(tuple(i) for i in loads(text))


def loads_cached(text: str) -> list[Interval]:
    """Return loads(text), parsed and checked once per text (a ledger is read on every close)."""
    return [list(i) for i in _loads(text)]
