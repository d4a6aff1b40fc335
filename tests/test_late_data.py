"""Late data and attested coverage: invalidate a range, dq verdicts, gates and repairs over them (issue 25)."""
from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from batchy.rules import coverage, gates
from batchy.rules.times import format_time
from batchy.storage.repair import Repairer
from batchy.web.db import services_of

from .test_lineage import Collector, lineage_app

HOUR = 3600.0


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


# -- the rule (pure) ---------------------------------------------------------------------------

def test_effective_coverage_is_the_ledger_minus_dirty_ranges_and_quality_failures():
    ledger = coverage.Ledger([[0.0, 10 * HOUR]])
    dirty = coverage.invalidated(ledger, 2 * HOUR, 4 * HOUR)
    assert dirty.dirty == [[2 * HOUR, 4 * HOUR]] and dirty.windows == ledger.windows
    assert dirty.effective == [[0.0, 2 * HOUR], [4 * HOUR, 10 * HOUR]]
    assert dirty.holes() == [[2 * HOUR, 4 * HOUR]]
    # only what was covered becomes dirty: past the ledger's end it is a plain hole already
    assert coverage.invalidated(ledger, 9 * HOUR, 12 * HOUR).dirty == [[9 * HOUR, 10 * HOUR]]
    # a passing window over part of it covers that part again
    again = coverage.succeeded(dirty, 2 * HOUR, 3 * HOUR)
    assert again.dirty == [[3 * HOUR, 4 * HOUR]] and again.holes() == [[3 * HOUR, 4 * HOUR]]
    # a failing one moves it to the quality failures: still a hole
    failed = coverage.succeeded(again, 3 * HOUR, 5 * HOUR, passed=False)
    assert failed.dirty == [] and failed.failed == [[3 * HOUR, 5 * HOUR]]
    assert failed.holes() == [[3 * HOUR, 5 * HOUR]]
    # a dirty range at the very end is still a hole (the extent is the ledger's, not the effective one's)
    assert coverage.invalidated(ledger, 8 * HOUR, 10 * HOUR).holes() == [[8 * HOUR, 10 * HOUR]]


def test_records_are_summed_while_windows_touch_and_unknown_once_they_overlap():
    ledger = coverage.Ledger([])
    for hour, rows in ((0, 10), (1, 20), (2, 30)):
        ledger = coverage.succeeded(ledger, hour * HOUR, (hour + 1) * HOUR, records=rows)
    assert ledger.windows == [[0.0, 3 * HOUR]] and ledger.records == [60]
    apart = coverage.succeeded(ledger, 5 * HOUR, 6 * HOUR, records=7)
    assert apart.windows == [[0.0, 3 * HOUR], [5 * HOUR, 6 * HOUR]] and apart.records == [60, 7]
    filled = coverage.succeeded(apart, 3 * HOUR, 5 * HOUR, records=3)  # a backfill of the hole: touches both
    assert filled.windows == [[0.0, 6 * HOUR]] and filled.records == [70]
    rerun = coverage.succeeded(filled, 5.5 * HOUR, 7 * HOUR, records=4)  # overlaps: rows would count twice
    assert rerun.records == [None]
    inside = coverage.succeeded(apart, HOUR, 2 * HOUR, records=25)  # a rerun within an interval: unknown too
    assert inside.windows == apart.windows and inside.records == [None, 7]


