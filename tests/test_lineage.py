"""OpenLineage: each job's window and each backfill chunk attempt reaches a local collector as
run events, each checked against the OpenLineage spec's schema, at least once, also when the
collector was down or the process sending died."""
from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from datetime import datetime, timezone

import jsonschema
import pytest

from batchy import create_app
from batchy.rules import lineage as rules
from batchy.storage import keys
from batchy.web.db import services_of

from .conftest import FRESH

UTC = timezone.utc

# openlineage-python ships no JSON schema (its classes only name the spec's URL, 2-0-2), so this
# is the part of the spec (https://openlineage.io/spec/2-0-2/OpenLineage.json and the facets'
# own schemas) that Batchy's events use: every field the spec marks required, and the enums.
FACET = {"type": "object", "required": ["_producer", "_schemaURL"],
         "properties": {"_producer": {"type": "string", "minLength": 1},
                        "_schemaURL": {"type": "string", "pattern": "^https://openlineage.io/spec/"}}}
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["eventTime", "producer", "schemaURL", "run", "job"],
    "properties": {
        "eventType": {"enum": ["START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"]},
        "eventTime": {"type": "string", "format": "date-time"},
        "producer": {"type": "string", "minLength": 1},
        "schemaURL": {"type": "string", "pattern": "^https://openlineage.io/spec/.*RunEvent$"},
        "run": {"type": "object", "required": ["runId"], "properties": {
            "runId": {"type": "string", "format": "uuid"},
            "facets": {"type": "object", "additionalProperties": FACET, "properties": {
                "nominalTime": {"allOf": [FACET, {"required": ["nominalStartTime"], "properties": {
                    "nominalStartTime": {"type": "string", "format": "date-time"},
                    "nominalEndTime": {"type": "string", "format": "date-time"}}}]},
                "parent": {"allOf": [FACET, {"required": ["run", "job"], "properties": {
                    "run": {"type": "object", "required": ["runId"],
                            "properties": {"runId": {"type": "string", "format": "uuid"}}},
                    "job": {"type": "object", "required": ["namespace", "name"]}}}]},
                "errorMessage": {"allOf": [FACET, {"required": ["message", "programmingLanguage"]}]},
            }}}},
        "job": {"type": "object", "required": ["namespace", "name"], "properties": {
            "namespace": {"type": "string"}, "name": {"type": "string"},
            "facets": {"type": "object", "additionalProperties": FACET}}},
        "inputs": {"type": "array"},
        "outputs": {"type": "array"},
    },
}
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA, format_checker=jsonschema.FormatChecker(["uuid"]))


class Collector:
    """A local OpenLineage collector: checks each event against the schema, records it; can be
    down (503) or hang on a post until come_back()."""

    def __init__(self):
        self.received: list[dict] = []
        self.invalid: list[str] = []
        self.attempts = 0
        self.down = False
        self.hang = threading.Event()
        self.hung = threading.Event()
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                outer.attempts += 1
                if self.path != "/api/v1/lineage":
                    outer.invalid.append(f"posted to {self.path}")
                if outer.hang.is_set():
                    outer.hung.set()
                    outer.release.wait(30)
                    return  # the connection closes unanswered
                if outer.down:
                    self.send_response(503)
                else:
                    problems = [e.message for e in VALIDATOR.iter_errors(body)]
                    for moment in [body.get("eventTime")] + list(
                            (body.get("run", {}).get("facets", {}).get("nominalTime") or {}).values()):
                        if isinstance(moment, str) and moment[:1].isdigit():
                            datetime.fromisoformat(moment)  # date-time: ISO 8601 with an offset
                    outer.invalid += problems
                    outer.received.append(body)
                    self.send_response(400 if problems else 201)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def come_back(self):
        self.hang.clear()
        self.release.set()

    def close(self):
        self.release.set()
        self.server.shutdown()


@pytest.fixture
def collector():
    c = Collector()
    yield c
    c.close()


WF = """
a:
  from_date: '2024-03-01 00:00'
b:
  from_date: '2024-03-01 00:00'
"""


