"""The Informatica parameter file and the JSON renderers."""
import json

import pytest

from batchy import formats


def test_infa_file_sections_parameters_dates_and_nulls():
    jobs = {
        "s_m_load": {
            "status": "open",
            "batch_id": 1467149783,
            "from_date": "2016-06-28T19:36:23+00:00",
            "to_date": "2016-06-28T21:36:23+00:00",
            "batch_end": None,
            "reprocess_hours": 2,
            "trunc_start": False,
            "tables": ["a", "b"],
            "$PMSessionLogFile": "s_m_load.log",
            "$DBConnection_SRC": "ORA_CRM",
        },
        "s_m_other": {
            "infa_section": "DWH.WF:wf1.ST:s_m_other",
            "infa_date_format": "YYYY-MM-DD HH24:MI:SS.MS",
            "timezone": "Europe/Paris",
            "from_date": "2016-06-28T22:00:00+00:00",
            "opts": {"k": 1},
        },
    }
    text = formats.infa(jobs)
    assert text == (
        "[s_m_load]\n"
        "$$status=open\n"
        "$$batch_id=1467149783\n"
        "$$from_date=06/28/2016 19:36:23\n"
        "$$to_date=06/28/2016 21:36:23\n"
        "$$batch_end=\n"
        "$$reprocess_hours=2\n"
        "$$trunc_start=false\n"
        '$$tables=["a","b"]\n'
        "$PMSessionLogFile=s_m_load.log\n"
        "$DBConnection_SRC=ORA_CRM\n"
        "[DWH.WF:wf1.ST:s_m_other]\n"
        "$$timezone=Europe/Paris\n"
        "$$from_date=2016-06-29 00:00:00.000\n"
        '$$opts={"k":1}\n'
    )


@pytest.mark.parametrize(
    "fmt, expected",
    [
        ("MM/DD/YYYY HH24:MI:SS", "01/05/2024 13:04:09"),
        ("YYYY-MM-DD", "2024-01-05"),
        ("DD-MON-YY HH12:MI:SS AM", "05-Jan-24 01:04:09 PM"),
        ("YYYYMMDDHH24MISS", "20240105130409"),
        ("YYYY-MM-DD HH24:MI:SS.US", "2024-01-05 13:04:09.250000"),
        ("YYYY-MM-DD HH24:MI:SS.NS", "2024-01-05 13:04:09.250000000"),
        ("100% YYYY", "100% 2024"),
        ("{YYYY}-{MM} %d", "{2024}-{01} %d"),  # braces and % are literal text
        ("YYYY-MM-DD HH24:MI:SS.MS MON", "2024-01-05 13:04:09.250 Jan"),
    ],
)
def test_infa_date_formats(fmt, expected):
    assert formats.infa_date("2024-01-05T13:04:09.25+00:00", fmt, formats.watermark.UTC) == expected


def test_infa_value_cannot_forge_a_parameter_line():
    text = formats.infa({"j": {"note": "a\n$$from_date=01/01/1900 00:00:00"}})
    assert text.count("\n") == 2
    assert "$$from_date" not in text.splitlines()[1][:12]


def test_infa_values_equal_in_python_render_by_their_own_type():
    # True == 1 == 1.0 in Python: the memo of rendered lines must not mix them up.
    jobs = {"a": {"p": 1}, "b": {"p": True}, "c": {"p": 1.0}, "d": {"p": 0}, "e": {"p": False}}
    lines = formats.infa(jobs).splitlines()
    assert lines[1::2] == ["$$p=1", "$$p=true", "$$p=1.0", "$$p=0", "$$p=false"]
    assert formats.infa(jobs) == formats.infa(jobs)  # and again, from the memo


def test_infa_long_and_multiline_texts():
    long = "x" * 5000
    text = formats.infa({"j": {"note": long, "multi": "a\n" * 200, "$$raw": "v"}})
    assert text.splitlines() == ["[j]", f"$$note={long}", "$$multi=" + json.dumps("a\n" * 200), "$$raw=v"]


def test_json_raw_state_matches_json_state():
    jobs = {"a": {"x": 1, "s": "é"}, "b.c-d": {"y": None}}
    raw = {k: json.dumps(v) for k, v in jobs.items()}
    assert json.loads(formats.json_raw_state(raw)) == jobs == json.loads(formats.json_state(jobs))


def test_integers_past_64_bits_are_encoded_exactly():
    big = 2**70 + 1
    assert formats.dumps({"n": big, "s": "é"}) == '{"n":1180591620717411303425,"s":"é"}'
    assert json.loads(formats.json_state({"j": {"n": -big}}))["j"]["n"] == -big
