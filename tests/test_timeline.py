"""The coverage page's geometry, pure: periods, marks (clipped, merged, never thinner than a pixel), ticks."""
from __future__ import annotations

from datetime import datetime

import pytest

from batchy.rules import timeline
from batchy.rules.times import UTC, zone

PARIS = zone("Europe/Paris")
DAY = 86400


def at(text: str, tz=UTC) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=tz)


@pytest.mark.parametrize("zoom, start, end", [
    ("day", "2024-03-31T00:00", "2024-04-01T00:00"),  # spring forward: a 23-hour day
    ("week", "2024-03-25T00:00", "2024-04-01T00:00"),  # from Monday
    ("month", "2024-03-01T00:00", "2024-04-01T00:00"),
])
def test_a_period_runs_from_a_local_midnight_to_the_next_in_the_pages_zone(zoom, start, end):
    first, last = timeline.period(zoom, at("2024-03-31T15:00", PARIS), PARIS)
    assert (first, last) == (at(start, PARIS).timestamp(), at(end, PARIS).timestamp())
    if zoom == "day":
        assert last - first == 23 * 3600


def test_everything_is_the_datas_extent_or_the_day_when_there_is_none():
    assert timeline.period("all", at("2024-01-05T10:00"), UTC, (100.0, 900.0)) == (100.0, 900.0)
    assert timeline.period("all", at("2024-01-05T10:00"), UTC, None) == timeline.period("day", at("2024-01-05T10:00"), UTC)
    assert timeline.extent([[50, 60], [10, 20]], [], [[5, 8]]) == (5, 60)
    assert timeline.extent([], []) is None


def test_previous_and_next_periods_step_by_wall_clock_across_a_year_end():
    start, _ = timeline.period("month", at("2024-01-10T12:00", PARIS), PARIS)
    before, after = timeline.neighbours("month", start, PARIS)
    assert (before, after) == (at("2023-12-01T00:00", PARIS), at("2024-02-01T00:00", PARIS))
    start, _ = timeline.period("day", at("2024-03-31T12:00", PARIS), PARIS)
    before, after = timeline.neighbours("day", start, PARIS)
    assert (before, after) == (at("2024-03-30T00:00", PARIS), at("2024-04-01T00:00", PARIS))
    assert timeline.neighbours("all", start, PARIS) is None


def test_marks_are_clipped_to_the_period_and_scaled_to_the_width():
    found = timeline.marks([[-50, 250], [500, 600], [900, 2000]], 0, 1000, width=100)
    assert [(m.x, m.width) for m in found] == [(0, 25), (50, 10), (90, 10)]
    assert [(m.start, m.end, m.count) for m in found] == [(0, 250, 1), (500, 600, 1), (900, 1000, 1)]
    assert timeline.marks([[2000, 3000]], 0, 1000) == [] and timeline.marks([[0, 1]], 5, 5) == []


def test_slivers_closer_than_a_pixel_merge_into_one_mark_at_least_a_pixel_wide():
    # 1000 px for a year: an hour is 0.11 px. Three one-hour holes an hour apart are one mark.
    year = 365 * DAY
    holes = [[h * 3600, h * 3600 + 3600] for h in (100, 102, 104)] + [[200 * DAY, 200 * DAY + 3600]]
    found = timeline.marks(holes, 0, year)
    assert [m.count for m in found] == [3, 1]
    assert all(m.width >= timeline.MIN_WIDTH for m in found)
    assert found[0].start == 100 * 3600 and found[0].end == 105 * 3600
    # A sliver at the very end stays inside the strip.
    last = timeline.marks([[year - 1, year]], 0, year)[0]
    assert last.x + last.width <= timeline.WIDTH


def test_ten_thousand_intervals_make_at_most_one_mark_per_pixel():
    hours = [[h * 3600, h * 3600 + 1800] for h in range(10_000)]
    found = timeline.marks(hours, 0, 10_000 * 3600, width=1000)
    assert len(found) <= 1000 // timeline.MIN_GAP + 1
    assert sum(m.count for m in found) == 10_000
    for a, b in zip(found, found[1:]):
        assert a.x + a.width <= b.x  # merged marks never overlap


@pytest.mark.parametrize("zoom, first, x", [("day", "Sun 31 00:00", 0), ("week", "Mon 25 Mar", 0),
                                           ("month", "Mon 04 Mar", 1000 * 72 / 743)])  # its Mondays; 743 h: spring forward
def test_the_axis_labels_are_local_boundaries_of_the_pages_zone(zoom, first, x):
    start, end = timeline.period(zoom, at("2024-03-31T15:00", PARIS), PARIS)
    found = timeline.ticks(start, end, PARIS)
    assert 2 <= len(found) <= 12
    assert found[0].x == pytest.approx(x, abs=0.01) and found[0].label == first
    assert all(0 <= t.x < timeline.WIDTH for t in found)
    assert [t.x for t in found] == sorted(t.x for t in found)


def test_a_day_across_spring_forward_labels_the_wall_clock_hours_it_has():
    start, end = timeline.period("day", at("2024-03-31T12:00", PARIS), PARIS)
    labels = [t.label for t in timeline.ticks(start, end, PARIS, max_ticks=24)]
    assert "02:00" not in labels and "03:00" in labels and len(labels) == 23


def test_a_year_is_labelled_by_month():
    found = timeline.ticks(at("2024-01-01T00:00").timestamp(), at("2025-01-01T00:00").timestamp(), UTC)
    assert [t.label for t in found] == [f"{m} 2024" for m in
                                        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                                         "Dec")]


def test_a_hole_is_repaired_by_the_backfill_whose_chunks_cover_all_of_it():
    spans = {7: [[0, 100]], 9: [[100, 300]]}
    assert timeline.repairing((150, 250), spans) == 9
    assert timeline.repairing((50, 150), spans) is None  # two backfills: neither repairs it alone
    assert timeline.repairing((0, 100), {}) is None


def test_ten_years_keep_a_bounded_axis():
    start = at("2015-01-01T00:00").timestamp()
    found = timeline.ticks(start, start + 3650 * DAY, UTC)
    assert 1 <= len(found) <= 12 and found[0].label == "2015" and found[0].x == 0
