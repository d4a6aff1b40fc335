"""scripts.COMMIT's snapshot writes on a real Redis: an update or a put never writes over a
line that reached a final status, however the stored line spells it, in one HMGET and one
HSET per thousand lines."""
from __future__ import annotations

import json

from batchy.rules.state import SNAPSHOT_PUT, SNAPSHOT_UPDATE
from batchy.storage import keys, scripts


def snapshot_commit(real_redis, key: str, mode: str, lines: dict[str, str]):
    """Commit nothing but one snapshot of lines to key, on a workflow "t" written anew."""
    args: list = ["0", "tok", "", "0", "0", "1", 0, 0, 1, key, mode, 0, len(lines)]
    for item in lines.items():
        args += item
    args += [10, "t-", 10, 0, keys.channel("t"), "test"]
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