def lineage_app(redis_server, cfg_dir, url, **config):
    return create_app({"BATCHY_REDIS_URL": redis_server.url, "BATCHY_CFG_DIR": str(cfg_dir), **FRESH,
                       "BATCHY_OPENLINEAGE_URL": url, "BATCHY_OPENLINEAGE_INTERVAL": 3600, **config})


def by_run(events):
    runs: dict[str, list] = {}
    for e in events:
        runs.setdefault(e["run"]["runId"], []).append(e["eventType"])
    return runs


def test_each_window_and_chunk_attempt_is_a_run(redis_server, real_redis, cfg_dir, write_cfg, collector):
    write_cfg("lin", WF)
    app = lineage_app(redis_server, cfg_dir, collector.url, BATCHY_OPENLINEAGE_NAMESPACE="etl")
    client, sender = app.test_client(), services_of(app).lineage
    try:
        client.post("/load_cfg/lin")
        first = client.post("/open_batch/lin").json
        client.post("/close_batch/lin", json={"job": "a"})
        assert client.post("/fail_batch/lin", json={"job": "b", "message": "source down"}).status_code == 200
        second = client.post("/open_batch/lin").json
        client.post("/open_batch/lin")  # supersedes the second batch before it closed: both runs aborted
        made = client.post("/backfill/lin", json={"from": "2024-02-01", "to": "2024-02-02", "job": ["a"]}).json
        bid = made["backfill_id"]
        chunk = client.post(f"/backfill/lin/{bid}/lease").json
        client.post(f"/backfill/lin/{bid}/fail", json={"chunk": 0, "attempt": 1, "message": "disk full",
                                                        "lease_token": chunk["lease_token"]})
        again = client.post(f"/backfill/lin/{bid}/lease").json
        client.post(f"/backfill/lin/{bid}/close", json={"chunk": 0, "attempt": 2, "lease_token": again["lease_token"]})

        assert sender.round() == 14
        assert collector.invalid == []
        events = collector.received
        assert {e["job"]["namespace"] for e in events} == {"etl"}
        assert {e["job"]["name"] for e in events} == {"lin.a", "lin.b"}
        batch1 = first["a"]["batch_id"]
        run_a1 = rules.batch_run_id("etl", "lin", batch1, "a")
        run_b1 = rules.batch_run_id("etl", "lin", batch1, "b")
        runs = by_run(events)
        assert runs[run_a1] == ["START", "COMPLETE"] and runs[run_b1] == ["START", "FAIL"]
        start_a1 = next(e for e in events if e["run"]["runId"] == run_a1)
        assert start_a1["run"]["facets"]["nominalTime"]["nominalStartTime"] == first["a"]["from_date"]
        assert start_a1["run"]["facets"]["nominalTime"]["nominalEndTime"] == first["a"]["to_date"]
        fail_b1 = next(e for e in events if e["run"]["runId"] == run_b1 and e["eventType"] == "FAIL")
        assert fail_b1["run"]["facets"]["errorMessage"]["message"] == "source down"
        for job in ("a", "b"):
            assert runs[rules.batch_run_id("etl", "lin", second[job]["batch_id"], job)] == ["START", "ABORT"]
        # The chunk: one run per attempt, each a child of the backfill's run.
        chunk_events = [e for e in events if "parent" in e["run"]["facets"]]
        assert [e["eventType"] for e in chunk_events] == ["START", "FAIL", "START", "COMPLETE"]
        assert {e["run"]["facets"]["parent"]["run"]["runId"] for e in chunk_events} == {
            rules.backfill_run_id("etl", "lin", bid)}
        assert {e["run"]["facets"]["parent"]["job"]["name"] for e in chunk_events} == {"lin.backfill"}
        assert len({e["run"]["runId"] for e in chunk_events}) == 2
        assert chunk_events[1]["run"]["facets"]["errorMessage"]["message"].endswith("disk full")
        assert chunk_events[0]["run"]["facets"]["nominalTime"] == {
            **chunk_events[0]["run"]["facets"]["nominalTime"],
            "nominalStartTime": chunk["from_date"], "nominalEndTime": chunk["to_date"]}
        assert all(uuid.UUID(e["run"]["runId"]) for e in events)
        assert sender.round() == 0 and len(collector.received) == 14  # each once
        assert not real_redis.exists(keys.LINEAGE_OUTBOX, keys.LINEAGE_INFLIGHT)
    finally:
        sender.stop()