def test_a_gate_over_an_invalidated_range_is_missed_saying_so_unless_auto_backfill_repairs_it():
    now = datetime(2024, 3, 2, 12, tzinfo=UTC)
    job = {"status": "success", "from_date": "2024-03-01T00:00:00+00:00", "to_date": "2024-03-02T12:00:00+00:00",
           "batch_id": 1}
    ledger = coverage.invalidated(coverage.Ledger([[at("2024-03-01T00:00:00+00:00"), now.timestamp()]]),
                                  at("2024-03-01T10:00:00+00:00"), at("2024-03-01T12:00:00+00:00"))
    since, through = datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC)
    verdict = gates.coverage_verdict({"up": job}, {"up": ledger}, ["up"], since, through)
    assert verdict["state"] == gates.MISSED
    reason = verdict["jobs"]["up"]["reason"]
    assert reason.startswith("invalidated: [2024-03-01T10:00:00+00:00, 2024-03-01T12:00:00+00:00)")
    assert "never covered" not in reason
    repaired = gates.coverage_verdict({"up": {**job, "auto_backfill": True}}, {"up": ledger}, ["up"], since, through)
    assert repaired["state"] == gates.WAITING
    workflow_wide = gates.coverage_verdict({"up": job}, {"up": ledger}, ["up"], since, through,
                                           settings={"auto_backfill": True})
    assert workflow_wide["state"] == gates.WAITING
    assert "auto_backfill repairs it" in workflow_wide["jobs"]["up"]["reason"]
    # ... unless auto_backfill gave up on that range (its backfill failed or was cancelled)
    gave_up = {"up": [[at("2024-03-01T10:00:00+00:00"), at("2024-03-01T12:00:00+00:00")]]}
    dropped = gates.coverage_verdict({"up": job}, {"up": ledger}, ["up"], since, through,
                                     settings={"auto_backfill": True}, given_up=gave_up)
    assert dropped["state"] == gates.MISSED
    assert dropped["jobs"]["up"]["reason"].startswith("auto_backfill gave up on [2024-03-01T10:00:00+00:00, ")
    # a plain hole of the ledger behind the watermark is repaired too, so it is waited for
    plain = coverage.Ledger([[since.timestamp(), at("2024-03-01T03:00:00+00:00")],
                             [at("2024-03-01T04:00:00+00:00"), now.timestamp()]])
    assert gates.coverage_verdict({"up": job}, {"up": plain}, ["up"], since, through)["state"] == gates.MISSED
    assert gates.coverage_verdict({"up": {**job, "auto_backfill": True}}, {"up": plain}, ["up"], since,
                                  through)["state"] == gates.WAITING
    # ... but not a range before the ledger's first window: auto_backfill repairs only its holes
    earlier = datetime(2024, 2, 28, tzinfo=UTC)
    assert gates.coverage_verdict({"up": {**job, "auto_backfill": True}}, {"up": plain}, ["up"], earlier,
                                  through)["state"] == gates.MISSED
    # tolerance: holes no longer than N minutes do not hold the gate
    assert gates.coverage_verdict({"up": job}, {"up": ledger}, ["up"], since, through,
                                  max_hole_seconds=120 * 60)["state"] == gates.READY
    assert gates.coverage_verdict({"up": job}, {"up": ledger}, ["up"], since, through,
                                  max_hole_seconds=119 * 60)["state"] == gates.MISSED
    failed = coverage.succeeded(coverage.Ledger([[since.timestamp(), now.timestamp()]]),
                                at("2024-03-01T05:00:00+00:00"), at("2024-03-01T06:00:00+00:00"), passed=False)
    verdict = gates.coverage_verdict({"up": job}, {"up": failed}, ["up"], since, through)
    assert verdict["state"] == gates.MISSED and verdict["jobs"]["up"]["reason"].startswith("failed quality: ")


# -- through the API ---------------------------------------------------------------------------

def hourly(write_cfg, client, setting: str = "", start: datetime | None = None) -> datetime:
    """Load workflow up (one hourly job, load) from yesterday's midnight; run it through the last full hour."""
    now = datetime.now(UTC)
    start = start or datetime.combine(now.date() - timedelta(days=1), datetime.min.time(), UTC)
    write_cfg("up", f"load:\n  from_date: {start.isoformat()}\n  batch_size: hour\n{setting}")
    assert client.post("/load_cfg/up").status_code == 200
    assert client.post("/open_batch/up").status_code == 200
    assert client.post("/close_batch/up", query_string={"records_processed": 100}).status_code == 200
    return start


