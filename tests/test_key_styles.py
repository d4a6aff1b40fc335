"""Key styles: classic names unchanged byte for byte, cluster names in one slot per workflow."""
from __future__ import annotations

import pytest

from batchy.storage import keys, scripts
from batchy.storage.keys import CLASSIC, CLUSTER, key_slot

WF = "wf1"


def every_key(style, wf: str) -> list[str]:
    return [style.workflow(wf), style.batch(wf, 17), style.meta(wf), style.history(wf), style.events(wf),
            style.pause(wf), style.turn(wf), style.idempotency(wf, "run-1"), style.channel(wf),
            style.backfills(wf), style.backfill(wf, 3), style.backfill_chunks(wf, 3), style.backfill_queue(wf, 3),
            style.backfill_events(wf, 3), style.repair_lock(wf), style.batches(wf), style.pause_marker(wf)]


def test_classic_names_are_the_module_functions_byte_for_byte():
    assert every_key(CLASSIC, WF) == [
        "wf1", "wf1-17", "batchy:wf:wf1", "batchy:history:wf1", "batchy:events:wf1", "batchy:pause:wf1",
        "batchy:turn:wf1", keys.idempotency(WF, "run-1"), "batchy:changed:wf1", "batchy:backfills:wf1",
        "batchy:backfill:wf1:3", "batchy:backfill:wf1:3:chunks", "batchy:backfill:wf1:3:queue",
        "batchy:backfill:wf1:3:events", "batchy:repair:wf1", "batchy:batches", "batchy:pause"]
    assert CLASSIC.commit_keys(WF) == keys.commit_keys(WF)
    assert (CLASSIC.WEBHOOK_OUTBOX, CLASSIC.webhook_seen("e")) == (keys.WEBHOOK_OUTBOX, keys.webhook_seen("e"))


@pytest.mark.parametrize("wf", ["wf1", "a", "sales.daily-eu_2", "x" * 128])
def test_every_cluster_key_of_a_workflow_is_in_its_slot(wf):
    names = every_key(CLUSTER, wf) + list(CLUSTER.commit_keys(wf))
    assert {key_slot(name) for name in names} == {key_slot("{" + wf + "}")}
    assert CLUSTER.workflow(wf) == "{" + wf + "}" and CLUSTER.batch(wf, 5) == "{" + wf + "}-5"
    assert CLUSTER.workflow_from_channel(CLUSTER.channel(wf)) == wf
    assert CLUSTER.batch_id_of(CLUSTER.batch(wf, 5)) == (wf, "5")


def test_one_pause_marker_per_slot():
    markers = CLUSTER.pause_markers()
    assert len(markers) == keys.SLOTS
    assert sorted(key_slot(m) for m in markers) == list(range(keys.SLOTS))


def test_the_webhook_queues_share_a_slot_on_a_cluster():
    assert len({key_slot(k) for k in (CLUSTER.WEBHOOK_OUTBOX, CLUSTER.WEBHOOK_INFLIGHT, CLUSTER.WEBHOOK_SENDING,
                                      CLUSTER.webhook_seen("abc"))}) == 1


def test_cluster_scripts_publish_sharded_and_leave_the_index_alone():
    for script in (scripts.COMMIT, scripts.REMOVE):
        out = scripts.for_cluster(script)
        assert "'SPUBLISH'" in out and "'PUBLISH'" not in out
        assert "KEYS[6], KEYS[1])" not in out
    assert "redis.call('PUBLISH', channel, message)" in scripts.COMMIT  # classic unchanged


def test_a_store_takes_the_style_from_the_setting(fake_redis):
    from batchy import settings
    from batchy.storage.store import BatchStore

    conf = settings.load(environ={})
    assert BatchStore(fake_redis, conf).keys is CLASSIC
    assert BatchStore(fake_redis, {**conf, "BATCHY_REDIS_CLUSTER": True}).keys is CLUSTER


def test_a_key_added_to_the_module_is_in_both_styles(monkeypatch):
    def new_key(wf: str) -> str:
        return f"{keys.NAMESPACE}new:{wf}"

    monkeypatch.setattr(keys, "new_key", new_key, raising=False)
    monkeypatch.setattr(keys, "NEW_SERVICE_KEY", "batchy:new", raising=False)
    style = keys.KeyStyle(True)  # a fresh one: nothing cached
    assert style.new_key("wf1") == "batchy:new:{wf1}" and keys.KeyStyle(False).new_key("wf1") == "batchy:new:wf1"
    assert style.NEW_SERVICE_KEY == "batchy:new" and style.count_field("open") == "count:open"
    with pytest.raises(AttributeError):
        style.no_such_key  # noqa: B018


def test_a_corrupt_value_is_named_by_its_key_in_the_store_s_style(real_redis, cfg_dir):
    """On a cluster-style store the message names the key an operator must fix: batchy:wf:{wf1}."""
    from .conftest import make_app

    client = make_app(real_redis, cfg_dir, BATCHY_REDIS_CLUSTER=True).test_client()
    assert client.post("/load_cfg/wf1").status_code == 200
    client.post("/open_batch/wf1")
    client.post("/close_batch/wf1")
    assert client.post("/open_batch/wf1").status_code == 200
    real_redis.hset(CLUSTER.meta("wf1"), keys.coverage_field("s_extract"), "not a ledger")
    real_redis.hdel(CLUSTER.meta("wf1"), "version")  # a hand edit, told as the docs say
    for answer in (client.get("/coverage/wf1"), client.post("/close_batch/wf1"),
                   client.get("/wait/wf1", query_string={"through": "2024-01-02", "timeout": 0})):
        assert answer.status_code >= 400, (answer.status_code, answer.get_data(as_text=True))
        assert "batchy:wf:{wf1}" in answer.get_data(as_text=True), answer.get_data(as_text=True)
