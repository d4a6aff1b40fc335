"""OpenLineage: every run a state change records, sent to BATCHY_OPENLINEAGE_URL at least once.

A commit records the runs it starts or ends in its own audit event (rules/lineage.runs,
storage/commit.py), and a backfill chunk's lease, close, fail and expiry are events of its
backfill's stream carrying the chunk's window (storage/backfill_lua.py): the information
is written in the same atomic step as the change, and nothing on a request's thread ever
talks to the collector.

One process at a time (the lead, storage/outbox.Lead) reads each audit stream past its
cursor (batchy:lineage-cursors), queues the runs found in the lineage outbox and moves
the cursors in one transaction, then sends the outbox (storage/outbox.Outbox: in flight
with a deadline, handed back if the sender dies) through the openlineage client's HTTP
transport, one RunEvent per run. A collector that is down keeps the events queued, first
in first out, until it is back.
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
from typing import TYPE_CHECKING

import redis

from ..rules import lineage as rules
from . import keys
from .outbox import Background, Lead, Outbox
from .webhooks import redact

if TYPE_CHECKING:
    from openlineage.client.event_v2 import RunEvent

# The openlineage client is imported where it is used, not with this module: it takes about
# 0.2 s, which every worker of a deployment without a collector would pay at start.

log = logging.getLogger("batchy")

try:
    PRODUCER = f"urn:batchy:{importlib.metadata.version('batchy')}"
except importlib.metadata.PackageNotFoundError:  # run from a source tree
    PRODUCER = "urn:batchy"
MAX_TRIES = 1000  # rounds a run event is retried while the collector is down, then dropped (logged)
READ_COUNT = 500  # audit entries read per stream per round


def event(body: dict, namespace: str) -> RunEvent:
    """Return the OpenLineage RunEvent of a queued run (a job's window in a batch, or a chunk attempt)."""
    from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
    from openlineage.client.facet_v2 import error_message_run, job_type_job, nominal_time_run, parent_run

    wf, state = body["wf"], body["state"]
    facets: dict = {}
    if body.get("from") and body.get("to"):
        facets["nominalTime"] = nominal_time_run.NominalTimeRunFacet(
            nominalStartTime=body["from"], nominalEndTime=body["to"])
    if state in (rules.FAIL, rules.ABORT) and body.get("message"):
        facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=body["message"], programmingLanguage="unknown")
    if body.get("backfill_id") is not None:
        run_id = rules.chunk_run_id(namespace, wf, body["backfill_id"], body["chunk"], body["attempt"])
        facets["parent"] = parent_run.ParentRunFacet(
            run=parent_run.Run(runId=rules.backfill_run_id(namespace, wf, body["backfill_id"])),
            job=parent_run.Job(namespace=namespace, name=rules.backfill_job_name(wf)))
    else:
        run_id = rules.batch_run_id(namespace, wf, body["batch_id"], body["job"])
    job_facets = {"jobType": job_type_job.JobTypeJobFacet(processingType="BATCH", integration="BATCHY",
                                                          jobType="JOB")}
    return RunEvent(eventType=RunState[state], eventTime=body["time"], producer=PRODUCER,
                    run=Run(runId=run_id, facets=facets),
                    job=Job(namespace=namespace, name=rules.job_name(wf, body["job"]), facets=job_facets))


def bodies(wf: str, fields: dict, chunk_stream: bool) -> list[dict]:
    """Return the runs an audit entry records, each as a body to queue."""
    if chunk_stream:
        run = rules.chunk_run(fields)
        if run is None:
            return []
        found = [run]
        if "aborts" in run:  # the previous attempt's lease ran out: that run ends before this one starts
            found = [{**run, "attempt": run["aborts"], "state": rules.ABORT,
                      "message": "its lease ran out"}, {k: v for k, v in run.items() if k != "aborts"}]
    else:
        try:
            found = json.loads(fields["runs"]) if fields.get("runs") else []
        except ValueError:
            log.warning("lineage: an audit event of %s with unreadable runs is skipped", wf)
            return []
    return [{"wf": wf, "time": fields.get("time"), **run} for run in found]