def test_invalidate_makes_a_dirty_hole_bumps_the_generation_and_is_audited(client, write_cfg):
    start = hourly(write_cfg, client)
    r = client.post("/invalidate/up", query_string={"from": format_time(start + timedelta(hours=10)),
                                                    "to": format_time(start + timedelta(hours=12)),
                                                    "reason": "late rows from the ERP"})
    assert r.status_code == 200, r.json
    assert r.json["load"]["generation"] == 1
    shown = client.get("/coverage/up").json["load"]
    dirty = [format_time(start + timedelta(hours=10)), format_time(start + timedelta(hours=12))]
    assert shown["dirty"] == [dirty] and shown["holes"] == [dirty] and shown["failed_quality"] == []
    assert shown["generation"] == 1 and len(shown["covered"]) == 2
    assert client.get("/get_status/up").json["load"]["generation"] == 1
    event = client.get("/events/up").json["events"][0]
    assert event["action"] == "invalidate" and event["message"] == "late rows from the ERP"
    assert event["jobs"] == ["load"]
    # a second one touching it bumps it again; the ranges merge
    assert client.post("/invalidate/up", query_string={
        "from": format_time(start + timedelta(hours=11)), "to": format_time(start + timedelta(hours=13)),
        "job": "load"}).json["load"]["generation"] == 2
    assert client.get("/coverage/up").json["load"]["dirty"] == [
        [dirty[0], format_time(start + timedelta(hours=13))]]
    # a reload keeps the generation (runtime state), and adds no attestation of its own
    assert client.post("/load_cfg/up").status_code == 200
    job = client.get("/get_status/up").json["load"]
    assert job["generation"] == 2 and "dq" not in job and "checksum" not in job


def test_invalidate_refuses_a_backwards_range_and_an_unknown_job(client, write_cfg):
    start = hourly(write_cfg, client)
    r = client.post("/invalidate/up", query_string={"from": format_time(start + timedelta(hours=2)),
                                                    "to": format_time(start + timedelta(hours=1))})
    assert r.status_code == 400 and r.json["parameter"] == "to"
    r = client.post("/invalidate/up", query_string={"from": format_time(start), "to": format_time(start + timedelta(
        hours=1)), "job": "nope"})
    assert r.status_code == 404
    assert client.post("/invalidate/up", query_string={"from": format_time(start)}).status_code == 400


def test_the_next_run_covers_an_invalidated_range_ahead_of_the_watermark(client, write_cfg):
    start = hourly(write_cfg, client)
    end = datetime.fromisoformat(client.get("/get_status/up").json["load"]["to_date"])
    assert client.post("/invalidate/up", query_string={"from": format_time(end - timedelta(hours=1)),
                                                       "to": format_time(end)}).status_code == 200
    assert client.post("/set_from_date/up", query_string={
        "from_date": format_time(end - timedelta(hours=1))}).status_code == 200
    assert client.post("/open_batch/up").status_code == 200
    assert client.post("/close_batch/up").status_code == 200
    shown = client.get("/coverage/up").json["load"]
    assert shown["dirty"] == [] and shown["holes"] == [] and shown["covered"][0][0] == format_time(start)


def test_a_close_attests_its_load_and_dq_fail_moves_the_watermark_but_leaves_a_hole(client, write_cfg):
    start = hourly(write_cfg, client, "  max_window_hours: 5\n")  # windows of 5 hours: [0, 5) closed
    client.post("/open_batch/up")  # [5, 10)
    r = client.post("/close_batch/up", query_string={"checksum": "x" * 129})
    assert r.status_code == 400 and r.json["parameter"] == "checksum" and "128" in r.json["message"]
    r = client.post("/close_batch/up", query_string={"dq": "maybe"})
    assert r.status_code == 400 and r.json["parameter"] == "dq"
    assert client.post("/fail_batch/up", query_string={"dq": "fail"}).status_code == 400  # a failure attests nothing
    r = client.post("/close_batch/up", query_string={"checksum": "sha256:ab12", "dq": "fail",
                                                     "dq_message": "3 rows without a key", "records_processed": 5})
    assert r.status_code == 200, r.json
    job = client.get("/get_status/up").json["load"]
    assert job["status"] == "success" and job["dq"] == "fail" and job["checksum"] == "sha256:ab12"
    assert job["dq_message"] == "3 rows without a key"
    entry = client.get("/history/up?limit=1").json["batches"][0]["jobs"]["load"]
    assert (entry["checksum"], entry["dq"], entry["dq_message"]) == ("sha256:ab12", "fail", "3 rows without a key")
    failed = [format_time(start + timedelta(hours=5)), format_time(start + timedelta(hours=10))]
    shown = client.get("/coverage/up").json["load"]
    assert shown["failed_quality"] == [failed] and shown["holes"] == [failed] and shown["dirty"] == []
    # the watermark moved on: the next window starts after the failed one
    assert client.post("/open_batch/up").json["load"]["from_date"] == failed[1]
    assert "dq" not in client.get("/get_status/up").json["load"]  # said of the last window only
    assert client.post("/close_batch/up", query_string={"dq": "pass"}).status_code == 200
    assert client.get("/coverage/up").json["load"]["holes"] == [failed]
    # a rerun of the failed window that passes covers it again
    assert client.post("/set_from_date/up", query_string={"from_date": failed[0]}).status_code == 200
    client.post("/open_batch/up")
    client.post("/close_batch/up", query_string={"dq": "pass"})
    shown = client.get("/coverage/up").json["load"]
    assert shown["failed_quality"] == [] and shown["holes"] == []


