"""The coverage ledger: every successful window of a job, as merged intervals. Pure.

A job's ledger is a sorted list of disjoint [start, end) intervals in epoch seconds:
a window that touches or overlaps one is merged into it, so a year of contiguous
hourly windows is one interval, and the ledger grows only with the holes in it.
A hole is a stretch between the job's first covered start and its latest covered end
that no successful window (batch or backfill chunk) covered: skipped data.

Late data and attested coverage take parts of it back (`Ledger`): a range an operator
invalidated is dirty, a window closed with `dq=fail` failed its quality check. Both are
kept as interval lists beside the ledger, and count among the holes until a passing
window covers them again: the effective coverage is the ledger minus both.
"""
from __future__ import annotations

import bisect
import functools
import json
from typing import NamedTuple

from .times import MAX_TIME, STORED_MIN_TIME

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


def subtract(intervals: list[Interval], taken: list[Interval]) -> list[Interval]:
    """Return the parts of intervals (merged, sorted) not inside any of taken."""
    result: list[Interval] = []
    taken = union(taken, [])
    for low, high in intervals:
        result += [span for span in holes(clip(taken, low, high), low, high) if span[1] > span[0]]
    return result


class Ledger(NamedTuple):
    """A job's coverage: its successful windows merged, and what of them does not count now.

    records: the rows of each interval of windows (same order), summed while its windows
    only touched; None where they overlapped (a rerun would count rows twice) or one was
    closed without a count.
    """

    windows: list[Interval]
    dirty: list[Interval] = []
    failed: list[Interval] = []
    records: list | None = None

    @property
    def effective(self) -> list[Interval]:
        """Return the coverage that counts: windows minus dirty ranges and quality failures."""
        if not self.dirty and not self.failed:
            return self.windows
        return subtract(self.windows, union(self.dirty, self.failed))

    def holes(self, start: float | None = None, end: float | None = None) -> list[Interval]:
        """Return the holes of the effective coverage in [start, end) (default: the ledger's extent)."""
        if start is None and self.windows:
            start = self.windows[0][0]
        if end is None and self.windows:
            end = self.windows[-1][1]
        return holes(self.effective, start, end)


def succeeded(ledger: Ledger, start: float, end: float, passed: bool = True,
              records: int | None = None, cleans: bool = True) -> Ledger:
    """Return ledger after a successful window [start, end): covered again, unless it failed its
    quality check. cleans=False: the run started before the latest invalidation, so the dirty
    ranges under its window stay dirty (it may have read the data before the late rows came)."""
    if passed and records is None and ledger.records is None and not (ledger.dirty or ledger.failed):
        return Ledger(add(ledger.windows, start, end))  # windows only: the usual close
    windows = add(ledger.windows, start, end)
    span = [[start, end]]
    dirty = (subtract(ledger.dirty, span) if cleans else ledger.dirty) if ledger.dirty else []
    failed = subtract(ledger.failed, span) if ledger.failed else []
    if not passed:
        failed = union(failed, span)
    return Ledger(windows, dirty, failed, _summed(ledger, windows, start, end, records))


def _summed(ledger: Ledger, windows: list[Interval], start: float, end: float, records: int | None) -> list:
    """Return the records of windows: the merged interval's is the sum of what it absorbed, if known."""
    if records is None and ledger.records is None:
        return None  # no rows ever said: none kept (Book.put writes nothing), at no cost per close
    old = ledger.records if ledger.records is not None and len(ledger.records) == len(ledger.windows) \
        else [None] * len(ledger.windows)
    by_interval = {(low, high): count for (low, high), count in zip(ledger.windows, old)}
    result = []
    for low, high in windows:
        if (low, high) in by_interval:  # unchanged by the window, or a rerun inside it: rows counted twice
            result.append(None if low < end and high > start else by_interval[(low, high)])
            continue
        absorbed = [(a, b, by_interval[(a, b)]) for a, b in ledger.windows if a <= high and b >= low]
        overlaps = any(a < end and b > start for a, b, _ in absorbed)
        counts = [records] + [count for _, _, count in absorbed]
        result.append(None if overlaps or any(c is None for c in counts) else sum(counts))
    return result


def invalidated(ledger: Ledger, start: float, end: float) -> Ledger:
    """Return ledger with the covered part of [start, end) dirty (late data arrived for it)."""
    spoiled = subtract(clip(ledger.windows, start, end), ledger.failed)
    return ledger._replace(dirty=union(ledger.dirty, spoiled))


# The epochs a stored ledger may hold: the times Batchy stores (a hand edit's 1e300 is none).
EARLIEST, LATEST = STORED_MIN_TIME.timestamp(), MAX_TIME.timestamp()


def loads(text: str | None) -> list[Interval]:
    """Return a ledger from its stored JSON text; ValueError if it is not one."""
    if not text:
        return []
    value = json.loads(text)
    if not isinstance(value, list) or not all(
            isinstance(i, list) and len(i) == 2 and all(isinstance(x, (int, float)) and EARLIEST <= x <= LATEST
                                                        for x in i) and i[0] < i[1]
            for i in value):
        raise ValueError("not a list of [start, end] pairs")
    return value


@functools.lru_cache(maxsize=4096)
def _loads(text: str) -> tuple:
    return tuple(tuple(i) for i in loads(text))


def loads_cached(text: str) -> list[Interval]:
    """Return loads(text), parsed and checked once per text (a ledger is read on every close)."""
    return [list(i) for i in _loads(text)]
