"""Export and import: a valid state goes round unchanged; a bad export file writes nothing."""
from __future__ import annotations

import copy
import json

import fakeredis
import pytest

from batchy.storage import keys
from batchy.cli import main
from batchy.errors import BadRequest
from batchy.web.db import services_of

from .conftest import make_app


def store_of(app):
    return services_of(app).store


@pytest.fixture
def exported(client, app):
    """An export of wf1 after a success, a failure and an operator's set_from_date."""
    for path in ("/load_cfg/wf1", "/open_batch/wf1", "/close_batch/wf1", "/open_batch/wf1",
                 "/fail_batch/wf1?message=boom", "/set_from_date/wf1?from_date=2024-03-01&job=s_extract"):
        assert client.post(path).status_code == 200, path
    return json.loads(json.dumps(store_of(app).export()))


@pytest.fixture
def target(cfg_dir):
    """(store, redis) of an empty second service."""
    redis = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    return store_of(make_app(redis, cfg_dir)), redis


def test_export_then_import_gives_the_same_state(exported, app, target, fake_redis):
    store, redis = target
    assert store.import_(exported) == ["wf1"]
    for key in ("wf1", keys.history("wf1")):
        assert redis.dump(key) is not None
    assert redis.hgetall("wf1") == fake_redis.hgetall("wf1")  # the stored JSON texts, byte for byte
    batch_ids = list(exported["workflows"]["wf1"]["batches"])
    for batch_id in batch_ids:
        assert redis.hgetall(keys.batch("wf1", batch_id)) == fake_redis.hgetall(keys.batch("wf1", batch_id))
    assert store.reads.history("wf1") == store_of(app).reads.history("wf1")
    again = json.loads(json.dumps(store.export()))
    assert again["workflows"]["wf1"]["jobs"] == exported["workflows"]["wf1"]["jobs"]
    assert again["workflows"]["wf1"]["batches"] == exported["workflows"]["wf1"]["batches"]


def test_a_window_truncated_to_before_1900_exports_and_imports(client, app, write_cfg, target, fake_redis):
    """A from_date of 1900-01-01 UTC truncated to midnight in New York is 1899-12-31 05:00 UTC:
    the import refused it, and with it every workflow of the backup."""
    write_cfg("old", "old:\n  from_date: '1900-01-01T00:00:00Z'\n  trunc_start: true\n  timezone: America/New_York\n")
    for path in ("/load_cfg/old", "/open_batch/old", "/close_batch/old", "/load_cfg/wf1"):
        assert client.post(path).status_code == 200, path
    opened = client.get("/history/old").json["batches"][0]["jobs"]["old"]["from_date"]
    assert opened == "1899-12-31T00:00:00-05:00"
    doc = json.loads(json.dumps(store_of(app).export(["old", "wf1"])))
    store, redis = target
    assert store.import_(doc) == ["old", "wf1"]
    assert redis.hgetall("old") == fake_redis.hgetall("old")


@pytest.mark.parametrize("field", ["from_date", "next_from_date"])
def test_a_stored_date_far_outside_what_batchy_writes_is_corrupt_state(client, app, fake_redis, field):
    """next_from_date 0001-01-01 by hand was opened as a window from year 1, then broke the export."""
    client.post("/load_cfg/wf1")
    job = json.loads(fake_redis.hget("wf1", "s_extract"))
    fake_redis.hset("wf1", "s_extract", json.dumps({**job, field: "0001-01-01T00:00:00+00:00"}))
    fake_redis.hdel(keys.meta("wf1"), "version")
    r = client.post("/open_batch/wf1")
    assert r.status_code == 409 and r.json["error"] == "corrupt_state" and field in r.json["message"], r.json
    assert client.post("/load_cfg/wf1?reset=true").status_code == 200
    assert client.post("/open_batch/wf1").status_code == 200


def test_an_abandoned_batch_and_allowed_similar_names_import(client, app, write_cfg, target):
    write_cfg("ab", ".batchy:\n  allow_params: [from_dt]\nj:\n  from_dt: 1\n")
    for path in ("/load_cfg/ab", "/open_batch/ab", "/open_batch/ab"):
        assert client.post(path).status_code == 200
    doc = json.loads(json.dumps(store_of(app).export(["ab"])))
    assert "abandoned" in {snap["j"]["status"] for snap in doc["workflows"]["ab"]["batches"].values()}
    store, _ = target
    assert store.import_(doc) == ["ab"]
    assert store.status("ab")["j"]["from_dt"] == 1


def edit(doc, path, value):
    """Return a copy of doc with the value at path (a tuple of keys) set, or deleted if value is DELETE."""
    doc = copy.deepcopy(doc)
    node = doc["workflows"]["wf1"]
    for key in path[:-1]:
        node = node[key] if key != "<batch>" else node[next(iter(node))]
    last = path[-1] if path[-1] != "<batch>" else next(iter(node))
    node[last] = value
    return doc


