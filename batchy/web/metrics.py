"""GET /metrics: Prometheus text format, computed from Redis.

No in-process counters: every gunicorn worker (and every replica of the service)
reads the same Redis, so whichever one Prometheus reaches reports the same numbers.
`batchy_redis_up` and `batchy_redis_writable` are read on every scrape; the fleet's
figures come from one read of every workflow per BATCHY_FLEET_INTERVAL per process
(storage/fleet.py), rendered once per read.
"""
from __future__ import annotations

import gzip
import logging
import threading
from datetime import datetime, timezone

import redis
from flask import Blueprint, Response, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST

from ..rules import lateness
from ..rules.health import last_success, open_since, stale_after_seconds
from ..rules.jobs import STATUSES
from ..storage.fleet import FleetRead
from .api import late_text
from .db import services, services_of
from .http import endpoint, params
from .schema import TEXT

bp = Blueprint("metrics", __name__)
log = logging.getLogger("batchy")

# The counters the issue names; every action (load, reset, set, rewind, ...) is in batchy_actions_total too.
COUNTERS = (
    ("open", "batchy_batches_opened", "Batches opened per workflow."),
    ("close", "batchy_batches_closed", "Successful close calls per workflow."),
    ("fail", "batchy_batches_failed", "Fail calls per workflow."),
)


class Family:
    """One metric family and its samples, kept as plain tuples: a fleet of 10,000 workflows
    has 300,000 samples, which prometheus_client's objects render several times slower."""

    def __init__(self, kind: str, name: str, doc: str, labels=()):
        self.kind, self.name, self.doc, self.labels = kind, name, doc, tuple(labels)
        self.samples: list[tuple[tuple, float]] = []

    def add_metric(self, values, value) -> None:
        self.samples.append((tuple(values), value))

    def text(self) -> str:
        sample = self.name + "_total" if self.kind == "counter" else self.name
        lines = [f"# HELP {sample} {_escape_help(self.doc)}", f"# TYPE {sample} {self.kind}"]
        order = sorted(range(len(self.labels)), key=self.labels.__getitem__)  # labels by name, as prometheus_client
        for values, value in self.samples:
            if values:
                pairs = ",".join(f'{self.labels[i]}="{_escape(values[i])}"' for i in order)
                lines.append(f"{sample}{{{pairs}}} {float(value)!r}")
            else:
                lines.append(f"{sample} {float(value)!r}")
        return "\n".join(lines) + "\n"


def Gauge(name: str, doc: str, labels=()) -> Family:  # noqa: N802 - reads like prometheus_client's
    return Family("gauge", name, doc, labels)


def Counter(name: str, doc: str, labels=()) -> Family:  # noqa: N802
    return Family("counter", name, doc, labels)


def _escape(value) -> str:
    text = str(value)
    if "\\" in text or '"' in text or "\n" in text:
        text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return text


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def render(made) -> bytes:
    """Return metric families in Prometheus' text format (version 0.0.4)."""
    return "".join(family.text() for family in made).encode()


def redis_health(store) -> tuple[bytes, bool]:
    """Return batchy_redis_up and batchy_redis_writable as read now, and whether Redis answered."""
    up = Gauge("batchy_redis_up", "1 if Redis answered this scrape, else 0.")
    writable = Gauge("batchy_redis_writable",
                                 "1 if Redis accepted a write this scrape, 0 if it refuses writes "
                                 "(out of memory, read-only replica) or is down.")
    try:
        refused = store.refuses_writes()
    except redis.exceptions.RedisError as exc:
        # Still answer 200: "Redis is down" is itself what Prometheus should record.
        log.warning("metrics: redis unavailable: %s", exc)
        up.add_metric([], 0)
        writable.add_metric([], 0)
        return render([up, writable]), False
    up.add_metric([], 1)
    writable.add_metric([], 0 if refused else 1)
    return render([up, writable]), True


class Rendered:
    """The fleet's families as text, and gzipped the first time a scrape accepts it (once per read)."""

    def __init__(self, text: bytes):
        self.text = text
        self._gzipped: bytes | None = None
        self._lock = threading.Lock()

    def gzipped(self) -> bytes:
        with self._lock:
            if self._gzipped is None:
                self._gzipped = gzip.compress(self.text, compresslevel=1)
            return self._gzipped


