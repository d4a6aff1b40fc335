"""batch_size hour in half-hour zones (issue 24, item 7): an hour boundary is an instant at which
the job's zone's clock shows a whole hour, for window policies and backfills alike."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from batchy.rules import backfill, windows

from .conftest import make_app

UTC = timezone.utc
KOLKATA, LORD_HOWE, ST_JOHNS = ZoneInfo("Asia/Kolkata"), ZoneInfo("Australia/Lord_Howe"), ZoneInfo("America/St_Johns")


def brute_floor(moment: datetime, tz) -> datetime:
    """The last whole minute at or before moment at which tz's clock shows hh:00 (by scanning)."""
    at = moment.replace(second=0, microsecond=0)
    while at.astimezone(tz).minute:
        at -= timedelta(minutes=1)
    return at


@pytest.mark.parametrize("tz, around", [
    (KOLKATA, datetime(2026, 6, 1, tzinfo=UTC)),
    (LORD_HOWE, datetime(2026, 4, 4, 15, tzinfo=UTC)),  # 02:00 +11 -> 01:30 +10:30 (the hour repeats half)
    (LORD_HOWE, datetime(2026, 10, 3, 15, 30, tzinfo=UTC)),  # 02:00 +10:30 -> 02:30 +11 (half an hour skipped)
    (ST_JOHNS, datetime(2026, 3, 8, 5, 30, tzinfo=UTC)),  # 02:00 -03:30 -> 03:00 -02:30
    (ST_JOHNS, datetime(2026, 11, 1, 4, 30, tzinfo=UTC)),  # 02:00 -02:30 -> 01:00 -03:30
])
def test_an_hour_boundary_is_where_the_zones_clock_shows_a_whole_hour(tz, around):
    moment = around - timedelta(hours=5)
    while moment < around + timedelta(hours=5):
        for offset in (timedelta(0), timedelta(seconds=59, microseconds=5)):
            found = windows.floor_to_unit(moment + offset, "hour", tz)
            assert found == brute_floor(moment + offset, tz), (moment + offset).astimezone(tz)
            assert found.astimezone(tz).minute == 0 and found <= moment + offset
        moment += timedelta(minutes=5)


def _tiles(start: datetime, end: datetime, tz) -> list[tuple[str, str, float]]:
    return [(a.astimezone(tz).isoformat(), b.astimezone(tz).isoformat(), (b - a).total_seconds() / 60)
            for a, b in backfill.tile(start, end, tz, batch_size="hour")]


def test_hourly_chunks_in_kolkata_are_whole_local_hours():
    start = datetime(2026, 6, 1, 23, 30, tzinfo=KOLKATA)
    tiles = _tiles(start, start + timedelta(hours=24), KOLKATA)
    # from is not on a boundary: the first and the last chunk are partial, the others whole local hours
    assert tiles[0] == ("2026-06-01T23:30:00+05:30", "2026-06-02T00:00:00+05:30", 30)
    assert tiles[-1] == ("2026-06-02T23:00:00+05:30", "2026-06-02T23:30:00+05:30", 30)
    assert len(tiles) == 25 and all(a[14:19] == "00:00" and minutes == 60 for a, _b, minutes in tiles[1:-1])
    start = datetime(2026, 6, 2, 0, 0, tzinfo=KOLKATA)  # was 18:30 UTC: the first chunk ran 30 minutes
    tiles = _tiles(start, start + timedelta(hours=3), KOLKATA)
    assert tiles == [("2026-06-02T00:00:00+05:30", "2026-06-02T01:00:00+05:30", 60),
                     ("2026-06-02T01:00:00+05:30", "2026-06-02T02:00:00+05:30", 60),
                     ("2026-06-02T02:00:00+05:30", "2026-06-02T03:00:00+05:30", 60)]


def test_lord_howe_the_hour_across_each_30_minute_change_lasts_90_minutes():
    fall_back = _tiles(datetime(2026, 4, 5, 0, 0, tzinfo=LORD_HOWE), datetime(2026, 4, 5, 4, 0, tzinfo=LORD_HOWE),
                       LORD_HOWE)
    assert fall_back == [("2026-04-05T00:00:00+11:00", "2026-04-05T01:00:00+11:00", 60),
                         ("2026-04-05T01:00:00+11:00", "2026-04-05T02:00:00+10:30", 90),  # 01:30-02:00 twice
                         ("2026-04-05T02:00:00+10:30", "2026-04-05T03:00:00+10:30", 60),
                         ("2026-04-05T03:00:00+10:30", "2026-04-05T04:00:00+10:30", 60)]
    spring = _tiles(datetime(2026, 10, 4, 0, 0, tzinfo=LORD_HOWE), datetime(2026, 10, 4, 4, 0, tzinfo=LORD_HOWE),
                    LORD_HOWE)
    assert spring == [("2026-10-04T00:00:00+10:30", "2026-10-04T01:00:00+10:30", 60),
                      ("2026-10-04T01:00:00+10:30", "2026-10-04T03:00:00+11:00", 90),  # 02:00-02:30 never shows
                      ("2026-10-04T03:00:00+11:00", "2026-10-04T04:00:00+11:00", 60)]


