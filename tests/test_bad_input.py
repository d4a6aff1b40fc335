"""No input breaks it: a corpus of hostile files, names, parameters and bodies.

Each must get a 4xx with the JSON error body naming the problem, within a bounded time,
and change nothing in Redis. Then: every date form a YAML author writes is accepted.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from batchy import create_app

from .reliability_helpers import raw_client, snapshot

LIMIT = 5.0  # seconds: a functional bound, far above what any case needs

GOOD_JOB = "job1:\n  from_date: 2024-01-01\n"
# name, file content (str or bytes), words the message must contain
BAD_FILES = [
    ("alias_bomb", "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
                   "c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c]\n", "aliases"),
    ("merge_alias", "base: &b {from_date: 2024-01-01}\njob: {<<: *b}\n", "aliases"),
    ("deep_flow", "job:\n  x: " + "[" * 5000 + "]" * 5000 + "\n", "nesting"),
    ("deep_block", "".join("  " * i + f"k{i}:\n" for i in range(60)) + "  " * 60 + "v: 1\n", "nesting"),
    ("too_big", "job1:\n  pad: '" + "x" * 1_100_000 + "'\n", "larger than"),
    ("bad_utf8", b"job1:\n  note: caf\xe9\n", "UTF-8"),
    ("utf16", "job1: {}\n".encode("utf-16"), "UTF-8"),
    ("control_char", "job1:\n  note: a\x07b\n", "YAML"),
    ("a_list", "- job1\n- job2\n", "mapping"),
    ("empty", "", "empty"),
    ("only_settings", ".batchy:\n  exclusive: true\n", "no job"),
    ("two_docs", "job1: {}\n---\njob2: {}\n", "YAML"),
    ("python_tag", "job1: !!python/object/apply:os.system ['true']\n", "YAML"),
    ("binary_tag", "job1:\n  x: !!binary aGVsbG8=\n", "cannot be stored"),
    ("set_tag", "job1:\n  x: !!set {a, b}\n", "cannot be stored"),
    ("unhashable_key", "? [a, b]\n: 1\n", "YAML"),
    ("job_space", "'job one': {}\n", "invalid job name"),
    ("job_path", "'../../etc/passwd': {}\n", "invalid job name"),
    ("job_unicode", "'jöb': {}\n", "invalid job name"),
    ("job_long", "j" + "x" * 200 + ": {}\n", "invalid job name"),
    ("job_nul", '"job\\0": {}\n', "invalid job name"),
    ("job_not_map", "job1: 5\n", "must map"),
    ("rh_negative", "job1:\n  reprocess_hours: -1\n", "reprocess_hours"),
    ("rh_text", "job1:\n  reprocess_hours: two\n", "reprocess_hours"),
    ("rh_nan", "job1:\n  reprocess_hours: .nan\n", "reprocess_hours"),
    ("rh_inf", "job1:\n  reprocess_hours: .inf\n", "reprocess_hours"),
    ("rh_overflow", "job1:\n  reprocess_hours: 1e400\n", "reprocess_hours"),
    ("rh_enormous", "job1:\n  reprocess_hours: 1000000000000000000000\n", "reprocess_hours"),
    ("rh_5000_digits", "job1:\n  reprocess_hours: " + "9" * 5000 + "\n", "cannot be read"),
    ("rh_bool", "job1:\n  reprocess_hours: true\n", "reprocess_hours"),
    ("rh_list", "job1:\n  reprocess_hours: [1]\n", "reprocess_hours"),
    ("tz_unknown", "job1:\n  timezone: Mars/Olympus_Mons\n", "time zone"),
    ("tz_path", "job1:\n  timezone: ../../../etc/passwd\n", "time zone"),
    ("tz_empty", "job1:\n  timezone: ''\n", "time zone"),
    ("tz_number", "job1:\n  timezone: 5\n", "time zone"),
    ("tz_nul", 'job1:\n  timezone: "Europe/Paris\\0"\n', "time zone"),
    ("date_text", "job1:\n  from_date: yesterday\n", "from_date"),
    ("date_month_13", "job1:\n  from_date: '2024-13-45'\n", "from_date"),
    ("date_feb_30", "job1:\n  from_date: 2024-02-30\n", "cannot be read"),
    ("date_year_1", "job1:\n  from_date: 0001-01-01\n  timezone: America/New_York\n", "from_date"),
    ("date_year_9999", "job1:\n  from_date: 9999-12-31T23:00:00Z\n  timezone: Asia/Tokyo\n", "from_date"),
    ("date_bool", "job1:\n  from_date: true\n", "from_date"),
    ("date_number", "job1:\n  from_date: 1704067200\n", "from_date"),
    ("date_long", "job1:\n  from_date: '" + "2024" * 30 + "'\n", "from_date"),
    ("trunc_text", "job1:\n  trunc_start: sometimes\n", "trunc_start"),
    ("status_unknown", "job1:\n  status: running\n", "status"),
    ("batch_id_negative", "job1:\n  batch_id: -5\n", "batch_id"),
    ("records_float", "job1:\n  records_processed: 1.5\n", "records_processed"),
    ("surrogate_value", 'job1:\n  note: "\\ud800"\n', "surrogate"),
    ("surrogate_key", '"job1":\n  "n\\udc00": 1\n', "parameter name"),
    ("infa_fmt_nul", 'job1:\n  infa_date_format: "MM\\0DD"\n', "control characters"),
    ("infa_section_newline", 'job1:\n  infa_section: "a\\nb"\n', "single line"),
    ("infa_section_bracket", "job1:\n  infa_section: 'a]b'\n", "[ or ]"),
    ("long_string", "job1:\n  note: '" + "x" * 70000 + "'\n", "longer than"),
    ("param_control_name", 'job1:\n  "a\\tb": 1\n', "parameter name"),
    ("settings_unknown", ".batchy:\n  bogus: 1\njob1: {}\n", "unknown workflow setting"),
    ("settings_not_map", ".batchy: 5\njob1: {}\n", "mapping"),
]
BAD_NAMES = [
    "..%2f..%2fetc%2fpasswd", "..%2fwf1", "wf1%00", "%00", "wf%ff", "%c3%28", "w" * 200, "caf%C3%A9",
    "wf1%20", "%20wf1", ".hidden", "-dash", "wf%0a1", "wf1-1714000000", "a:b", "a%2fb", "%E2%80%AE1fw",
]
BAD_PARAMS = [  # (route, JSON body, words)
    ("close_batch", {"records_processed": -1}, "records_processed"),
    ("close_batch", {"records_processed": "abc"}, "records_processed"),
    ("close_batch", {"records_processed": 1.5}, "records_processed"),
    ("close_batch", {"records_processed": True}, "records_processed"),
    ("close_batch", {"records_processed": [1]}, "records_processed"),
    ("close_batch", {"records_processed": {"n": 1}}, "records_processed"),
    ("close_batch", {"records_processed": 2**60}, "records_processed"),
    ("close_batch", {"records_processed": "1e3"}, "records_processed"),
    ("close_batch", {"records_processed": "\uff11\uff12"}, "records_processed"),
    ("close_batch", {"records_processed": "9" * 400}, "records_processed"),
    ("close_batch", {"batch_id": "abc"}, "batch_id"),
    ("close_batch", {"batch_id": -1}, "batch_id"),
    ("close_batch", {"batch_id": 1.0}, "batch_id"),
    ("close_batch", {"batch_id": [1]}, "batch_id"),
    ("close_batch", {"batch_id": False}, "batch_id"),
    ("close_batch", {"batch_id": 1}, "not the current batch"),
    ("fail_batch", {"batch_id": "nan"}, "batch_id"),
    ("close_batch", {"job": 5}, "job name"),
    ("close_batch", {"job": ["s_extract"]}, "job name"),
    ("close_batch", {"job": {"a": 1}}, "job name"),
    ("close_batch", {"job": "../s_extract"}, "job name"),
    ("close_batch", {"job": "s_extract\u0000"}, "job name"),
    ("close_batch", {"job": "j" * 300}, "job name"),
    ("close_batch", {"job": ""}, "job name"),
    ("close_batch", {"job": "nope"}, "no job"),
    ("fail_batch", {"job": "s_\u00e9xtract"}, "job name"),
    ("close_batch", {"message": 5}, "message"),
    ("close_batch", {"message": ["a"]}, "message"),
    ("close_batch", {"message": "x" * 5000}, "message"),
    ("fail_batch", {"message": {"a": 1}}, "message"),
    ("load_cfg", {"reset": "maybe"}, "reset"),
    ("load_cfg", {"reset": [1]}, "reset"),
    ("load_cfg", {"reset": {"a": 1}}, "reset"),
    ("load_cfg", {"reset": 2}, "reset"),
    ("open_batch", {"dry_run": "perhaps"}, "dry_run"),
    ("open_batch", {"dry_run": []}, "dry_run"),
]
BAD_BODIES = [  # (route, raw body, content type, words)
    ("close_batch", b"{not json", "application/json", "JSON object"),
    ("close_batch", b"[1, 2]", "application/json", "JSON object"),
    ("close_batch", b'"text"', "application/json", "JSON object"),
    ("close_batch", b"null", "application/json", "JSON object"),
    ("close_batch", b'{"message": "caf\xe9"}', "application/json", "JSON object"),
    ("close_batch", b"\xff\xfe\x00", "application/json", "JSON object"),
    ("close_batch", b"x" * 1_100_000, "application/json", "too large"),
    ("open_batch", b"a=" + b"x" * 1_100_000, "application/x-www-form-urlencoded", "too large"),
    ("close_batch", b"records_processed=%ff%fe", "application/x-www-form-urlencoded", "records_processed"),
    ("close_batch", b"job=%ff", "application/x-www-form-urlencoded", "job name"),
]


@pytest.fixture
def bad_app(redis_server, real_redis, cfg_dir):
    app = create_app({"BATCHY_REDIS_URL": redis_server.url, "BATCHY_CFG_DIR": str(cfg_dir)})
    client = app.test_client()
    assert client.post("/load_cfg/wf1").status_code == 200
    assert client.post("/open_batch/wf1").status_code == 200  # something for a bad close to spoil
    return app


@pytest.fixture
def unchanged(redis_server, bad_app):
    """Yield a checker: Redis must hold exactly what it held when the fixture started."""
    raw = raw_client(redis_server.port)
    before = snapshot(raw)
    yield lambda: snapshot(raw) == before
    raw.close()


def call(client, method: str, url: str, **kwargs):
    started = time.monotonic()
    resp = client.open(url, method=method, **kwargs)
    elapsed = time.monotonic() - started
    assert elapsed < LIMIT, f"{method} {url} took {elapsed:.1f} s"
    return resp


def assert_refused(resp, *words, statuses=range(400, 500)):
    assert resp.status_code in statuses, (resp.status_code, resp.data[:300])
    assert resp.mimetype == "application/json", resp.mimetype
    body = json.loads(resp.data)
    assert body["status"] == resp.status_code and body["error"] and body["message"], body
    said = (body["error"].replace("_", " ") + " " + body["message"]).lower()
    for word in words:
        assert word.lower() in said, f"{word!r} not in {said!r}"
    return body


@pytest.mark.parametrize("name,content,words", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_workflow_file_is_refused(bad_app, unchanged, write_cfg, name, content, words):
    write_cfg(name.replace("_", "x"), content)
    resp = call(bad_app.test_client(), "POST", f"/load_cfg/{name.replace('_', 'x')}")
    assert_refused(resp, words, statuses=(400,))
    assert unchanged()


def test_bad_file_over_a_loaded_workflow_changes_nothing(bad_app, unchanged, write_cfg):
    """A broken edit of a loaded workflow's file leaves the loaded state as it was."""
    for _, content, _ in BAD_FILES:
        write_cfg("wf1", content)
        assert_refused(call(bad_app.test_client(), "POST", "/load_cfg/wf1"), statuses=(400,))
    assert unchanged()


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("route,method", [("get_status", "GET"), ("load_cfg", "POST"), ("open_batch", "POST"),
                                          ("close_batch", "POST"), ("fail_batch", "GET")])