def test_a_backfill_chunk_attests_and_a_failed_one_stays_a_hole(client, write_cfg):
    start = hourly(write_cfg, client)
    hour10 = start + timedelta(hours=10)
    client.post("/invalidate/up", query_string={"from": format_time(hour10), "to": format_time(hour10 + timedelta(
        hours=2))})
    made = client.post("/backfill/up", query_string={"from": format_time(hour10),
                                                     "to": format_time(hour10 + timedelta(hours=2))}).json
    chunks = []
    while (r := client.post(f"/backfill/up/{made['backfill_id']}/lease")).status_code == 200:
        chunks.append(r.json)
    first, second = chunks
    lease = {"chunk": first["chunk"], "attempt": first["attempt"], "lease_token": first["lease_token"]}
    assert client.post(f"/backfill/up/{made['backfill_id']}/close", query_string={
        **lease, "dq": "bogus"}).status_code == 400
    closed = client.post(f"/backfill/up/{made['backfill_id']}/close", query_string={
        **lease, "dq": "pass", "checksum": "c1"}).json
    assert closed["dq"] == "pass" and closed["checksum"] == "c1"
    closed = client.post(f"/backfill/up/{made['backfill_id']}/close", query_string={
        "chunk": second["chunk"], "attempt": second["attempt"], "lease_token": second["lease_token"],
        "dq": "fail", "dq_message": "nulls"}).json
    assert closed["dq"] == "fail" and closed["dq_message"] == "nulls"
    shown = client.get("/coverage/up").json["load"]
    failed = [format_time(hour10 + timedelta(hours=1)), format_time(hour10 + timedelta(hours=2))]
    assert shown["dirty"] == [] and shown["failed_quality"] == [failed] and shown["holes"] == [failed]


def test_wait_tolerates_holes_up_to_max_hole_minutes(client, write_cfg):
    start = hourly(write_cfg, client)
    client.post("/invalidate/up", query_string={"from": format_time(start + timedelta(hours=10)),
                                                "to": format_time(start + timedelta(hours=10, minutes=30))})
    gate = {"through": format_time(start + timedelta(days=1)), "since": format_time(start), "timeout": 0}
    assert client.get("/wait/up", query_string=gate).json["state"] == "missed"
    assert client.get("/wait/up", query_string={**gate, "max_hole_minutes": 30}).json["state"] == "ready"
    assert client.get("/wait/up", query_string={**gate, "max_hole_minutes": 29.5}).json["state"] == "missed"
    r = client.get("/wait/up", query_string={**gate, "max_hole_minutes": -1})
    assert r.status_code == 400 and r.json["parameter"] == "max_hole_minutes"
    r = client.get("/wait/up", query_string={"max_hole_minutes": 5, "timeout": 0})
    assert r.status_code == 400 and r.json["parameter"] == "max_hole_minutes"


def test_an_export_carries_dirty_ranges_quality_failures_and_generations(app, client, write_cfg):
    start = hourly(write_cfg, client)
    client.post("/invalidate/up", query_string={"from": format_time(start + timedelta(hours=1)),
                                                "to": format_time(start + timedelta(hours=2))})
    store = services_of(app).store
    before = client.get("/coverage/up").json
    doc = store.export(["up"])
    store.remove("up", purge_history=True)
    assert store.import_(doc) == ["up"]
    assert client.get("/coverage/up").json == before
    assert client.get("/get_status/up").json["load"]["generation"] == 1


