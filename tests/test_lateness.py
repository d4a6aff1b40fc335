"""Late jobs and stuck batches: the rules, GET /late, the metrics and the alert rules."""
from __future__ import annotations

import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from batchy.rules.fields import check as check_field
from batchy.rules import lateness

from .conftest import make_app
from .reliability_helpers import VirtualClock

UTC = timezone.utc
ROOT = Path(__file__).resolve().parent.parent


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize("expected_by, now, start, due_at", [
    ("06:00", "2024-03-05 07:00", "2024-03-05 00:00", "2024-03-05 06:00"),
    ("06:00", "2024-03-05 05:00", "2024-03-04 00:00", "2024-03-04 06:00"),  # today's not due yet
    ("30 * * * *", "2024-03-05 07:45", "2024-03-05 06:30", "2024-03-05 07:30"),  # hourly at :30
])
def test_due_times(expected_by, now, start, due_at):
    assert lateness.due(expected_by, at(now), UTC) == (at(start), at(due_at))


def test_a_job_is_late_without_a_success_in_its_period():
    job = {"status": "success", "last_success_end": "2024-03-04T23:00:00+00:00"}
    late = lateness.job_lateness(job, {"expected_by": "06:00"}, at("2024-03-05 07:00"))
    assert late["kind"] == "late" and late["since"] == "2024-03-05T06:00:00+00:00"
    ontime = {"status": "success", "last_success_end": "2024-03-05T03:00:00+00:00"}
    assert lateness.job_lateness(ontime, {"expected_by": "06:00"}, at("2024-03-05 07:00")) is None
    assert lateness.job_lateness({"status": "new"}, {"max_age_hours": 2}, at("2024-03-05 07:00"))["since"] is None
    paris = {"status": "success", "timezone": "Europe/Paris", "last_success_end": "2024-03-04T23:30:00+00:00"}
    assert lateness.job_lateness(paris, {"expected_by": "06:00"}, at("2024-03-05 06:00")) is None  # 00:30 Paris


def test_late_and_stuck_times_are_to_the_second():
    # Issue 22, item 10: a fractional max_age_hours or max_open_hours showed microseconds in /late.
    now = at("2024-03-05 09:00:00.123456")
    job = {"status": "success", "last_success_end": "2024-03-05T03:00:00+00:00"}
    late = lateness.job_lateness(job, {"max_age_hours": 0.3333}, now)  # 1199.88 s
    assert late["since"] == "2024-03-05T03:19:59+00:00"
    paris = {**job, "timezone": "Europe/Paris"}
    assert lateness.job_lateness(paris, {"max_age_hours": 1.0001}, now)["since"] == "2024-03-05T05:00:00+01:00"
    stuck = lateness.workflow_stuck({"a": {"status": "open", "batch_start": "2024-03-05T03:00:00+00:00"}},
                                    {"max_open_hours": 0.3333}, now)
    assert stuck["since"] == "2024-03-05T03:19:59+00:00"
    for found in (late, stuck):
        assert not any("." in word for word in found["reason"].split() if word[:4] == "2024"), found["reason"]


@pytest.mark.parametrize("key, value", [("expected_by", "25:00"), ("expected_by", "61 * * * *"),
                                        ("expected_by", 6), ("max_age_hours", 0), ("max_open_hours", -1)])
def test_bad_settings_are_refused(key, value):
    with pytest.raises(ValueError, match=key):
        check_field(key, value)


def test_a_job_that_never_runs_is_in_late_and_in_the_metrics(fake_redis, cfg_dir, write_cfg):
    clock = VirtualClock(datetime(2024, 3, 5, 5, 0, tzinfo=UTC))
    client = make_app(fake_redis, cfg_dir, CLOCK=clock).test_client()
    write_cfg("nightly", ".batchy:\n  max_open_hours: 2\nload:\n  expected_by: '06:00'\n")
    assert client.post("/load_cfg/nightly").status_code == 200
    assert client.get("/late").json == [{"workflow": "nightly", "job": "load", "kind": "late",
                                         "since": "2024-03-04T06:00:00+00:00",
                                         "reason": client.get("/late").json[0]["reason"]}]
    client.post("/open_batch/nightly")
    client.post("/close_batch/nightly")  # 05:00: today's run succeeded
    assert client.get("/late").json == []
    clock.advance(24 * 3600 + 3 * 3600)  # the next day at 08:00, its run never happened; one opened, hangs
    client.post("/open_batch/nightly")
    clock.advance(3 * 3600)
    found = client.get("/late").json
    assert {(f["kind"], f["job"]) for f in found} == {("late", "load"), ("stuck", None)}
    metrics = client.get("/metrics").data.decode()
    assert 'batchy_job_late{job="load",workflow="nightly"} 1.0' in metrics
    assert 'batchy_batch_stuck{workflow="nightly"} 1.0' in metrics
    assert 'batchy_job_last_success_timestamp_seconds{job="load",workflow="nightly"}' in metrics


def test_a_workflow_file_with_a_bad_expected_by_is_refused(fake_redis, cfg_dir, write_cfg):
    client = make_app(fake_redis, cfg_dir).test_client()
    write_cfg("bad", "a:\n  expected_by: 'noon'\n")
    r = client.post("/load_cfg/bad")
    assert r.status_code == 400 and "expected_by" in r.json["message"]