def test_bad_workflow_name_is_refused(bad_app, unchanged, route, method, name):
    resp = call(bad_app.test_client(), method, f"/{route}/{name}")
    body = assert_refused(resp, statuses=(400, 404))
    assert body["error"] in ("invalid_name", "not_found", "workflow_not_found", "config_not_found",
                             "invalid_parameter"), body  # a%2fb routes to /open_batch/a/<fmt=b>
    assert unchanged()


# Every bad parameter travels in a JSON body; those that are text also in a query string
# (a query string cannot carry a wrong JSON type).
PARAM_CASES = [(route, data, words, transport) for route, data, words in BAD_PARAMS
               for transport in ("json", "query")
               if transport == "json" or all(isinstance(v, str) for v in data.values())]


@pytest.mark.parametrize("route,data,words,transport", PARAM_CASES,
                         ids=[f"{r}-{sorted(d)[0]}-{t}-{i}" for i, (r, d, _, t) in enumerate(PARAM_CASES)])
def test_bad_parameter_is_refused(bad_app, unchanged, route, data, words, transport):
    client = bad_app.test_client()
    if transport == "json":
        resp = call(client, "POST", f"/{route}/wf1", json=data)
    else:
        resp = call(client, "GET", f"/{route}/wf1", query_string=data)
    assert_refused(resp, words)
    assert unchanged()