def test_a_collector_that_is_down_slows_nothing_and_gets_every_event_when_back(redis_server, real_redis, cfg_dir,
                                                                              write_cfg, collector):
    write_cfg("lin", WF)
    collector.down = True
    app = lineage_app(redis_server, cfg_dir, collector.url)  # starts while the collector is down
    client, sender = app.test_client(), services_of(app).lineage
    try:
        client.post("/load_cfg/lin")
        for _ in range(3):
            started = time.monotonic()
            assert client.post("/open_batch/lin").status_code == 200
            assert client.post("/close_batch/lin").status_code == 200
            assert time.monotonic() - started < 2  # no request ever waits on the collector
        assert sender.round() == 0 and collector.received == []
        assert real_redis.llen(keys.LINEAGE_OUTBOX) == 12  # kept, in order
        collector.down = False
        assert sender.round() == 12
        runs = by_run(collector.received)
        assert list(runs.values()) == [["START", "COMPLETE"]] * 6 and collector.invalid == []
        assert not real_redis.exists(keys.LINEAGE_OUTBOX, keys.LINEAGE_INFLIGHT)
    finally:
        sender.stop()


def test_an_unreachable_collector_url(redis_server, real_redis, cfg_dir):
    app = lineage_app(redis_server, cfg_dir, "http://127.0.0.1:9")  # nothing listens there
    client, sender = app.test_client(), services_of(app).lineage
    try:
        client.post("/load_cfg/wf1")
        assert client.post("/open_batch/wf1").status_code == 200
        assert sender.round() == 0 and real_redis.llen(keys.LINEAGE_OUTBOX) > 0
    finally:
        sender.stop()


def test_no_runs_are_recorded_without_a_collector(fake_redis, cfg_dir):
    from .conftest import make_app
    client = make_app(fake_redis, cfg_dir).test_client()
    client.post("/load_cfg/wf1")
    client.post("/open_batch/wf1")
    assert all("runs" not in event for event in client.get("/events/wf1").json["events"])


