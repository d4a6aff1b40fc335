"""The Informatica parameter file across DST changes (issue 24, item 8): no file renders two
different instants as the same text. In a zone whose offset changes, the dates carry the offset
(the default format there ends with TZH:TZM); a format without it is refused at load."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from batchy.rules import formats, times, validation
from batchy.errors import InvalidConfig

UTC = timezone.utc
NY_HOURLY = "j:\n  timezone: America/New_York\n  batch_size: hour\n  max_window_hours: 1\n  from_date: \"{start}\"\n"


def _dates(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line.startswith(("$$from_date", "$$to_date")))


def test_the_repeated_hour_of_the_fall_change_is_two_different_texts(client, write_cfg):
    write_cfg("ny", NY_HOURLY.format(start="2026-11-01T01:00:00-04:00"))
    assert client.post("/load_cfg/ny").status_code == 200
    first = client.post("/open_batch/ny/infa")
    assert first.status_code == 200, first.data
    # The JSON window is the real hour [01:00-04:00, 01:00-05:00): the file says so.
    assert _dates(first.data.decode()) == {"$$from_date": "11/01/2026 01:00:00 -04:00",
                                          "$$to_date": "11/01/2026 01:00:00 -05:00"}
    assert client.post("/close_batch/ny").status_code == 200
    second = client.post("/open_batch/ny/infa").data.decode()
    assert _dates(second) == {"$$from_date": "11/01/2026 01:00:00 -05:00", "$$to_date": "11/01/2026 02:00:00 -05:00"}


def test_the_spring_change_skips_an_hour_and_the_offset_says_so(client, write_cfg):
    write_cfg("ny", NY_HOURLY.format(start="2026-03-08T01:00:00-05:00"))
    assert client.post("/load_cfg/ny").status_code == 200
    text = client.post("/open_batch/ny/infa").data.decode()
    assert _dates(text) == {"$$from_date": "03/08/2026 01:00:00 -05:00", "$$to_date": "03/08/2026 03:00:00 -04:00"}


@pytest.mark.parametrize("zone, changes", [
    ("America/New_York", (datetime(2026, 3, 8, 7, tzinfo=UTC), datetime(2026, 11, 1, 6, tzinfo=UTC))),
    ("Europe/Paris", (datetime(2026, 3, 29, 1, tzinfo=UTC), datetime(2026, 10, 25, 1, tzinfo=UTC))),
    ("Australia/Lord_Howe", (datetime(2026, 4, 4, 15, tzinfo=UTC), datetime(2026, 10, 3, 15, 30, tzinfo=UTC))),
    ("America/St_Johns", (datetime(2026, 3, 8, 5, 30, tzinfo=UTC), datetime(2026, 11, 1, 4, 30, tzinfo=UTC))),
])
def test_no_two_instants_render_alike_around_both_changes(zone, changes):
    tz = times.zone(zone)
    fmt = formats.default_date_format(tz)
    assert fmt == "MM/DD/YYYY HH24:MI:SS TZH:TZM"
    for change in changes:
        moments = [change + timedelta(minutes=15 * i) for i in range(-12, 13)]
        texts = [formats.infa_date(times.format_time(m), fmt, tz) for m in moments]
        assert len(set(texts)) == len(texts), texts


def test_a_zone_without_offset_changes_keeps_the_seed_format(client, write_cfg):
    assert formats.default_date_format(times.UTC) == formats.INFA_DEFAULT_DATE_FORMAT == "MM/DD/YYYY HH24:MI:SS"
    assert formats.default_date_format(times.zone("Asia/Kolkata")) == "MM/DD/YYYY HH24:MI:SS"
    write_cfg("u", "j:\n  from_date: 2024-01-01\nk:\n  from_date: 2024-01-01\n  timezone: Asia/Kolkata\n"
                   "  infa_date_format: YYYY-MM-DD HH24:MI\n")
    assert client.post("/load_cfg/u").status_code == 200
    text = client.post("/open_batch/u/infa").data.decode()
    assert "$$from_date=01/01/2024 00:00:00\n" in text and "$$from_date=2024-01-01 00:00\n" in text


@pytest.mark.parametrize("fmt", ["MM/DD/YYYY HH24:MI:SS", "YYYY-MM-DD HH24:MI"])
def test_a_format_without_the_offset_in_a_dst_zone_is_refused_at_load(client, write_cfg, fmt):
    write_cfg("ny", f"j:\n  from_date: 2026-11-01\n  timezone: America/New_York\n  infa_date_format: {fmt}\n")
    r = client.post("/load_cfg/ny")
    assert r.status_code == 400, r.json
    body = r.json
    assert body["field"] == "infa_date_format" and body["job"] == "j" and body["line"] == 4, body
    assert "TZH:TZM" in body["message"] and "line 4" in body["message"], body["message"]


def test_a_format_with_the_offset_in_a_dst_zone_is_kept(client, write_cfg):
    write_cfg("ny", "j:\n  from_date: 2026-11-01T01:30:00-05:00\n  timezone: America/New_York\n"
                    "  infa_date_format: YYYY-MM-DD HH24:MI TZH:TZM\n")
    assert client.post("/load_cfg/ny").status_code == 200
    assert "$$from_date=2026-11-01 01:30 -05:00\n" in client.post("/open_batch/ny/infa").data.decode()


def test_import_refuses_what_a_file_refuses():
    with pytest.raises(InvalidConfig) as err:  # the check import and workflow files share
        validation.fill_job("wf", "j", {"timezone": "Europe/Paris", "infa_date_format": "DD.MM.YYYY HH24:MI"})
    assert err.value.context["field"] == "infa_date_format"


def test_offset_tokens_of_negative_half_hour_offsets():
    tz = times.zone("America/St_Johns")
    assert formats.infa_date("2026-01-15T12:00:00+00:00", "HH24:MI TZH:TZM", tz) == "08:30 -03:30"
    assert formats.infa_date("2026-07-15T12:00:00+00:00", "HH24:MI TZHTZM", tz) == "09:30 -0230"


@pytest.mark.parametrize("zone_name", ["America/St_Johns", "Asia/Kolkata", "Europe/Paris", "Pacific/Chatham", "UTC"])
def test_offset_tokens_render_alike_with_and_without_strftime(zone_name):
    """TZH and TZM in a format of numeric fields only take the quick path (str.format); with a
    month name (MON) the format goes through strftime: the offset reads the same both ways."""
    tz = times.zone(zone_name)
    for value in ("2026-01-15T12:00:00+00:00", "2026-07-15T12:00:00+00:00", "1975-03-01T23:59:59+00:00"):
        quick = formats.infa_date(value, "YYYY-MM-DD HH24:MI:SS TZH:TZM", tz)
        slow = formats.infa_date(value, "MON YYYY-MM-DD HH24:MI:SS TZH:TZM", tz)
        assert slow.split(" ", 1)[1] == quick
        offset = times.parse_time(value).astimezone(tz).isoformat()[-6:]  # "+05:30"
        assert quick.endswith(" " + offset), (quick, offset)