J = ("jobs", "s_extract")
B = ("batches", "<batch>")
# (path in the wf1 entry, value, words the message must hold besides 'wf1')
BAD = [
    (J + ("infa_section",), "S]\n[forged", ["s_extract", "infa_section"]),
    (J + ("infa_section",), "S\u2028$$from_date=01/01/1900", ["s_extract", "infa_section"]),
    (J + ("infa_date_format",), "MM/DD\n$$from_date=01/01/1900", ["s_extract", "infa_date_format"]),
    (J + ("infa_date_format",), "MM\x85DD", ["s_extract", "infa_date_format"]),
    (J + ("from_date",), "garbage", ["s_extract", "from_date"]),
    (J + ("from_date",), "2026-11-31T00:00:00+00:00", ["s_extract", "from_date"]),
    (J + ("batch_start",), 1700000000, ["s_extract", "batch_start"]),
    (J + ("next_from_date",), "0001-01-01T00:00:00+00:00", ["s_extract", "next_from_date"]),
    (J + ("reprocess_hours",), -5, ["s_extract", "reprocess_hours"]),
    (J + ("reprocess_hours",), "2", ["s_extract", "reprocess_hours"]),
    (J + ("trunc_start",), "yes", ["s_extract", "trunc_start"]),
    (J + ("timezone",), "Mars/Olympus", ["s_extract", "timezone"]),
    (J + ("status",), "running", ["s_extract", "status"]),
    (J + ("status",), "abandoned", ["s_extract", "status"]),
    (J + ("batch_id",), "12", ["s_extract", "batch_id"]),
    (J + ("batch_id",), 1.5, ["s_extract", "batch_id"]),
    (J + ("records_processed",), -1, ["s_extract", "records_processed"]),
    (J + ("message",), ["a"], ["s_extract", "message"]),
    (J + ("$$from_date",), "01/01/1900", ["s_extract", "$$from_date"]),
    (J + ("reprocess_hour",), 3, ["s_extract", "reprocess_hour", "did you mean"]),
    (J + ("a\u2028b",), 1, ["s_extract", "parameter name"]),
    (J, 5, ["s_extract"]),
    (("jobs", "bad name"), {}, ["job name"]),
    (("jobs",), {}, ["no jobs"]),
    (("jobs",), [], ["jobs"]),
    (("meta",), "x", ["meta"]),
    (("meta", "last_batch_id"), "abc", ["last_batch_id"]),
    (("meta", "last_batch_id"), "-1", ["last_batch_id"]),
    (("meta", "settings"), "{not json", ["settings"]),
    (("meta", "settings"), '{"exclusive": 1}', ["exclusive"]),
    (("meta", "count:open"), "many", ["count:open"]),
    (("meta", "success:s_extract"), '{"batch_id": 1, "start": "soon", "end": null}', ["success:s_extract", "start"]),
    (("meta", "success:s_extract"), "[]", ["success:s_extract"]),
    (("meta", "success:bad name"), '{"batch_id": 1, "start": null, "end": null}', ["job name"]),
    (("meta", "colour"), "red", ["colour"]),
    (("batches",), [], ["batches"]),
    (("batches", "abc"), {"s_extract": {"status": "success"}}, ["batch", "abc"]),
    (("batches", "-5"), {"s_extract": {"status": "success"}}, ["batch", "-5"]),
    (("batches", "0012"), {"s_extract": {"status": "success"}}, ["batch", "0012"]),
    (("batches", "12"), [], ["batch 12"]),
    (("batches", "12"), {}, ["batch 12"]),
    (("batches", "12"), {"s_extract": "success"}, ["batch 12", "s_extract"]),
    (("batches", "12"), {"bad name": {}}, ["job name"]),
    (B + ("s_extract",), {"status": "running"}, ["s_extract", "status"]),
    (B + ("s_extract",), {"status": "success", "from_date": "garbage"}, ["s_extract", "from_date"]),
    (B + ("s_extract",), {"status": "success", "batch_end": 5}, ["s_extract", "batch_end"]),
    (B + ("s_extract",), {"status": "success", "records_processed": "x"}, ["s_extract", "records_processed"]),
]


@pytest.mark.parametrize("path, value, words", BAD, ids=lambda v: repr(v)[:50])
def test_a_bad_export_file_is_refused_whole_before_anything_is_written(exported, target, path, value, words):
    store, redis = target
    doc = edit(exported, path, value)
    doc["workflows"] = {"aaa": copy.deepcopy(exported["workflows"]["wf1"]), **doc["workflows"]}  # a good one first
    with pytest.raises(BadRequest) as err:
        store.import_(doc)
    assert err.value.status == 400 and err.value.code in ("invalid_parameter", "invalid_config", "invalid_name")
    assert "'wf1'" in err.value.message, err.value.message
    for word in words:
        assert word in err.value.message, err.value.message
    assert redis.keys("*") == []  # not even the good workflow before it


@pytest.mark.parametrize("doc", [[], {}, {"workflows": []}, {"format": "other/2", "workflows": {}},
                                 {"workflows": {"wf1": []}}, {"workflows": {"bad name": {"jobs": {"j": {}}}}}])
def test_what_is_not_an_export_is_refused(target, doc):
    store, redis = target
    with pytest.raises(BadRequest):
        store.import_(doc)
    assert redis.keys("*") == []


