"""scripts.COMMIT's snapshot writes on a real Redis: an update or a put never writes over a
line that reached a final status, however the stored line spells it, in one HMGET and one
HSET per thousand lines."""
from __future__ import annotations

import json

from batchy.rules.state import SNAPSHOT_PUT, SNAPSHOT_UPDATE
from batchy.storage import keys, scripts
from batchy.web.db import services_of


def snapshot_commit(real_redis, key: str, mode: str, lines: dict[str, str]):
    """Commit nothing but one snapshot of lines to key, on a workflow "t" written anew."""
    version = real_redis.hget(keys.meta("t"), keys.VERSION) or "0"
    args: list = [version, "tok", "", "0", "0", "1", 0, 0, 1, key, mode, 0, len(lines)]
    for item in lines.items():
        args += item
    args += [10, "t-", 0, 10, 0, keys.channel("t"), "test"]  # keep, prefix, no running batch, events
    reply = real_redis.register_script(scripts.COMMIT)(keys=keys.commit_keys("t"), args=args)
    assert reply[0] == scripts.Reply.APPLIED, reply
    return reply


FINAL_LINES = {
    "plain": '{"status":"success","from_date":"2024-01-01"}',
    "status_last": '{"from_date":"2024-01-01","status":"failed"}',
    "escaped_value": '{"status":"abandon\\u0065d"}',  # the word spelled only once decoded
    "escaped_key": '{"st\\u0061tus":"success"}',
}
OPEN_LINES = {
    "open": '{"status":"open"}',
    "mentions": '{"status":"open","message":"the last run failed: success next time; abandoned?"}',
    "escapes": '{"status":"open","message":"a \\"quoted\\" word"}',
    "not_json": "success, or so it says",
    "not_an_object": '["success"]',
    "status_object": '{"status":{"success":true}}',
}


def test_an_update_writes_every_line_but_the_final_ones(real_redis):
    key = "t-1"
    real_redis.hset(key, mapping={**FINAL_LINES, **OPEN_LINES})
    new = {name: json.dumps({"status": "abandoned", "was": name})
           for name in [*FINAL_LINES, *OPEN_LINES, "new_job"]}
    snapshot_commit(real_redis, key, SNAPSHOT_UPDATE, new)
    stored = real_redis.hgetall(key)
    assert {name: stored[name] for name in FINAL_LINES} == FINAL_LINES  # untouched, however spelled
    assert {name: stored[name] for name in [*OPEN_LINES, "new_job"]} == \
        {name: new[name] for name in [*OPEN_LINES, "new_job"]}


def test_an_update_of_a_snapshot_retention_dropped_writes_nothing(real_redis):
    snapshot_commit(real_redis, "t-2", SNAPSHOT_UPDATE, {"a": '{"status":"success"}'})
    assert not real_redis.exists("t-2")


def test_a_put_of_thousands_of_lines_keeps_the_final_ones_among_them(real_redis):
    key = "t-3"
    n = 2_345  # past the chunk of a thousand values, and not a multiple of it
    final = {f"j{i:04d}": '{"status":"success"}' for i in range(0, n, 7)}
    real_redis.hset(key, mapping=final)
    lines = {f"j{i:04d}": json.dumps({"status": "open", "i": i}) for i in range(n)}
    snapshot_commit(real_redis, key, SNAPSHOT_PUT, lines)
    stored = real_redis.hgetall(key)
    assert len(stored) == n
    assert stored == {name: final.get(name, line) for name, line in lines.items()}
    assert real_redis.zscore(keys.history("t"), "3") == 3  # a put indexes the batch


def hmget_calls(real_redis) -> int:
    """How many HMGETs our redis-server ran since its counts were reset, a script's own included."""
    return int(real_redis.info("commandstats").get("cmdstat_hmget", {}).get("calls", 0))


def test_an_amend_writes_its_lines_as_they_are_without_reading_them_and_only_to_a_snapshot_still_there(real_redis):
    real_redis.hset("t-4", mapping={"a": '{"status":"open"}', "b": '{"status":"success"}'})
    real_redis.config_resetstat()
    new = {"a": '{"status":"success","n":1}', "b": '{"status":"abandoned"}'}
    snapshot_commit(real_redis, "t-4", scripts.SNAPSHOT_AMEND, new)
    snapshot_commit(real_redis, "t-5", scripts.SNAPSHOT_AMEND, new)  # retention dropped it
    assert real_redis.hgetall("t-4") == new  # the store vouched for every line: written as sent
    assert not real_redis.exists("t-5")
    assert hmget_calls(real_redis) == 0
    assert real_redis.zscore(keys.history("t"), "4") is None  # an update: the batch is not indexed again