def test_an_event_whose_sender_died_is_sent_again(redis_server, real_redis, cfg_dir, write_cfg, collector):
    write_cfg("lin", WF)
    app = lineage_app(redis_server, cfg_dir, collector.url, BATCHY_OPENLINEAGE_TIMEOUT=0.1)  # visibility 5.2 s
    client, sender = app.test_client(), services_of(app).lineage
    try:
        client.post("/load_cfg/lin")
        client.post("/open_batch/lin")
        assert sender.collect() == 2
        # A sender took the first event and died while posting: it sits in flight with its deadline.
        raw = real_redis.rpop(keys.LINEAGE_OUTBOX)
        seconds, micros = real_redis.time()
        real_redis.zadd(keys.LINEAGE_INFLIGHT, {raw: seconds * 1000 + micros // 1000 + 300})
        assert sender.round() == 1  # the other one
        time.sleep(0.4)
        assert sender.round() == 1  # handed back past its deadline, sent again
        assert sorted(e["job"]["name"] for e in collector.received) == ["lin.a", "lin.b"]
    finally:
        sender.stop()


def worker_pids(master: int) -> list[int]:
    with open(f"/proc/{master}/task/{master}/children") as fh:
        return [int(pid) for pid in fh.read().split()]


@pytest.mark.slow  # a real service process, killed
def test_an_event_survives_kill_9_of_the_worker_sending_it(redis_server, real_redis, cfg_dir, write_cfg, collector):
    import os
    import signal
    import urllib.request

    from batchy.testing import ServiceProcess, wait_for

    write_cfg("lin", WF)
    env = {"BATCHY_OPENLINEAGE_URL": collector.url, "BATCHY_OPENLINEAGE_INTERVAL": "0.2",
           "BATCHY_OPENLINEAGE_TIMEOUT": "1"}  # an event in flight is handed back after 7 s
    collector.hang.set()
    svc = ServiceProcess(redis_server.url, str(cfg_dir), env=env, workers=1).start()
    try:
        for path in ("/load_cfg/lin", "/open_batch/lin"):
            with urllib.request.urlopen(urllib.request.Request(svc.url + path, method="POST"), timeout=10) as resp:
                assert resp.status == 200
        assert collector.hung.wait(20), "no event was ever sent"
        [worker] = worker_pids(svc.proc.pid)
        os.kill(worker, signal.SIGKILL)  # the worker holding the connection dies mid-post
        collector.come_back()
        wait_for(lambda: len(collector.received) >= 2, timeout=40, what="both events, the first sent again")
        assert sorted(e["job"]["name"] for e in collector.received) == ["lin.a", "lin.b"]
        assert collector.invalid == []
        wait_for(lambda: not real_redis.exists(keys.LINEAGE_INFLIGHT, keys.LINEAGE_OUTBOX), timeout=10,
                 what="the delivery recorded")
    finally:
        svc.stop()


def test_an_attempt_whose_lease_ran_out_is_aborted_before_the_next_starts(redis_server, real_redis, cfg_dir,
                                                                          write_cfg, collector):
    write_cfg("lin", WF)
    app = lineage_app(redis_server, cfg_dir, collector.url)
    client, sender = app.test_client(), services_of(app).lineage
    try:
        client.post("/load_cfg/lin")
        bid = client.post("/backfill/lin", json={"from": "2024-02-01", "to": "2024-02-02", "job": ["b"]}).json[
            "backfill_id"]
        first = client.post(f"/backfill/lin/{bid}/lease", query_string={"lease_seconds": 0.05}).json
        time.sleep(0.2)  # its worker died: the lease runs out
        second = client.post(f"/backfill/lin/{bid}/lease").json
        assert (first["attempt"], second["attempt"]) == (1, 2)
        assert sender.round() == 3 and collector.invalid == []
        assert [(e["eventType"], e["run"]["runId"]) for e in collector.received] == [
            ("START", rules.chunk_run_id("batchy", "lin", bid, 0, 1)),
            ("ABORT", rules.chunk_run_id("batchy", "lin", bid, 0, 1)),
            ("START", rules.chunk_run_id("batchy", "lin", bid, 0, 2))]
        assert all(e["job"]["name"] == "lin.b" for e in collector.received)
    finally:
        sender.stop()


def test_runs_of_a_reset_and_a_removal_are_aborted(redis_server, real_redis, cfg_dir, write_cfg, collector):
    write_cfg("lin", WF)
    app = lineage_app(redis_server, cfg_dir, collector.url)
    client, sender = app.test_client(), services_of(app).lineage
    try:
        client.post("/load_cfg/lin")
        opened = client.post("/open_batch/lin").json
        client.post("/load_cfg/lin?reset=true")
        client.post("/open_batch/lin")
        assert sender.round() == 6
        client.post("/remove_workflow/lin")  # its history kept: its stream too, read past the cursor
        assert sender.round() == 2
        runs = by_run(collector.received)
        assert runs[rules.batch_run_id("batchy", "lin", opened["a"]["batch_id"], "a")] == ["START", "ABORT"]
        assert list(runs.values()) == [["START", "ABORT"]] * 4 and collector.invalid == []
        aborted = [e for e in collector.received if e["eventType"] == "ABORT"]
        assert "reset" in aborted[0]["run"]["facets"]["errorMessage"]["message"]
        assert "removed" in aborted[-1]["run"]["facets"]["errorMessage"]["message"]
        assert keys.events("lin") in real_redis.hkeys(keys.LINEAGE_CURSORS)
        real_redis.delete(keys.events("lin"))  # the audit trail deleted by hand: its cursor goes with it
        sender.round()
        assert real_redis.hkeys(keys.LINEAGE_CURSORS) == [keys.LINEAGE_SINCE]
    finally:
        sender.stop()


@pytest.mark.parametrize("name, owner", [
    (keys.events("wf1"), ("wf1", None)),
    (keys.backfill_events("wf1", 1700000000), ("wf1", "1700000000")),
    (keys.backfill_chunks("wf1", 1700000000), None),
    (keys.LINEAGE_SINCE, None),
])
def test_a_cursor_names_its_stream(name, owner):
    assert keys.stream_owner(name) == owner
