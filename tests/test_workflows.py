"""Workflow files: parsing, validation of the special fields, reload merging."""
import pytest

from batchy.rules import workflows
from batchy.errors import ConfigNotFound, InvalidConfig, InvalidName


def parse(text):
    return workflows.parse_config("wf", text)


def test_bare_param_file_gets_every_special_field():
    cfg = parse("job_a:\njob_b:\n  src: CRM\n")
    assert list(cfg.jobs) == ["job_a", "job_b"]
    a = cfg.jobs["job_a"]
    assert a["status"] == "new" and a["batch_id"] is None and a["from_date"] is None
    assert a["reprocess_hours"] == 0 and a["trunc_start"] is False and a["timezone"] == "UTC"
    assert cfg.jobs["job_b"]["src"] == "CRM"


@pytest.mark.parametrize(
    "value, expected",
    [
        ("2024-01-01", "2024-01-01T00:00:00+00:00"),
        ("'2024-01-01'", "2024-01-01T00:00:00+00:00"),
        ("2024-01-01 10:00:00", "2024-01-01T10:00:00+00:00"),
        ("2024-01-01T10:00:00Z", "2024-01-01T10:00:00+00:00"),
        ("2024-01-01T10:00:00+02:00", "2024-01-01T08:00:00+00:00"),
        ('"2024-01-01T10:00:00-05:00"', "2024-01-01T15:00:00+00:00"),
        ("2024-01-01t10:00:00", "2024-01-01T10:00:00+00:00"),
    ],
)
def test_dates_in_every_form_a_yaml_author_writes(value, expected):
    assert parse(f"j:\n  from_date: {value}\n").jobs["j"]["from_date"] == expected


def test_workflow_settings_live_under_the_dot_batchy_key():
    cfg = parse(".batchy:\n  exclusive: true\n  lease_hours: 6\nj:\n")
    assert cfg.settings == {"exclusive": True, "lease_hours": 6}
    assert list(cfg.jobs) == ["j"]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "empty"),
        ("- a\n- b\n", "must be a mapping"),
        ("j: [1, 2]\n", "must map parameter names"),
        ("j:\n  reprocess_hours: -1\n", "reprocess_hours"),
        ("j:\n  reprocess_hours: two\n", "reprocess_hours"),
        ("j:\n  reprocess_hours: .nan\n", "reprocess_hours"),
        ("j:\n  reprocess_hours: 1e12\n", "reprocess_hours"),
        ("j:\n  trunc_start: maybe\n", "trunc_start"),
        ("j:\n  timezone: Mars/Olympus\n", "unknown time zone"),
        ("j:\n  from_date: yesterday\n", "from_date"),
        ("j:\n  from_date: 12\n", "from_date"),
        ("j:\n  status: running\n", "status"),
        ("j:\n  batch_id: -3\n", "batch_id"),
        ("j:\n  infa_section: \"a]\\n[b\"\n", "infa_section"),
        ("j:\n  x: !!binary aGVsbG8=\n", "cannot be stored"),
        ("j: {a: 1\n", "not valid YAML"),
        ("bad name!:\n", "invalid job name"),
        (".batchy:\n  colour: red\nj:\n", "unknown workflow setting"),
        (".batchy:\n  lease_hours: 0\nj:\n", "lease_hours"),
        (".batchy:\n  exclusive: 1\nj:\n", "exclusive"),
        (".batchy:\n  exclusive: true\n", "no job"),
    ],
)
def test_invalid_files_are_refused_with_a_reason(text, fragment):
    with pytest.raises((InvalidConfig, InvalidName)) as err:
        parse(text)
    assert fragment in err.value.message


def test_malformed_yaml_says_where():
    with pytest.raises(InvalidConfig) as err:
        parse("j:\n  a: 1\n   b: 2\n")
    assert "line 3" in err.value.message


def test_alias_bomb_is_refused_before_expanding():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8)
    )
    with pytest.raises(InvalidConfig) as err:
        parse(bomb)
    assert "aliases" in err.value.message