def test_a_workflow_no_import_wrote_has_its_snapshots_updated_without_a_read(real_client, real_redis):
    client = real_client
    client.post("/load_cfg/wf1")
    first = client.post("/open_batch/wf1").json["s_extract"]["batch_id"]
    real_redis.config_resetstat()
    second = client.post("/open_batch/wf1").json["s_extract"]["batch_id"]  # supersedes the first
    assert client.post("/close_batch/wf1").status_code == 200
    assert hmget_calls(real_redis) == 0
    assert {j["status"] for j in client.get(f"/batch/wf1/{first}").json.values()} == {"abandoned"}
    assert {j["status"] for j in client.get(f"/batch/wf1/{second}").json.values()} == {"success"}


def test_after_an_import_a_final_line_under_a_job_open_again_outlives_its_close(real_client, real_app, real_redis,
                                                                               write_cfg):
    client, store = real_client, services_of(real_app).store
    client.post("/load_cfg/wf1")
    batch = client.post("/open_batch/wf1").json["s_load"]["batch_id"]
    backup = json.loads(json.dumps(store.export(["wf1"])))  # s_load open in the batch
    write_cfg("wf1", "s_extract:\n  from_date: 2024-01-01\n")
    assert client.post("/load_cfg/wf1").status_code == 200  # s_load dropped: its line ends abandoned
    store.import_(backup, replace=True)  # s_load is back, open in that batch; its line stays final
    assert client.get("/get_status/wf1").json["s_load"]["status"] == "open"
    real_redis.config_resetstat()
    assert client.post("/close_batch/wf1").status_code == 200
    lines = client.get(f"/batch/wf1/{batch}").json
    assert (lines["s_extract"]["status"], lines["s_load"]["status"]) == ("success", "abandoned")
    assert hmget_calls(real_redis) > 0  # an imported workflow's lines are read before they are written


def test_a_removal_never_writes_over_a_success_that_an_import_left_under_an_open_job(real_client, real_app,
                                                                                      real_redis):
    client, store = real_client, services_of(real_app).store
    client.post("/load_cfg/wf1")
    batch = client.post("/open_batch/wf1").json["s_load"]["batch_id"]
    backup = json.loads(json.dumps(store.export(["wf1"])))  # both jobs open in the batch
    assert client.post("/close_batch/wf1").status_code == 200  # the batch succeeds here
    assert client.post("/remove_workflow/wf1").status_code == 200  # its history stays
    store.import_(backup)  # the jobs come back open in that batch; its success lines stay
    assert {j["status"] for j in client.get("/get_status/wf1").json.values()} == {"open"}
    assert client.post("/remove_workflow/wf1").status_code == 200  # would abandon the open jobs' lines
    lines = {name: json.loads(line) for name, line in real_redis.hgetall(f"wf1-{batch}").items()}
    assert {name: line["status"] for name, line in lines.items()} == {"s_extract": "success", "s_load": "success"}


def test_a_removal_abandons_thousands_of_open_lines_but_no_final_one(real_redis):
    n = 4_321  # past what one unpack() of Lua's stack takes (about 8,000 values), and not a multiple of 1,000
    real_redis.hset("t", "a", "{}")  # the workflow "t" (REMOVE refuses one that does not exist)
    real_redis.hset(keys.meta("t"), keys.VERSION, "1-tok")
    final = {f"j{i:04d}": '{"status":"failed"}' for i in range(0, n, 5)}
    real_redis.hset("t-7", mapping={**{f"j{i:04d}": '{"status":"open"}' for i in range(n)}, **final})
    lines = {f"j{i:04d}": json.dumps({"status": "abandoned", "i": i}) for i in range(n)}
    args: list = ["1-tok", "0", "t-", 10, 1, "t-7", len(lines)]
    for item in lines.items():
        args += item
    args += [1, "action", "remove", keys.channel("t")]
    reply = real_redis.register_script(scripts.REMOVE)(
        keys=[*keys.commit_keys("t")[:5], keys.WORKFLOWS, keys.pause("t"), keys.turn("t")], args=args)
    assert reply == 1
    assert real_redis.hgetall("t-7") == {name: final.get(name, line) for name, line in lines.items()}
    assert not real_redis.exists("t", keys.meta("t"))