@pytest.mark.parametrize("route,body,ctype,words", BAD_BODIES, ids=[f"{r}-{i}" for i, (r, *_) in enumerate(BAD_BODIES)])
def test_bad_body_is_refused(bad_app, unchanged, route, body, ctype, words):
    resp = call(bad_app.test_client(), "POST", f"/{route}/wf1", data=body, content_type=ctype)
    assert_refused(resp, words)
    assert unchanged()


def test_bad_format_and_urls_are_refused(bad_app, unchanged):
    client = bad_app.test_client()
    assert_refused(call(client, "POST", "/open_batch/wf1/xml"), "format")
    assert_refused(call(client, "POST", "/open_batch/wf1/..%2f..%2fetc"), statuses=(400, 404))
    assert_refused(call(client, "DELETE", "/open_batch/wf1"), statuses=(405,))
    assert_refused(call(client, "GET", "/no/such/route"), statuses=(404,))
    assert_refused(call(client, "GET", "/get_status/" + "w" * 20000), statuses=(400,))
    assert unchanged()


def test_deeply_nested_json_body_is_refused(bad_app, unchanged):
    resp = call(bad_app.test_client(), "POST", "/close_batch/wf1", data=b"[" * 100_000, content_type="application/json")
    assert_refused(resp, "JSON object")
    assert unchanged()