# -- the scenario of the "done when", end to end on a real Redis -----------------------

@pytest.fixture
def collector():
    found = Collector()
    yield found
    found.close()


def test_late_data_upstream_invalidated_the_gate_waits_auto_backfill_repairs_it_and_the_gate_opens(
        redis_server, real_redis, cfg_dir, write_cfg, collector):
    real_app = lineage_app(redis_server, cfg_dir, collector.url)  # an OpenLineage collector listens
    client = real_app.test_client()
    start = hourly(write_cfg, client, "  auto_backfill: true\n")  # ran from yesterday's midnight through now
    yesterday = {"since": format_time(start), "through": format_time(start + timedelta(days=1))}
    assert client.get("/wait/up", query_string={**yesterday, "timeout": 0}).json["state"] == "ready"

    # late rows arrive for yesterday 10:00-12:00: the upstream says so
    late = [format_time(start + timedelta(hours=10)), format_time(start + timedelta(hours=12))]
    r = client.post("/invalidate/up", query_string={"from": late[0], "to": late[1], "reason": "late ERP rows"})
    assert r.status_code == 200 and r.json["load"]["generation"] == 1

    # the downstream gate waits (auto_backfill will repair it: not missed)
    verdict = client.get("/wait/up", query_string={**yesterday, "timeout": 0}).json
    assert verdict["state"] == "waiting" and verdict["jobs"]["load"]["holes"] == [late]
    answers = []
    waiter = threading.Thread(target=lambda: answers.append(
        real_app.test_client().get("/wait/up", query_string={**yesterday, "timeout": 30}).json))
    waiter.start()

    # the elected repairer turns the dirty range into a backfill, once
    found = services_of(real_app)
    repairer = Repairer(found.store, found.backfills, found.fleet, interval=60.0)  # the leader, round after round
    made = repairer.round()
    assert [(m["from"], m["to"], m["jobs"], m["actor"]) for m in made] == [(*late, ["load"], "auto_backfill")]
    assert repairer.round() == []

    # the chunks run (a worker leases and closes each, attesting its load)
    bid = made[0]["backfill_id"]
    ran = 0
    while (lease := client.post(f"/backfill/up/{bid}/lease")).status_code == 200:
        chunk = lease.json
        assert client.post(f"/backfill/up/{bid}/close", query_string={
            "chunk": chunk["chunk"], "attempt": chunk["attempt"], "lease_token": chunk["lease_token"],
            "records_processed": 7, "dq": "pass", "checksum": f"sum-{chunk['chunk']}"}).status_code == 200
        ran += 1
    assert ran == 2  # hourly chunks

    # the gate opens: the waiter was woken, and a new look agrees
    waiter.join(timeout=30)
    assert answers and answers[0]["state"] == "ready", answers
    assert client.get("/wait/up", query_string={**yesterday, "timeout": 0}).json["state"] == "ready"
    shown = client.get("/coverage/up").json["load"]
    assert shown["dirty"] == [] and shown["holes"] == [] and shown["generation"] == 1

    # the lineage events name each window: the first run's, then each repairing chunk attempt's,
    # a child of the backfill's run
    lineage = services_of(real_app).lineage
    try:
        lineage.round()
    finally:
        lineage.stop()
    assert collector.invalid == []
    windows = [(e["eventType"], e["run"]["facets"]["nominalTime"]["nominalStartTime"],
                e["run"]["facets"]["nominalTime"]["nominalEndTime"], "parent" in e["run"]["facets"])
               for e in collector.received if e["job"]["name"] == "up.load"]
    first, now = format_time(start), windows[1][2]
    hours = [format_time(start + timedelta(hours=h)) for h in (10, 11, 12)]
    assert windows == [("START", first, now, False), ("COMPLETE", first, now, False),
                       ("START", hours[0], hours[1], True), ("COMPLETE", hours[0], hours[1], True),
                       ("START", hours[1], hours[2], True), ("COMPLETE", hours[1], hours[2], True)]


