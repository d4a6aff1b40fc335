"""Time as Batchy reads and writes it (batchy/rules/times.py): parsing, formatting, zones, midnight."""
from datetime import datetime, timezone

import pytest

from batchy.rules import times

UTC = timezone.utc


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2024-01-31", "2024-01-31T00:00:00+00:00"),
        ("2024-01-31T13:45:00", "2024-01-31T13:45:00+00:00"),
        ("2024-01-31 13:45:00", "2024-01-31T13:45:00+00:00"),
        ("2024-01-31T13:45:00Z", "2024-01-31T13:45:00+00:00"),
        ("2024-01-31T13:45:00+01:00", "2024-01-31T12:45:00+00:00"),
        ("2024-01-31T13:45:00+0100", "2024-01-31T12:45:00+00:00"),
        ("2024-01-31T13:45:00.250-05:00", "2024-01-31T18:45:00.250000+00:00"),
    ],
)
def test_parse_time_accepts_what_people_write(text, expected):
    assert times.format_time(times.parse_time(text)) == expected


@pytest.mark.parametrize("bad", ["yesterday", "2024-13-01", "31/01/2024", 1467149783, True, "", "x" * 100])
def test_parse_time_rejects_garbage(bad):
    with pytest.raises(ValueError):
        times.parse_time(bad, "from_date")


@pytest.mark.parametrize("text", ["0001-01-01", "1899-12-31T23:59:59Z", "9000-01-01", "9999-12-31T23:59:59-05:00"])
def test_input_times_out_of_range_are_refused(text):
    with pytest.raises(ValueError, match="from 1900-01-01"):
        times.parse_input_time(text, "from_date")
    assert times.parse_time(text)  # stored values still read back


@pytest.mark.parametrize("name", ["Nowhere/City", "../../etc/passwd", "/etc/localtime", "", "a" * 100])
def test_unknown_zones_are_refused(name):
    with pytest.raises(ValueError):
        times.zone(name)


def test_start_of_day_is_never_later_than_the_moment():
    tz = times.zone("America/New_York")
    moment = datetime(2024, 3, 10, 4, 59, 59, tzinfo=UTC)  # 23:59:59 EST on the 9th
    start = times.start_of_day(moment, tz)
    assert start <= moment
    assert times.format_time(start, tz) == "2024-03-09T00:00:00-05:00"