def fleet_text(detail: str):
    """Return a function rendering a fleet read's families at the given detail (job or workflow)."""
    def derive(read: FleetRead) -> Rendered:
        return Rendered(render(families(read.overview, read.now.timestamp(), read.pauses, detail)))
    return derive


def families(overview: dict[str, dict], now: float, pauses: dict | None = None, detail: str = "job") -> list:
    """Return the metric families for an overview (and pauses) read at unix time now.

    detail "job": the job figures per job; "workflow": per workflow (counted, summed, or the oldest).
    """
    pauses = pauses or {}
    paused_workflows = pauses.get("workflows") or {}
    per_job = detail == "job"
    wf_labels = ["workflow"]
    job_labels = ["workflow", "job"]
    counters = {action: Counter(name, doc, labels=wf_labels) for action, name, doc in COUNTERS}
    actions = Counter("batchy_actions", "State changes per workflow and action.",
                                  labels=["workflow", "action"])
    open_age = Gauge("batchy_open_batch_age_seconds",
                                 "Seconds since the oldest open batch of the workflow started; 0 when none is open.",
                                 labels=wf_labels)
    stale_after = Gauge("batchy_stale_after_seconds",
                                    "The workflow's stale_after_hours setting, in seconds (only when set).",
                                    labels=wf_labels)
    workflows = Gauge("batchy_workflows", "Loaded workflows.")
    workflows.add_metric([], len(overview))
    service_paused = Gauge("batchy_service_paused", "1 while the whole service is paused, else 0.")
    service_paused.add_metric([], 1 if pauses.get("service") else 0)
    stuck = Gauge("batchy_batch_stuck",
                              "1 while the workflow's batch is open longer than its max_open_hours, else 0.",
                              labels=wf_labels)
    corrupt = Gauge("batchy_workflow_corrupt",
                                "1 while a value stored for the workflow cannot be read or used (a bad hand edit), else 0.",
                                labels=wf_labels)
    paused = Gauge("batchy_workflow_paused", "1 while the workflow itself is paused, else 0.",
                               labels=wf_labels)
    if per_job:
        success = Gauge("batchy_last_success_timestamp_seconds",
                                    "Unix time the job's latest successful batch ended.", labels=job_labels)
        status = Gauge("batchy_job_status", "1 for the job's current status, 0 for the others.",
                                   labels=["workflow", "job", "status"])
        records = Gauge("batchy_job_records_processed",
                                    "records_processed reported when the job's latest batch closed.", labels=job_labels)
        late = Gauge("batchy_job_late", "1 while the job is late (GET /late), else 0.", labels=job_labels)
        job_success = Gauge("batchy_job_last_success_timestamp_seconds",
                                        "Unix time the job's latest successful batch ended.", labels=job_labels)
        holes = Gauge("batchy_coverage_holes",
                                  "Stretches of time between the job's first and latest successful window that no "
                                  "successful window covered (GET /coverage).", labels=job_labels)
        lag = Gauge("batchy_coverage_lag_seconds",
                    "Seconds from the end of the job's unbroken coverage (from its first window) to now.",
                    labels=job_labels)
        behind = Gauge("batchy_coverage_behind",
                       "1 while the job's coverage lag is over its max_coverage_lag_hours (GET /late, kind "
                       "coverage_lag), else 0.", labels=job_labels)
        per_job_families = [success, status, records, late, job_success, holes, lag, behind]
    else:
        success = Gauge("batchy_workflow_last_success_timestamp_seconds",
                                    "Unix time the oldest of the workflow's last successful batches ended (absent "
                                    "while one of its jobs never succeeded).", labels=wf_labels)
        status = Gauge("batchy_workflow_jobs", "The workflow's jobs in each status.",
                                   labels=["workflow", "status"])
        late = Gauge("batchy_workflow_late_jobs", "The workflow's late jobs (GET /late).", labels=wf_labels)
        holes = Gauge("batchy_workflow_coverage_holes",
                                  "Holes in the coverage of the workflow's jobs, summed (GET /coverage).",
                                  labels=wf_labels)
        lag = Gauge("batchy_workflow_coverage_lag_seconds",
                    "The largest coverage lag of the workflow's jobs, in seconds (batchy_coverage_lag_seconds).",
                    labels=wf_labels)
        behind = Gauge("batchy_workflow_coverage_behind_jobs",
                       "The workflow's jobs whose coverage lag is over their max_coverage_lag_hours "
                       "(batchy_coverage_behind).", labels=wf_labels)
        per_job_families = [success, status, late, holes, lag, behind]
    when = datetime.fromtimestamp(now, timezone.utc)
    for wf in sorted(overview):
        data = overview[wf]
        counts = data.get("counts") or {}
        for action, family in counters.items():
            family.add_metric([wf], counts.get(action, 0))
        for action in sorted(counts):
            actions.add_metric([wf, action], counts[action])
        paused.add_metric([wf], 1 if paused_workflows.get(wf) else 0)
        corrupt.add_metric([wf], 1 if data.get("error") else 0)
        settings = data.get("settings") or {}
        stuck.add_metric([wf], 1 if lateness.workflow_stuck(data["jobs"], settings, when) else 0)
        since = open_since(data["jobs"])
        open_age.add_metric([wf], max(0.0, now - since.timestamp()) if since else 0.0)
        limit = stale_after_seconds(settings)
        if limit:
            stale_after.add_metric([wf], limit)
        if per_job:
            job_series(wf, data["jobs"], settings, when, success, job_success, late, status, holes, records, lag,
                       behind)
        else:
            workflow_series(wf, data["jobs"], settings, when, success, late, status, holes, lag, behind)
    return [*counters.values(), actions, open_age, stale_after, workflows, service_paused, paused, corrupt, stuck,
            *per_job_families]