@pytest.mark.slow  # a real service process and the waitsy command
def test_waitsy_through_waits_over_an_invalidated_range_and_tolerates_short_holes(service, write_cfg):
    import json
    import urllib.request

    from waitsy.cli import main as waitsy

    now = datetime.now(UTC)
    start = datetime.combine(now.date() - timedelta(days=1), datetime.min.time(), UTC)
    write_cfg("up", f"load:\n  from_date: {start.isoformat()}\n  batch_size: hour\n")
    for path in ("/load_cfg/up", "/open_batch/up", "/close_batch/up"):
        urllib.request.urlopen(service.url + path).read()
    query = (f"from={format_time(start + timedelta(hours=10))}&to={format_time(start + timedelta(hours=10, minutes=20))}"
             .replace("+", "%2B"))
    answer = json.loads(urllib.request.urlopen(service.url + "/invalidate/up?" + query).read())
    assert answer["load"]["generation"] == 1
    through = format_time(start + timedelta(days=1))
    base = ["--url", service.url, "-wf", "up", "--through", through, "--timeout", "1"]
    assert waitsy(base) != 0
    assert waitsy(base + ["--max-hole-minutes", "20"]) == 0


def test_the_command_line_invalidates_and_attests(service, write_cfg, monkeypatch, capsys):
    import json

    from batchy.cli import main

    monkeypatch.setenv("BATCHY_URL", service.url)
    monkeypatch.delenv("BATCHY_API_TOKEN", raising=False)

    def batchy(*argv):
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    start = datetime.combine(datetime.now(UTC).date() - timedelta(days=1), datetime.min.time(), UTC)
    write_cfg("up", f"load:\n  from_date: {start.isoformat()}\n  batch_size: hour\n  max_window_hours: 5\n")
    assert batchy("load", "up")[0] == 0
    assert batchy("open", "up")[0] == 0
    code, out, err = batchy("close", "up", "--dq", "fail", "--dq-message", "nulls", "--checksum", "abc")
    assert code == 0, err
    assert json.loads(out)["load"]["dq"] == "fail" and json.loads(out)["load"]["checksum"] == "abc"
    assert batchy("open", "up")[0] == 0
    code, _, err = batchy("close", "up", "--dq", "maybe")
    assert code != 0 and "maybe" in err
    assert batchy("close", "up", "--dq", "pass")[0] == 0  # [5, 10) passed
    # [1, 2) failed its check already: only [6, 7) becomes dirty
    code, out, err = batchy("invalidate", "up", "--from", format_time(start + timedelta(hours=1)),
                            "--to", format_time(start + timedelta(hours=2)), "--job", "load", "--reason", "late")
    assert code == 0, err
    code, out, err = batchy("invalidate", "up", "--from", format_time(start + timedelta(hours=6)),
                            "--to", format_time(start + timedelta(hours=7)), "--reason", "late")
    assert code == 0, err
    assert json.loads(out)["load"]["generation"] == 2
    code, out, _ = batchy("coverage", "up")
    shown = json.loads(out)["load"]
    assert shown["dirty"] == [[format_time(start + timedelta(hours=6)), format_time(start + timedelta(hours=7))]]
    assert shown["failed_quality"] == [[format_time(start), format_time(start + timedelta(hours=5))]]
    code, out, _ = batchy("events", "up", "--limit", "1")
    assert json.loads(out)[0]["action"] == "invalidate" and json.loads(out)[0]["message"] == "late"


def test_a_gate_waits_for_auto_backfill_and_is_missed_once_it_gave_up(app, client, write_cfg):
    start = hourly(write_cfg, client, "  auto_backfill: true\n")
    yesterday = {"since": format_time(start), "through": format_time(start + timedelta(days=1))}
    late = [format_time(start + timedelta(hours=10)), format_time(start + timedelta(hours=12))]
    client.post("/invalidate/up", query_string={"from": late[0], "to": late[1]})
    assert client.get("/wait/up", query_string={**yesterday, "timeout": 0}).json["state"] == "waiting"
    found = services_of(app)
    repairer = Repairer(found.store, found.backfills, found.fleet, interval=60.0)  # the leader, round after round
    made = repairer.round()
    assert client.get("/wait/up", query_string={**yesterday, "timeout": 0}).json["state"] == "waiting"
    # an operator cancels the automatic backfill: auto_backfill will not make it again
    assert client.post(f"/backfill/up/{made[0]['backfill_id']}/cancel").status_code == 200
    assert repairer.round() == []
    verdict = client.get("/wait/up", query_string={**yesterday, "timeout": 0}).json
    assert verdict["state"] == "missed", verdict
    assert verdict["jobs"]["load"]["reason"].startswith(f"auto_backfill gave up on [{late[0]}, {late[1]})")