class Sender(Background):
    """The background thread of one process: lead, collect the runs recorded, send them."""

    def __init__(self, store, url: str, namespace: str, interval: float, timeout: float):
        super().__init__(interval, "batchy-lineage", "lineage")
        self.store = store
        self.url = url
        self.namespace = namespace
        self.lead = Lead(store.redis, store.keys.LINEAGE_LEADER, int(interval * 3000))
        self.outbox = Outbox(store.redis, store.keys.LINEAGE_OUTBOX, store.keys.LINEAGE_INFLIGHT,
                             store.keys.LINEAGE_SENDING,
                             visibility=2 * timeout + 5, max_tries=MAX_TRIES, name="lineage")
        # No retries inside a post: a collector that is down is tried again on the next round,
        # and the sender never sleeps on its backoff while holding an event.
        from openlineage.client.transport.http import HttpConfig, HttpTransport

        self.transport = HttpTransport(HttpConfig(url=url, endpoint="api/v1/lineage", timeout=timeout,
                                                  retry={"total": 0, "read": 0, "connect": 0}))

    def start(self) -> "Sender":
        try:  # the stream ids from which runs are sent: those recorded from now on
            self.since()
        except (redis.RedisError, OSError) as exc:
            log.warning("lineage: %s (the first round starts the record)", exc)
        return super().start()

    def since(self) -> str:
        """Return the stream id from which a stream without a cursor is read (set once, service-wide)."""
        client = self.store.redis
        seconds, micros = client.time()
        client.hsetnx(self.store.keys.LINEAGE_CURSORS, keys.LINEAGE_SINCE, f"{seconds * 1000 + micros // 1000}-0")
        return client.hget(self.store.keys.LINEAGE_CURSORS, keys.LINEAGE_SINCE)

    def round(self) -> int:
        """Collect and send once if this process leads; return the events sent."""
        if not self.lead.take():
            return 0
        self.collect()
        return self.outbox.deliver(self._send, lambda sent: not self.stopped.is_set() and (not sent or self.lead.take()))

    def collect(self) -> int:
        """Queue the runs recorded past each audit stream's cursor and move the cursors, in one
        transaction; return how many runs were queued.

        The streams read: those of every loaded workflow and its backfills, and every stream a
        cursor names (a workflow removed with its history kept: the runs of its last changes).
        """
        client = self.store.redis
        since = self.since()
        names = sorted(self.store.workflows())
        pipe = client.pipeline(transaction=False)
        for wf in names:
            pipe.zrange(self.store.keys.backfills(wf), 0, -1)
        pipe.hgetall(self.store.keys.LINEAGE_CURSORS)
        *backfills, cursors = pipe.execute()
        streams: dict[str, tuple[str, bool]] = {}
        for wf, ids in zip(names, backfills):
            streams[self.store.keys.events(wf)] = (wf, False)
            streams.update({self.store.keys.backfill_events(wf, backfill_id): (wf, True) for backfill_id in ids})
        for name in cursors:
            owner = self.store.keys.stream_owner(name)
            if owner and name not in streams:
                streams[name] = (owner[0], owner[1] is not None)
        pipe = client.pipeline(transaction=False)
        for stream in streams:
            cursor = cursors.get(stream)
            pipe.xrange(stream, min=f"({cursor}" if cursor else since, count=READ_COUNT)
            pipe.exists(stream)
        replies = pipe.execute()
        queued: list[dict] = []
        moved: dict[str, str] = {}
        gone = [name for name in cursors if name != keys.LINEAGE_SINCE and self.store.keys.stream_owner(name) is None]
        for (stream, (wf, chunk_stream)), entries, exists in zip(streams.items(), replies[::2], replies[1::2]):
            for entry_id, fields in entries:
                queued += bodies(wf, fields, chunk_stream)
                moved[stream] = entry_id
            if not exists and stream in cursors:
                gone.append(stream)  # purged with its workflow or backfill
        if not moved and not gone:
            return 0
        pipe = client.pipeline(transaction=True)
        self.outbox.push(queued, pipe)
        if moved:
            pipe.hset(self.store.keys.LINEAGE_CURSORS, mapping=moved)
        if gone:
            pipe.hdel(self.store.keys.LINEAGE_CURSORS, *gone)
        pipe.execute()
        return len(queued)

    def _send(self, body: dict) -> bool:
        try:
            made = event(body, self.namespace)
        except (KeyError, ValueError, TypeError) as exc:
            log.warning("lineage: dropping a run that cannot be made an event (%s): %.200r", exc, body)
            return True
        try:
            self.transport.emit(made)
            return True
        except Exception as exc:  # noqa: BLE001 - requests', urllib3's and HTTP errors alike: retried later
            shown = redact(self.url)
            log.warning("lineage: %s did not take an event (%s); retrying later", shown,
                        str(exc).replace(self.url, shown))
            return False


def start(app, store) -> Sender | None:
    """Start this process' lineage sender when BATCHY_OPENLINEAGE_URL is set."""
    url = app.config.get("BATCHY_OPENLINEAGE_URL")
    if not url:
        return None
    return Sender(store, url, app.config["BATCHY_OPENLINEAGE_NAMESPACE"],
                  float(app.config["BATCHY_OPENLINEAGE_INTERVAL"]),
                  float(app.config["BATCHY_OPENLINEAGE_TIMEOUT"])).start()