@pytest.mark.parametrize("start, end", [("2026-03-07T12:00:00-03:30", "2026-03-09T00:00:00-02:30"),
                                        ("2026-10-31T12:00:00-02:30", "2026-11-02T00:00:00-03:30")])
def test_st_johns_hours_are_whole_local_hours_across_dst(start, end):
    tiles = _tiles(datetime.fromisoformat(start), datetime.fromisoformat(end), ST_JOHNS)
    assert all(a[14:19] == "00:00" and b[14:19] == "00:00" and minutes == 60 for a, b, minutes in tiles), tiles


@pytest.mark.parametrize("tz, now, expected", [
    (KOLKATA, datetime(2026, 6, 2, 0, 20, tzinfo=KOLKATA), "2026-06-02T00:00:00+05:30"),
    (KOLKATA, datetime(2026, 6, 1, 23, 50, tzinfo=KOLKATA), "2026-06-01T23:00:00+05:30"),
    (ST_JOHNS, datetime(2026, 6, 2, 7, 10, tzinfo=ST_JOHNS), "2026-06-02T07:00:00-02:30"),
    (LORD_HOWE, datetime(2026, 4, 5, 1, 45, tzinfo=LORD_HOWE), "2026-04-05T01:00:00+11:00"),  # the first 01:45
    (LORD_HOWE, datetime(2026, 10, 4, 2, 45, tzinfo=LORD_HOWE), "2026-10-04T01:00:00+10:30"),
])
def test_a_window_policy_ends_on_a_whole_local_hour(tz, now, expected):
    now = now.astimezone(UTC)  # Batchy's times are UTC
    found = windows.window(now - timedelta(hours=10), now, windows.Policy(batch_size="hour"), tz)
    assert found.end.astimezone(tz).isoformat() == expected


def test_the_fold_of_lord_howes_repeated_half_hour_is_kept():
    second = datetime(2026, 4, 5, 1, 45, tzinfo=LORD_HOWE, fold=1)  # 15:15 UTC, after the change
    first = datetime(2026, 4, 5, 1, 45, tzinfo=LORD_HOWE)  # 14:45 UTC, before it
    assert windows.floor_to_unit(first, "hour", LORD_HOWE) == datetime(2026, 4, 4, 14, 0, tzinfo=UTC)
    assert windows.floor_to_unit(second, "hour", LORD_HOWE) == datetime(2026, 4, 4, 14, 0, tzinfo=UTC)


def test_a_backfill_of_a_lord_howe_job_has_no_30_minute_piece(fake_redis, cfg_dir, write_cfg):
    client = make_app(fake_redis, cfg_dir).test_client()
    write_cfg("lh", "j:\n  from_date: 2026-01-01\n  timezone: Australia/Lord_Howe\n  batch_size: hour\n")
    assert client.post("/load_cfg/lh").status_code == 200
    created = client.post("/backfill/lh?from=2026-10-03T00:00:00&to=2026-10-05T00:00:00")
    assert created.status_code == 201, created.json
    chunks = created.json["chunks"]
    assert all(c["from_date"][14:19] == "00:00" and c["to_date"][14:19] == "00:00" for c in chunks), chunks[:3]
    assert len(chunks) == 47  # 48 wall hours, one of them skipped half: 01:00-03:00 is one chunk
    assert {"from_date": "2026-10-04T01:00:00+10:30", "to_date": "2026-10-04T03:00:00+11:00"} in [
        {k: c[k] for k in ("from_date", "to_date")} for c in chunks]


def test_max_window_hours_1_hands_out_the_90_minute_hour_in_two_pieces():
    policy = windows.Policy(batch_size="hour", max_window_hours=1)
    now = datetime(2026, 10, 4, 12, 0, tzinfo=LORD_HOWE).astimezone(UTC)  # Batchy's times are UTC
    first = windows.window(datetime(2026, 10, 4, 1, 0, tzinfo=LORD_HOWE).astimezone(UTC), now, policy, LORD_HOWE)
    second = windows.window(first.end, now, policy, LORD_HOWE)
    shown = [w.end.astimezone(LORD_HOWE).isoformat() for w in (first, second)]
    assert shown == ["2026-10-04T02:30:00+11:00", "2026-10-04T03:00:00+11:00"]