def test_an_existing_workflow_is_refused_before_anything_is_written(exported, target):
    store, redis = target
    store.import_({"workflows": {"zzz": exported["workflows"]["wf1"]}})
    before = sorted(redis.keys("*"))
    doc = {"workflows": {"aaa": exported["workflows"]["wf1"], "zzz": exported["workflows"]["wf1"]}}
    with pytest.raises(Exception) as err:
        store.import_(doc)
    assert "replace" in str(err.value) and "zzz" in str(err.value)
    assert sorted(redis.keys("*")) == before


def test_batchy_import_refuses_a_forged_file(exported, redis_server, real_redis, monkeypatch, tmp_path, capsys):
    doc = edit(exported, J + ("infa_section",), "S]\n$$from_date=01/01/1900 00:00:00\n[S")
    path = tmp_path / "forged.json"
    path.write_text(json.dumps(doc))
    monkeypatch.setenv("BATCHY_REDIS_URL", redis_server.url)
    assert main(["import", str(path)]) == 1
    err = capsys.readouterr().err
    assert "'wf1'" in err and "'s_extract'" in err and "infa_section" in err
    assert real_redis.keys("*") == []


def test_an_older_backup_restored_keeps_the_coverage_of_later_windows(client, app):
    """The ledger is what succeeded: restoring an export taken before a success merges the
    export's ledger in, it does not forget the later window (a false hole)."""
    store = store_of(app)
    client.post("/load_cfg/wf1")
    client.post("/open_batch/wf1")
    client.post("/close_batch/wf1")
    backup = json.loads(json.dumps(store.export(["wf1"])))
    client.post("/set_from_date/wf1?from_date=2023-06-01&job=s_extract")  # an operator reloads older data
    client.post("/open_batch/wf1")
    client.post("/close_batch/wf1")
    before = client.get("/coverage/wf1").json
    assert before["s_extract"]["covered"][0][0].startswith("2023-06-01")
    assert store.import_(backup, replace=True) == ["wf1"]
    assert client.get("/coverage/wf1").json == before


def test_a_job_open_in_a_batch_newer_than_any_other_id_keeps_its_batch(client, app):
    """A hand-edited export may name a job's batch only on the job: ids still never go back."""
    store = store_of(app)
    client.post("/load_cfg/wf1")
    doc = json.loads(json.dumps(store.export(["wf1"])))
    job = doc["workflows"]["wf1"]["jobs"]["s_extract"]
    job.update(status="open", batch_id=1_900_000_000, from_date="2024-01-01T00:00:00+00:00",
               to_date="2024-02-01T00:00:00+00:00", batch_start="2024-02-01T00:00:00+00:00")
    assert store.import_(doc, replace=True) == ["wf1"]
    assert client.post("/close_batch/wf1?batch_id=1900000000&job=s_extract").status_code == 200
    assert client.post("/open_batch/wf1").json["s_extract"]["batch_id"] > 1_900_000_000


def _metric(client, name: str, wf: str) -> float:
    for line in client.get("/metrics").get_data(as_text=True).splitlines():
        if line.startswith(f'{name}{{workflow="{wf}"}} '):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} for {wf}")


def test_restoring_an_older_export_never_rewrites_history(real_client, real_app):
    """open B0, close; open B1; export; close B1 (777 rows); open B2; import the export --replace:
    B1's acknowledged success stays in its snapshot with its rows, most_recent stays B1,
    counters never go down, and B2 (open, never closed) ends abandoned."""
    client, store = real_client, store_of(real_app)
    client.post("/load_cfg/wf1")
    b0 = client.post("/open_batch/wf1").json["s_extract"]["batch_id"]
    client.post(f"/close_batch/wf1?batch_id={b0}")
    b1 = client.post("/open_batch/wf1").json["s_extract"]["batch_id"]
    backup = json.loads(json.dumps(store.export(["wf1"])))
    assert client.post(f"/close_batch/wf1?batch_id={b1}&records_processed=777").status_code == 200
    b2 = client.post("/open_batch/wf1").json["s_extract"]["batch_id"]
    closed_before = _metric(client, "batchy_batches_closed_total", "wf1")
    assert closed_before == 2

    assert store.import_(backup, replace=True) == ["wf1"]

    snapshot = client.get(f"/batch/wf1/{b1}").json
    assert {job["status"] for job in snapshot.values()} == {"success"}
    assert {job["records_processed"] for job in snapshot.values()} == {777}
    assert client.get("/most_recent/wf1").json["batch_id"] == b1
    assert _metric(client, "batchy_batches_closed_total", "wf1") == closed_before
    statuses = {entry["batch_id"]: entry["status"] for entry in client.get("/history/wf1").json["batches"]}
    assert statuses == {b0: "success", b1: "success", b2: "abandoned"}
    # The jobs come back as the export had them (open in B1, now superseded): failed, so the
    # next open reruns B1's window; the ledger still holds B1's window.
    state = client.get("/get_status/wf1").json
    assert {job["status"] for job in state.values()} == {"failed"}
    reopened = client.post("/open_batch/wf1").json
    assert {job["from_date"] for job in reopened.values()} == {job["from_date"] for job in snapshot.values()}