def test_the_alert_rules_check_with_promtool():
    promtool = shutil.which("promtool")
    if promtool is None:  # .ci/run installs Debian's prometheus package, which carries it
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    result = subprocess.run([promtool, "check", "rules", str(ROOT / "docs" / "batchy-alerts.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


@pytest.mark.parametrize("detail", ["job", "workflow"])
def test_every_alert_rule_reads_a_metric_exported_at_either_detail(fake_redis, cfg_dir, detail):
    import re

    client = make_app(fake_redis, cfg_dir, BATCHY_METRICS_DETAIL=detail).test_client()
    client.post("/load_cfg/wf1")
    exported = set(re.findall(r"^# TYPE (batchy_[a-z_]+) ", client.get("/metrics").data.decode(), re.M))
    doc = yaml.safe_load((ROOT / "docs" / "batchy-alerts.yml").read_text())
    for rule in doc["groups"][0]["rules"]:
        used = set(re.findall(r"\b(batchy_[a-z_]+)\b", rule["expr"]))
        if not used and re.fullmatch(r'up\{job="batchy"\} == 0', rule["expr"]):
            continue  # Prometheus' own series of the scrape, not one of ours
        assert used & exported, (rule["alert"], detail, used)


# Each alert fed the series of one detail; promtool says whether it fires with the labels shown.
ALERT_TESTS = """
rule_files: [RULES]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - {series: 'batchy_job_late{workflow="wf1",job="a"}', values: '1x30'}
      - {series: 'batchy_workflow_late_jobs{workflow="wf2"}', values: '2x30'}
      - {series: 'batchy_coverage_holes{workflow="wf1",job="a"}', values: '1x30'}
      - {series: 'batchy_workflow_coverage_holes{workflow="wf2"}', values: '3x30'}
      - {series: 'batchy_job_status{workflow="wf1",job="a",status="failed"}', values: '1x30'}
      - {series: 'batchy_workflow_jobs{workflow="wf2",status="failed"}', values: '1x30'}
      - {series: 'batchy_coverage_behind{workflow="wf1",job="a"}', values: '1x30'}
      - {series: 'batchy_workflow_coverage_behind_jobs{workflow="wf2"}', values: '0x5 1x25'}
    alert_rule_test:
      - eval_time: 20m
        alertname: BatchyJobFailed
        exp_alerts:
          - exp_labels: {severity: warning, workflow: wf1, job: a, status: failed}
            exp_annotations:
              summary: "wf1/a failed"
              description: "Its last batch failed and no rerun succeeded yet: the next open reruns the same window."
          - exp_labels: {severity: warning, workflow: wf2, status: failed}
            exp_annotations:
              summary: "wf2 failed"
              description: "Its last batch failed and no rerun succeeded yet: the next open reruns the same window."
      - eval_time: 20m
        alertname: BatchyJobLate
        exp_alerts:
          - exp_labels: {severity: warning, workflow: wf1, job: a}
            exp_annotations:
              summary: "wf1/a is late"
              description: "No success in its period (expected_by) or its last success is older than max_age_hours: GET /late says why."
          - exp_labels: {severity: warning, workflow: wf2}
            exp_annotations:
              summary: "wf2 is late"
              description: "No success in its period (expected_by) or its last success is older than max_age_hours: GET /late says why."
      - eval_time: 20m
        alertname: BatchyCoverageHole
        exp_alerts:
          - exp_labels: {severity: warning, workflow: wf1, job: a}
            exp_annotations:
              summary: "wf1/a has 1 hole(s) in its coverage"
              description: "Time no successful window covered: GET /coverage/wf1; rewind or backfill it."
          - exp_labels: {severity: warning, workflow: wf2}
            exp_annotations:
              summary: "wf2 has 3 hole(s) in its coverage"
              description: "Time no successful window covered: GET /coverage/wf2; rewind or backfill it."
      - eval_time: 8m
        alertname: BatchyCoverageBehind
        exp_alerts:
          - exp_labels: {severity: warning, workflow: wf1, job: a}
            exp_annotations:
              summary: "wf1/a: complete data is older than max_coverage_lag_hours"
              description: "A hole or an invalidated range stops its coverage: GET /late and /coverage/wf1 say where."
      - eval_time: 20m
        alertname: BatchyCoverageBehind
        exp_alerts:
          - exp_labels: {severity: warning, workflow: wf1, job: a}
            exp_annotations:
              summary: "wf1/a: complete data is older than max_coverage_lag_hours"
              description: "A hole or an invalidated range stops its coverage: GET /late and /coverage/wf1 say where."
          - exp_labels: {severity: warning, workflow: wf2}
            exp_annotations:
              summary: "wf2: complete data is older than max_coverage_lag_hours"
              description: "A hole or an invalidated range stops its coverage: GET /late and /coverage/wf2 say where."
"""


def test_the_alerts_fire_at_either_metrics_detail(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    tests = tmp_path / "alerts-test.yml"
    tests.write_text(ALERT_TESTS.replace("RULES", str(ROOT / "docs" / "batchy-alerts.yml")))
    result = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
