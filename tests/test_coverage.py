"""The coverage ledger, pure: merging as it goes, holes, and its size over a year."""
from __future__ import annotations

import json

import pytest

from batchy.rules import coverage


def test_windows_merge_when_they_touch_or_overlap():
    ledger = []
    for start, end in [(0, 10), (20, 30), (10, 20), (25, 40), (50, 60)]:
        ledger = coverage.add(ledger, start, end)
    assert ledger == [[0, 40], [50, 60]]
    assert coverage.add(ledger, 5, 5) == ledger  # an empty window covers nothing
    assert coverage.add(ledger, 35, 55) == [[0, 60]]


def test_holes_lie_between_the_first_and_the_latest_covered_time_or_the_range_asked():
    ledger = [[0, 10], [20, 30], [40, 50]]
    assert coverage.holes(ledger) == [[10, 20], [30, 40]]
    assert coverage.holes(ledger, 5, 45) == [[10, 20], [30, 40]]
    assert coverage.holes(ledger, -5, 60) == [[-5, 0], [10, 20], [30, 40], [50, 60]]
    assert coverage.holes([], 0, 5) == [[0, 5]] and coverage.holes([]) == []
    assert coverage.clip(ledger, 5, 25) == [[5, 10], [20, 25]]
    assert coverage.covers(ledger, 21, 29) and not coverage.covers(ledger, 5, 15)


def test_a_year_of_hourly_windows_is_one_small_interval():
    ledger = []
    for hour in range(366 * 24):
        ledger = coverage.add(ledger, hour * 3600.0, (hour + 1) * 3600.0)
    assert ledger == [[0.0, 366 * 24 * 3600.0]]
    assert len(json.dumps(ledger)) < 40  # bytes kept in Redis for the job


@pytest.mark.parametrize("text", ["{}", "[[1]]", "[[2, 1]]", '[["a", 2]]', "nope", "[[1e300, 1e301]]", "[[0, NaN]]"])
def test_a_ledger_that_is_not_one_is_refused(text):
    with pytest.raises(ValueError):
        coverage.loads(text)


def test_the_union_of_two_ledgers_is_what_adding_each_interval_gives():
    import random

    rng = random.Random(3)
    for _ in range(200):
        first, second = [], []
        for ledger in (first, second):
            for _ in range(rng.randint(0, 8)):
                low = rng.randint(0, 100)
                ledger[:] = coverage.add(ledger, low, low + rng.randint(1, 15))
        expected = first
        for low, high in second:
            expected = coverage.add(expected, low, high)
        assert coverage.union(first, second) == expected


def test_the_union_of_two_long_ledgers_is_one_pass():
    import time

    first = [[i * 10, i * 10 + 5] for i in range(20_000)]
    second = [[i * 10 + 5, i * 10 + 7] for i in range(20_000)]
    started = time.process_time()
    merged = coverage.union(first, second)
    assert time.process_time() - started < 2  # adding one at a time took minutes
    assert len(merged) == 20_000 and merged[0] == [0, 7]
