"""The Informatica parameter file and the JSON renderers."""
import json

import pytest

from batchy.rules import times
from batchy.rules import formats


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
    assert formats.infa_date("2024-01-05T13:04:09.25+00:00", fmt, times.UTC) == expected


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


# -- one line per parameter, one heading per section, whatever the values (item 3) -----

NASTY = [
    "", "plain", "a\nb", "a\r\nb", "a\rb", "\x00", "a\x00b", "\t", "a\x0bb", "a\x0cb", "a\x1cb\x1db\x1eb",
    "a\x1fb", "a\x7fb", "a\x85b", "a\x9fb", "a\u2028b", "a\u2029b", "\u2028\u2029\x85",
    "x\n$$from_date=01/01/1900 00:00:00", "x\u2028$$from_date=01/01/1900", "x\x85[s_evil]",
    "[section]", "\n[section]\n", "=", "$$a=b", '"quoted"', "é\u200b\ufeff", "\\n", "x" * 300 + "\n",
    "x" * 300 + "\u2028", "\ud7ff\U0001f600",
]
NASTY_VALUES = NASTY + [["a\u2028b", {"k\x85": "v\n"}], {"\u2029": ["\x00"]}, None, True, 1.5, -(2**70)]


def structure(text: str) -> list[str]:
    """Return the file's lines, checked to be split the same by every reader's rule."""
    assert text.endswith("\n") and "\x00" not in text
    lines = text[:-1].split("\n")
    assert lines == text.splitlines()  # no \r, \v, \f, \x1c-\x1e, U+0085, U+2028, U+2029 inside a line
    assert all(not any(0x7f <= ord(c) <= 0x9f or ord(c) < 0x20 for c in line) for line in lines)
    return lines


def params_of(lines: list[str]) -> list[tuple[str, str]]:
    """Return (section, parameter name) for every parameter line, checked to be one or the other."""
    found, section = [], None
    for line in lines:
        if line.startswith("["):
            assert line.endswith("]") and line.count("[") == line.count("]") == 1
            section = line
        else:
            assert line.startswith("$") and "=" in line
            found.append((section, line.split("=", 1)[0]))
    return found


@pytest.mark.parametrize("value", NASTY_VALUES, ids=lambda v: repr(v)[:40])
def test_every_value_renders_on_its_own_line(value):
    jobs = {"a": {"status": "open", "from_date": "2024-01-01T00:00:00+00:00", "p": value, "$$q": value},
            "b": {"infa_section": "S", "p": value}}
    lines = structure(formats.infa(jobs))
    assert params_of(lines) == [("[a]", "$$status"), ("[a]", "$$from_date"), ("[a]", "$$p"), ("[a]", "$$q"),
                                ("[S]", "$$p")]
    if isinstance(value, str):
        written = lines[3].split("=", 1)[1]
        assert written == value or json.loads(written) == value  # plain, or a JSON string when it must be


@pytest.mark.parametrize("name", NASTY + ["$$from_date", "$$FROM_DATE", "From_Date", "$$p", "$$P", "$", "$$"],
                         ids=lambda v: repr(v)[:40])
def test_names_stored_before_the_checks_never_break_the_file(name):
    # What Redis may hold from before load-time checks: the file keeps its structure, and
    # a name it could not write, or one that would repeat a written name, is left out.
    job = {"status": "open", "from_date": "2024-01-01T00:00:00+00:00", "p": 1, name: "v\n$$status=x"}
    lines = structure(formats.infa({"j": job}))
    names = [n.casefold() for _s, n in params_of(lines)]
    assert len(names) == len(set(names))
    assert lines[:4] == ["[j]", "$$status=open", "$$from_date=01/01/2024 00:00:00", "$$p=1"]


@pytest.mark.parametrize("bad", NASTY[2:18], ids=lambda v: repr(v)[:40])
def test_a_stored_section_or_date_format_that_cannot_be_written_falls_back(bad):
    jobs = {"j": {"infa_section": bad, "infa_date_format": "YYYY" + bad, "from_date": "2024-01-01T00:00:00+00:00"},
            "k": {"infa_section": "a]b" + bad}, "l": {"infa_section": "[" + bad}}
    assert structure(formats.infa(jobs)) == ["[j]", "$$from_date=01/01/2024 00:00:00", "[k]", "[l]"]


def test_the_infa_rule_escapes_only_what_must_be():
    text = formats.infa({"j": {"tab": "a\tb", "nel": "a\x85b", "ls": "a\u2028b", "ok": "é ü $$x=1"}})
    assert text.splitlines()[1:] == ['$$tab="a\\tb"', '$$nel="a\\u0085b"', '$$ls="a\\u2028b"', "$$ok=é ü $$x=1"]


def test_a_job_stored_before_the_checks_opens_as_a_well_formed_file(client, fake_redis):
    # Written straight to Redis, as an older Batchy may have stored it.
    job = {"status": "success", "batch_id": 1, "from_date": "2024-01-01T00:00:00+00:00",
           "batch_start": "2024-01-02T00:00:00+00:00", "timezone": "UTC", "reprocess_hours": 0,
           "trunc_start": False, "infa_section": "S\u2028[forged]", "infa_date_format": "YYYY\x85",
           "note": "a\u2029$$from_date=01/01/1900", "$$from_date": "01/01/1900", "a\u2028b": 1, "ok": "yes"}
    fake_redis.hset("legacy", "j", json.dumps(job))
    fake_redis.sadd("batchy:workflows", "legacy")
    resp = client.post("/open_batch/legacy/infa")
    assert resp.status_code == 200, resp.get_json()
    lines = structure(resp.get_data(as_text=True))
    assert lines[0] == "[j]" and lines.count("[j]") == 1
    assert [n for _s, n in params_of(lines)].count("$$from_date") == 1
    assert '$$note="a\\u2029$$from_date=01/01/1900"' in lines and "$$ok=yes" in lines


def yaml_quoted(text: str) -> str:
    """Return text as a YAML double-quoted scalar, every unprintable character escaped."""
    def escape(c: str) -> str:
        if c.isprintable() and c not in '"\\':
            return c
        return f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}"

    return '"' + "".join(escape(c) for c in text) + '"'


@pytest.mark.parametrize("value", NASTY, ids=lambda v: repr(v)[:40])
def test_a_nasty_value_from_a_workflow_file_opens_as_a_well_formed_file(client, write_cfg, value):
    write_cfg("nasty", f"j:\n  note: {yaml_quoted(value)}\n  other: [{yaml_quoted(value)}]\nk:\n")
    assert client.post("/load_cfg/nasty").status_code == 200
    lines = structure(client.post("/open_batch/nasty/infa").get_data(as_text=True))
    params = params_of(lines)
    assert [line for line in lines if line.startswith("[")] == ["[j]", "[k]"]
    of_j, of_k = [n for s, n in params if s == "[j]"], [n for s, n in params if s == "[k]"]
    assert sorted(of_j) == sorted(of_k + ["$$note", "$$other"])
    note = next(line for line in lines if line.startswith("$$note="))[len("$$note="):]
    assert note == value or json.loads(note) == value