def test_deep_nesting_is_refused():
    with pytest.raises(InvalidConfig) as err:
        parse("j:\n  x: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nest" in err.value.message


def test_read_config_caps_the_size_and_finds_yml(tmp_path):
    (tmp_path / "big.yaml").write_text("j:\n  x: " + "a" * 2000 + "\n")
    with pytest.raises(InvalidConfig):
        workflows.read_config(str(tmp_path), "big", 1000)
    (tmp_path / "other.yml").write_text("j:\n")
    assert list(workflows.read_config(str(tmp_path), "other", 1000).jobs) == ["j"]
    with pytest.raises(ConfigNotFound):
        workflows.read_config(str(tmp_path), "missing", 1000)
    with pytest.raises(InvalidName):
        workflows.read_config(str(tmp_path), "../etc/passwd", 1000)


def test_reload_keeps_runtime_state_replaces_params_drops_and_adds_jobs():
    existing = {
        "keep": {"status": "success", "batch_id": 5, "from_date": "2024-01-02T00:00:00+00:00",
                 "to_date": "2024-01-03T00:00:00+00:00", "batch_start": "2024-01-03T00:00:00+00:00",
                 "batch_end": "2024-01-03T01:00:00+00:00", "records_processed": 9, "message": None,
                 "src": "old", "reprocess_hours": 1},
        "fresh": {"status": "new", "from_date": "2020-01-01T00:00:00+00:00", "src": "x"},
        "gone": {"status": "success"},
    }
    cfg = parse("keep:\n  src: new\n  reprocess_hours: 3\n  from_date: 1999-01-01\n"
                "fresh:\n  from_date: 2023-06-01\nadded:\n")
    merged = workflows.merge(existing, cfg.jobs)
    assert list(merged) == ["keep", "fresh", "added"]
    keep = merged["keep"]
    assert keep["from_date"] == "2024-01-02T00:00:00+00:00"  # the watermark survives the redeploy
    assert keep["status"] == "success" and keep["batch_id"] == 5 and keep["records_processed"] == 9
    assert keep["src"] == "new" and keep["reprocess_hours"] == 3  # params come from the file
    # a job that never ran takes the file's from_date
    assert merged["fresh"]["from_date"] == "2023-06-01T00:00:00+00:00" and "src" not in merged["fresh"]
    assert merged["added"]["status"] == "new"


# -- an operator's watermark survives a plain reload (item 1) ---------------------------

def test_a_reload_of_the_same_file_changes_no_job(client):
    """It added next_from_date, records_scope, caught_up and behind_seconds as nulls to every job that had run."""
    for path in ("/load_cfg/wf1", "/open_batch/wf1", "/close_batch/wf1?records_processed=5"):
        assert client.post(path).status_code == 200
    before = client.get("/get_status/wf1").json
    assert client.post("/load_cfg/wf1").json == before
    assert client.get("/get_status/wf1").json == before


def test_reload_keeps_next_from_date_of_a_job_that_never_ran():
    existing = {"sn": {"status": "new", "from_date": "2020-06-01T00:00:00+00:00",
                       "next_from_date": "2020-06-01T00:00:00+00:00"}}
    merged = workflows.merge(existing, parse("sn:\n  from_date: 2024-01-01\n").jobs)
    assert merged["sn"]["next_from_date"] == merged["sn"]["from_date"] == "2020-06-01T00:00:00+00:00"


def test_plain_reload_keeps_the_operators_from_date_and_reset_drops_it(client, write_cfg):
    write_cfg("sn", "s_job:\n  from_date: 2024-01-01\n")
    assert client.post("/load_cfg/sn").status_code == 200
    assert client.post("/set_from_date/sn?from_date=2020-06-01").status_code == 200
    job = client.post("/load_cfg/sn").get_json()["s_job"]
    assert job["next_from_date"] == job["from_date"] == "2020-06-01T00:00:00+00:00"
    assert client.post("/open_batch/sn?dry_run=true").get_json()["s_job"]["from_date"] == "2020-06-01T00:00:00+00:00"
    job = client.post("/load_cfg/sn?reset=true").get_json()["s_job"]
    assert job["from_date"] == "2024-01-01T00:00:00+00:00" and not job.get("next_from_date")
    assert client.post("/open_batch/sn").get_json()["s_job"]["from_date"] == "2024-01-01T00:00:00+00:00"


# -- typos, duplicate keys, impossible dates (item 4) ----------------------------------

@pytest.mark.parametrize(
    "key, meant",
    [("reprocess_hour", "reprocess_hours"), ("trunc_star", "trunc_start"), ("timezon", "timezone"),
     ("from_dat", "from_date"), ("Reprocess_Hours_", "reprocess_hours"), ("from_dt", "from_date"),
     ("trunc_strat", "trunc_start"), ("infa_sections", "infa_section")],
)
def test_a_key_close_to_a_special_field_is_a_typo(client, write_cfg, key, meant):
    write_cfg("typo", f"j:\n  src: CRM\n  {key}: 1\n")
    resp = client.post("/load_cfg/typo")
    body = resp.get_json()
    assert resp.status_code == 400 and body["error"] == "invalid_config"
    assert f"did you mean '{meant}'?" in body["message"]
    assert f"'{key}'" in body["message"] and "'j'" in body["message"] and "line 3" in body["message"]
    assert body["job"] == "j" and body["field"] == key and body["line"] == 3


@pytest.mark.parametrize("key", ["src_schema", "tgt_table", "state", "end_date", "run_date", "from_time",
                                 "batch_name", "tgt_date", "$$from_dat", "timezone_offset"])
def test_free_form_parameters_not_close_to_a_special_field_keep_working(key):
    assert parse(f"j:\n  {key}: 1\n").jobs["j"][key] == 1


def test_allow_params_keeps_a_deliberately_similar_name():
    cfg = parse(".batchy:\n  allow_params: [from_dt, timezones]\nj:\n  from_dt: 1\n  timezones: [a]\n")
    assert cfg.jobs["j"]["from_dt"] == 1 and cfg.settings == {"allow_params": ["from_dt", "timezones"]}
    with pytest.raises(InvalidConfig) as err:
        parse(".batchy:\n  allow_params: [from_dt]\nj:\n  trunc_star: true\n")
    assert "did you mean 'trunc_start'?" in err.value.message and "allow_params" in err.value.message


@pytest.mark.parametrize("text", [".batchy:\n  allow_params: from_dt\nj:\n",
                                  ".batchy:\n  allow_params: [1]\nj:\n"])
def test_allow_params_must_be_a_list_of_names(text):
    with pytest.raises(InvalidConfig) as err:
        parse(text)
    assert "allow_params" in err.value.message


@pytest.mark.parametrize(
    "text, key, line",
    [("j:\n  src: a\n  tgt: b\n  src: c\n", "src", 4),
     ("j:\n  src: a\nk:\n  x: 1\nj:\n  src: b\n", "j", 5),
     ("j: {a: 1, 'a': 2}\n", "a", 1),
     (".batchy:\n  exclusive: true\n  exclusive: false\nj:\n", "exclusive", 3)],
)
def test_duplicate_keys_are_refused_with_the_key_and_the_line(client, write_cfg, text, key, line):
    write_cfg("dup", text)
    resp = client.post("/load_cfg/dup")
    message = resp.get_json()["message"]
    assert resp.status_code == 400 and f"duplicate key '{key}'" in message and f"line {line}" in message


@pytest.mark.parametrize("value", ["2026-11-31", "'2026-11-31'", "2026-11-31 10:00:00", "'2026-02-29T00:00:00Z'"])
def test_a_date_that_cannot_exist_names_the_job_the_field_and_the_line(client, write_cfg, value):
    write_cfg("baddate", f"j:\n  src: a\n  to_date: 2026-01-01\n  from_date: {value}\n")
    resp = client.post("/load_cfg/baddate")
    body = resp.get_json()
    assert resp.status_code == 400
    assert "'j'" in body["message"] and "from_date" in body["message"] and "line 4" in body["message"]
    assert "cannot be read" in body["message"] and body["field"] == "from_date"


def test_an_impossible_date_in_a_free_form_parameter_is_refused_too():
    with pytest.raises(InvalidConfig) as err:
        parse("j:\n  cutoff: 2026-11-31\n")
    assert "cutoff" in err.value.message and "line 2" in err.value.message


# -- dates without an offset are in the job's timezone (item 5) ------------------------

@pytest.mark.parametrize(
    "value, expected",
    [
        ("2026-11-25", "2026-11-25T00:00:00-05:00"),
        ("'2026-11-25'", "2026-11-25T00:00:00-05:00"),
        ("2026-11-25 10:30:00", "2026-11-25T10:30:00-05:00"),
        ("'2026-07-01T10:30:00'", "2026-07-01T10:30:00-04:00"),  # summer: EDT
        ("2026-11-25T10:00:00Z", "2026-11-25T05:00:00-05:00"),  # an explicit offset is kept
        ("'2026-11-25T16:00:00+0100'", "2026-11-25T10:00:00-05:00"),
        ("2001-12-14 21:59:43.10 -5", "2001-12-14T21:59:43.100000-05:00"),
    ],
)
def test_a_time_without_an_offset_is_read_in_the_jobs_timezone(value, expected):
    for text in (f"j:\n  timezone: America/New_York\n  from_date: {value}\n",
                 f"j:\n  from_date: {value}\n  timezone: America/New_York\n"):  # key order does not matter
        assert parse(text).jobs["j"]["from_date"] == expected


def test_every_date_field_of_a_file_is_read_in_the_jobs_timezone():
    fields = ("from_date", "to_date", "batch_start", "batch_end", "next_from_date")
    text = "j:\n  timezone: Asia/Tokyo\n" + "".join(f"  {f}: 2026-11-25 09:00:00\n" for f in fields)
    job = parse(text).jobs["j"]
    assert {job[f] for f in fields} == {"2026-11-25T09:00:00+09:00"}


def test_a_new_york_from_date_opens_at_new_york_midnight(client, write_cfg):
    write_cfg("ny", "j:\n  from_date: 2026-11-25\n  timezone: America/New_York\n")
    assert client.post("/load_cfg/ny").get_json()["j"]["from_date"] == "2026-11-25T00:00:00-05:00"
    assert client.post("/open_batch/ny").get_json()["j"]["from_date"] == "2026-11-25T00:00:00-05:00"


def test_date_errors_say_how_a_time_without_an_offset_is_read():
    with pytest.raises(InvalidConfig) as err:
        parse("j:\n  timezone: Europe/Paris\n  from_date: yesterday\n")
    assert "without an offset" in err.value.message and "Europe/Paris" in err.value.message
    with pytest.raises(InvalidConfig) as err:  # inside the range as UTC, outside it once in Tokyo
        parse("j:\n  timezone: Asia/Tokyo\n  from_date: 1900-01-01\n")
    assert "from_date" in err.value.message


# -- names the Informatica file could not write (item 3, load time) --------------------

@pytest.mark.parametrize(
    "key, words",
    [
        ('"$$from_date"', "written"), ('"$$FROM_DATE"', "written"), ("FROM_DATE", "written"),
        ('"$$message"', "written"), ('"$$src"', "written"), ('"a=b"', "="),
        ('"a\\u2028b"', "parameter name"), ('"a\\u0085b"', "parameter name"), ('"a\\u2029b"', "parameter name"),
        ('"a\\x9bb"', "parameter name"), ('"$$"', "parameter name"),
    ],
)
def test_a_parameter_name_the_param_file_cannot_write_is_refused(client, write_cfg, key, words):
    write_cfg("names", f"j:\n  src: CRM\n  {key}: 1\n")
    resp = client.post("/load_cfg/names")
    body = resp.get_json()
    assert resp.status_code == 400 and words in body["message"] and "'j'" in body["message"], body
    assert body["job"] == "j"


@pytest.mark.parametrize("field", ["infa_section", "infa_date_format"])
@pytest.mark.parametrize("char", ["\\x85", "\\u2028", "\\u2029", "\\x9f"])
def test_infa_fields_refuse_every_line_separator(field, char):
    with pytest.raises(InvalidConfig) as err:
        parse(f'j:\n  {field}: "a{char}b"\n')
    assert field in err.value.message


def test_two_jobs_cannot_share_an_informatica_section():
    with pytest.raises(InvalidConfig) as err:
        parse("a:\n  infa_section: S\nb:\n  infa_section: s\n")
    assert "infa_section" in err.value.message and "'b'" in err.value.message
    with pytest.raises(InvalidConfig):
        parse("a:\nb:\n  infa_section: a\n")