def test_message_with_lone_surrogate_is_refused(bad_app, unchanged):
    resp = call(bad_app.test_client(), "POST", "/close_batch/wf1", data=b'{"message": "\\ud800"}',
                content_type="application/json")
    assert_refused(resp, "message")
    assert unchanged()


def test_head_cannot_mutate_when_get_mutations_are_off(redis_server, real_redis, cfg_dir):
    app = create_app({"BATCHY_REDIS_URL": redis_server.url, "BATCHY_CFG_DIR": str(cfg_dir),
                      "BATCHY_ALLOW_GET_MUTATIONS": False})
    client = app.test_client()
    assert client.post("/load_cfg/wf1").status_code == 200
    raw = raw_client(redis_server.port)
    before = snapshot(raw)
    resp = client.head("/open_batch/wf1")  # what a link preview or crawler sends
    assert resp.status_code == 405
    assert snapshot(raw) == before, "HEAD opened a batch"


# -- dates a YAML author may write ------------------------------------------------------

UTC = timezone.utc
T10 = datetime(2024, 1, 1, 10, 0, tzinfo=UTC)
DATE_FORMS = [  # YAML text of from_date -> the instant it means (no offset: UTC)
    ("2024-01-01", datetime(2024, 1, 1, tzinfo=UTC)),
    ("'2024-01-01'", datetime(2024, 1, 1, tzinfo=UTC)),
    ('"2024-01-01"', datetime(2024, 1, 1, tzinfo=UTC)),
    ("2024-01-01T10:00:00", T10),
    ("'2024-01-01T10:00:00'", T10),
    ("2024-01-01 10:00:00", T10),
    ("'2024-01-01 10:00:00'", T10),
    ("'2024-01-01 10:00'", T10),
    ("'2024-01-01T10:00'", T10),
    ("2024-01-01T10:00:00Z", T10),
    ("'2024-01-01T10:00:00Z'", T10),
    ("'2024-01-01t10:00:00z'", T10),
    ("2024-01-01T11:00:00+01:00", T10),
    ("'2024-01-01T11:00:00+01:00'", T10),
    ("'2024-01-01T11:00:00+0100'", T10),
    ("2024-01-01T11:00:00+01", T10),
    ("'2024-01-01T11:00:00+01'", T10),
    ("2024-01-01 05:00:00 -5", T10),
    ("'2024-01-01 05:00:00 -5'", T10),
    ("2024-01-01 11:00:00 +01:00", T10),
    ("'2024-01-01 11:00:00 +01:00'", T10),
    ("2024-01-01T10:00:00.000000Z", T10),
    ("'2024-01-01T10:00:00.5Z'", T10 + timedelta(milliseconds=500)),
    ("2024-01-01 10:00:00.10", T10 + timedelta(milliseconds=100)),
    ("'2024-01-01 10:00:00.10'", T10 + timedelta(milliseconds=100)),
    ("2024-1-1 10:00:00", T10),
    ("'2024-1-1 10:00:00'", T10),
    ("'2024-01-01T10:00:00.123456789Z'", T10 + timedelta(microseconds=123456)),
    ("'20240101T100000Z'", T10),
]


@pytest.mark.parametrize("text,expected", DATE_FORMS, ids=[t for t, _ in DATE_FORMS])
def test_every_date_form_is_accepted(client, write_cfg, text, expected):
    write_cfg("dates", f"job1:\n  from_date: {text}\n")  # a UTC job: see test_workflows for zones
    resp = client.post("/load_cfg/dates")
    assert resp.status_code == 200, resp.get_json()
    stored = datetime.fromisoformat(resp.get_json()["job1"]["from_date"])
    assert stored == expected and stored.utcoffset() == timedelta(0), (text, stored)
    opened = client.post("/open_batch/dates").get_json()["job1"]
    assert datetime.fromisoformat(opened["from_date"]) == expected
