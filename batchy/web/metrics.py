"""GET /metrics: Prometheus text format, computed from Redis at scrape time.

No in-process counters: every gunicorn worker (and every replica of the service)
reads the same Redis, so whichever one Prometheus reaches reports the same numbers.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone

import redis
from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..rules import lateness
from .db import Services, services
from .http import endpoint, params
from .schema import TEXT
from ..rules.health import last_success, open_since, stale_after_seconds
from ..rules.jobs import STATUSES

bp = Blueprint("metrics", __name__)
log = logging.getLogger("batchy")

# The counters the issue names; every action (load, reset, set, rewind, ...) is in batchy_actions_total too.
COUNTERS = (
    ("open", "batchy_batches_opened", "Batches opened per workflow."),
    ("close", "batchy_batches_closed", "Successful close calls per workflow."),
    ("fail", "batchy_batches_failed", "Fail calls per workflow."),
)


class BatchyCollector:
    """Read every workflow in one pipelined round trip and turn it into metric families."""

    def __init__(self, found: Services):
        self.store, self.history, self.pauses = found.store, found.history, found.pauses

    def collect(self):
        up = GaugeMetricFamily("batchy_redis_up", "1 if Redis answered this scrape, else 0.")
        writable = GaugeMetricFamily("batchy_redis_writable",
                                     "1 if Redis accepted a write this scrape, 0 if it refuses writes "
                                     "(out of memory, read-only replica) or is down.")
        try:
            refused = self.store.refuses_writes()
            now = self.store.now()
            names = self.store.workflows()
            overview = self.history.overview(names)
            pauses = self.pauses.status(names)
        except redis.exceptions.RedisError as exc:
            # Still answer 200: "Redis is down" is itself what Prometheus should record.
            log.warning("metrics: redis unavailable: %s", exc)
            up.add_metric([], 0)
            writable.add_metric([], 0)
            yield up
            yield writable
            return
        up.add_metric([], 1)
        writable.add_metric([], 0 if refused else 1)
        yield up
        yield writable
        yield from families(overview, now.timestamp(), pauses)


def families(overview: dict[str, dict], now: float, pauses: dict | None = None):
    """Return the metric families for an overview (and pauses) read at unix time now."""
    pauses = pauses or {}
    paused_workflows = pauses.get("workflows") or {}
    wf_labels = ["workflow"]
    job_labels = ["workflow", "job"]
    counters = {action: CounterMetricFamily(name, doc, labels=wf_labels) for action, name, doc in COUNTERS}
    actions = CounterMetricFamily("batchy_actions", "State changes per workflow and action.",
                                  labels=["workflow", "action"])
    success = GaugeMetricFamily("batchy_last_success_timestamp_seconds",
                                "Unix time the job's latest successful batch ended.", labels=job_labels)
    open_age = GaugeMetricFamily("batchy_open_batch_age_seconds",
                                 "Seconds since the oldest open batch of the workflow started; 0 when none is open.",
                                 labels=wf_labels)
    status = GaugeMetricFamily("batchy_job_status", "1 for the job's current status, 0 for the others.",
                               labels=["workflow", "job", "status"])
    records = GaugeMetricFamily("batchy_job_records_processed",
                                "records_processed reported when the job's latest batch closed.", labels=job_labels)
    stale_after = GaugeMetricFamily("batchy_stale_after_seconds",
                                    "The workflow's stale_after_hours setting, in seconds (only when set).",
                                    labels=wf_labels)
    workflows = GaugeMetricFamily("batchy_workflows", "Loaded workflows.")
    workflows.add_metric([], len(overview))
    service_paused = GaugeMetricFamily("batchy_service_paused", "1 while the whole service is paused, else 0.")
    service_paused.add_metric([], 1 if pauses.get("service") else 0)
    late = GaugeMetricFamily("batchy_job_late", "1 while the job is late (GET /late), else 0.", labels=job_labels)
    job_success = GaugeMetricFamily("batchy_job_last_success_timestamp_seconds",
                                    "Unix time the job's latest successful batch ended.", labels=job_labels)
    stuck = GaugeMetricFamily("batchy_batch_stuck",
                              "1 while the workflow's batch is open longer than its max_open_hours, else 0.",
                              labels=wf_labels)
    holes = GaugeMetricFamily("batchy_coverage_holes",
                              "Stretches of time between the job's first and latest successful window that no "
                              "successful window covered (GET /coverage).", labels=job_labels)
    corrupt = GaugeMetricFamily("batchy_workflow_corrupt",
                                "1 while a value stored for the workflow cannot be read or used (a bad hand edit), else 0.",
                                labels=wf_labels)
    paused = GaugeMetricFamily("batchy_workflow_paused", "1 while the workflow itself is paused, else 0.",
                               labels=wf_labels)
    for wf in sorted(overview):
        data = overview[wf]
        counts = data.get("counts") or {}
        for action, family in counters.items():
            family.add_metric([wf], counts.get(action, 0))
        for action in sorted(counts):
            actions.add_metric([wf, action], counts[action])
        paused.add_metric([wf], 1 if paused_workflows.get(wf) else 0)
        corrupt.add_metric([wf], 1 if data.get("error") else 0)
        when = datetime.fromtimestamp(now, timezone.utc)
        settings = data.get("settings") or {}
        stuck.add_metric([wf], 1 if lateness.workflow_stuck(data["jobs"], settings, when) else 0)
        since = open_since(data["jobs"])
        open_age.add_metric([wf], max(0.0, now - since.timestamp()) if since else 0.0)
        limit = stale_after_seconds(data.get("settings") or {})
        if limit:
            stale_after.add_metric([wf], limit)
        for job_name, job in data["jobs"].items():
            moment = last_success(job)
            if moment is not None:
                success.add_metric([wf, job_name], moment.timestamp())
                job_success.add_metric([wf, job_name], moment.timestamp())
            late.add_metric([wf, job_name], 1 if lateness.job_lateness(job, settings, when) else 0)
            current = job.get("status")
            for name in STATUSES:
                status.add_metric([wf, job_name, name], 1 if current == name else 0)
            if current not in STATUSES and current:
                status.add_metric([wf, job_name, str(current)], 1)
            if isinstance(job.get("coverage_holes"), int):
                holes.add_metric([wf, job_name], job["coverage_holes"])
            if isinstance(job.get("records_processed"), int):
                records.add_metric([wf, job_name], job["records_processed"])
    return [*counters.values(), actions, success, open_age, status, records, stale_after, workflows,
            service_paused, paused, corrupt, holes, late, job_success, stuck]


@endpoint(bp, "/metrics", summary="Prometheus metrics", ok=TEXT, reads="metrics")
def metrics():
    params()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BatchyCollector(services()))
    return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST,
                                                        "Cache-Control": "no-store"})