def test_a_repair_that_fails_its_quality_check_again_is_not_made_again_and_the_gate_is_missed(app, client,
                                                                                               write_cfg):
    start = hourly(write_cfg, client, "  auto_backfill: true\n")
    yesterday = {"since": format_time(start), "through": format_time(start + timedelta(days=1)), "timeout": 0}
    late = [format_time(start + timedelta(hours=10)), format_time(start + timedelta(hours=11))]
    client.post("/invalidate/up", query_string={"from": late[0], "to": late[1]})
    found = services_of(app)
    repairer = Repairer(found.store, found.backfills, found.fleet, interval=60.0)  # one leader, round after round
    made = repairer.round()
    assert len(made) == 1
    bid = made[0]["backfill_id"]
    lease = client.post(f"/backfill/up/{bid}/lease").json
    assert client.post(f"/backfill/up/{bid}/close", query_string={
        "chunk": lease["chunk"], "attempt": lease["attempt"], "lease_token": lease["lease_token"],
        "dq": "fail", "dq_message": "still 3 rows without a key"}).status_code == 200
    assert client.get("/coverage/up").json["load"]["failed_quality"] == [late]
    # reloaded and still failing: auto_backfill does not loop on it ...
    assert repairer.round() == [] and repairer.round() == []
    assert len(client.get("/backfills/up").json["backfills"]) == 1
    # ... and the gate over it is missed, saying why
    verdict = client.get("/wait/up", query_string=yesterday).json
    assert verdict["state"] == "missed", verdict
    assert verdict["jobs"]["load"]["reason"].startswith(f"auto_backfill gave up on [{late[0]}, {late[1]})")
    # a later invalidation of another range is still repaired by itself
    other = [format_time(start + timedelta(hours=14)), format_time(start + timedelta(hours=15))]
    client.post("/invalidate/up", query_string={"from": other[0], "to": other[1]})
    assert [(m["from"], m["to"]) for m in repairer.round()] == [tuple(other)]


def test_an_invalidation_while_a_run_is_open_is_not_cleaned_by_that_runs_close(client, write_cfg):
    start = hourly(write_cfg, client)
    late = [format_time(start + timedelta(hours=10)), format_time(start + timedelta(hours=12))]
    # an operator reruns yesterday (rewind), and the late rows arrive while that run is open
    assert client.post("/set_from_date/up", query_string={"from_date": format_time(start)}).status_code == 200
    opened = client.post("/open_batch/up").json["load"]
    assert client.post("/invalidate/up", query_string={"from": late[0], "to": late[1]}).status_code == 200
    assert client.get("/get_status/up").json["load"]["invalidated_in_batch"] == opened["batch_id"]
    assert client.post("/close_batch/up").status_code == 200
    shown = client.get("/coverage/up").json["load"]
    assert shown["dirty"] == [late] and late in shown["holes"]  # that run may have read before the late rows
    # the next run that starts after the invalidation cleans it
    assert client.post("/set_from_date/up", query_string={"from_date": format_time(start)}).status_code == 200
    client.post("/open_batch/up")
    client.post("/close_batch/up")
    assert client.get("/coverage/up").json["load"]["dirty"] == []


def test_an_invalidation_of_the_open_window_not_yet_covered_is_dirty_at_its_close(client, write_cfg):
    start = datetime.combine(datetime.now(UTC).date() - timedelta(days=1), datetime.min.time(), UTC)
    write_cfg("up", f"load:\n  from_date: {start.isoformat()}\n")
    client.post("/load_cfg/up")
    client.post("/open_batch/up")  # the first window: nothing covered yet
    late = [format_time(start + timedelta(hours=1)), format_time(start + timedelta(hours=2))]
    assert client.post("/invalidate/up", query_string={"from": late[0], "to": late[1]}).status_code == 200
    client.post("/close_batch/up")
    shown = client.get("/coverage/up").json["load"]
    assert shown["dirty"] == [late] and shown["holes"] == [late]