def _lag(job: dict, now: float) -> float | None:
    through = job.get("coverage_through")
    return max(0.0, now - through) if isinstance(through, (int, float)) else None


def job_series(wf, jobs, settings, when, success, job_success, late, status, holes, records, lag, behind) -> None:
    """Add one workflow's series per job."""
    for job_name, job in jobs.items():
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
        seconds = _lag(job, when.timestamp())
        if seconds is not None:
            lag.add_metric([wf, job_name], seconds)
        behind.add_metric([wf, job_name], 1 if lateness.coverage_lag(job, settings, when) else 0)


def workflow_series(wf, jobs, settings, when, success, late, status, holes, lag, behind) -> None:
    """Add one workflow's job figures, counted or summed per workflow."""
    in_status = {name: 0 for name in STATUSES}
    for job in jobs.values():
        current = str(job.get("status") or "")
        if current:
            in_status[current] = in_status.get(current, 0) + 1
    for name, n in in_status.items():
        status.add_metric([wf, name], n)
    late.add_metric([wf], sum(1 for job in jobs.values() if lateness.job_lateness(job, settings, when)))
    holes.add_metric([wf], sum(job["coverage_holes"] for job in jobs.values()
                               if isinstance(job.get("coverage_holes"), int)))
    lags = [behind for behind in (_lag(job, when.timestamp()) for job in jobs.values()) if behind is not None]
    if lags:
        lag.add_metric([wf], max(lags))
    behind.add_metric([wf], sum(1 for job in jobs.values() if lateness.coverage_lag(job, settings, when)))
    moments = [last_success(job) for job in jobs.values()]
    if moments and all(moments):
        success.add_metric([wf], min(moments).timestamp())


def warm(app) -> None:
    """Start reading the fleet for the dashboard, /metrics and /late as a service process starts."""
    if "batchy" not in app.extensions:  # bench/baseline.py's minimal app
        return
    fleet = services_of(app).fleet
    detail = app.config["BATCHY_METRICS_DETAIL"]
    fleet.register(f"metrics-{detail}", fleet_text(detail))
    fleet.register("late", late_text)
    fleet.warm()


@endpoint(bp, "/metrics", summary="Prometheus metrics", ok=TEXT, reads="metrics")
def metrics():
    params()
    found = services()
    health, answered = redis_health(found.store)
    zipped = "gzip" in request.headers.get("Accept-Encoding", "")
    headers = {"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store", "Vary": "Accept-Encoding"}
    fleet = None
    if answered:
        detail = current_app.config["BATCHY_METRICS_DETAIL"]
        try:
            fleet = found.fleet.get(f"metrics-{detail}", fleet_text(detail))
        except redis.exceptions.RedisError as exc:  # Redis went away between the two reads
            log.warning("metrics: redis unavailable: %s", exc)
            health = redis_health(found.store)[0]
    if not zipped:
        return Response(health + (fleet.text if fleet else b""), headers=headers)
    # Two gzip members make one gzip stream: the fleet's part is compressed once per read.
    body = gzip.compress(health, compresslevel=1) + (fleet.gzipped() if fleet else b"")
    return Response(body, headers={**headers, "Content-Encoding": "gzip"})
