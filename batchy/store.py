"""BatchStore: all of Batchy's Redis I/O. No Flask here.

Every state change is optimistic: one MULTI/EXEC round trip reads the clock (Redis
TIME), the workflow hash and its version; pure functions in `watermark` compute the
change; one EVALSHA of `scripts.COMMIT` applies it if the version has not moved, else
the whole step is retried. Two round trips per change, however many jobs.
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import keys, scripts, watermark, workflows
from .errors import BatchNotFound, Busy, Unavailable, WorkflowNotFound

log = logging.getLogger("batchy")

MAX_ATTEMPTS = 50
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def connect(url: str, timeout: float = 2.0) -> redis.Redis:
    """Return a Redis client for url; an empty url gives an embedded in-memory store."""
    options = dict(
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # One quick retry on a fresh connection covers pooled sockets that died with a
        # Redis restart; more would hold a request well past the 503 it should get.
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )
    if not url:
        import fakeredis

        return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    if url.startswith("redis+sentinel://"):
        return _sentinel(url, options)
    return redis.Redis.from_url(url, **options)


def _sentinel(url: str, options: dict) -> redis.Redis:
    """Connect through Sentinel: redis+sentinel://[:password@]h1:p1,h2:p2/<primary>/<db>."""
    from redis.sentinel import Sentinel

    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    password = unquote(netloc[0].split(":", 1)[-1]) if len(netloc) == 2 else None
    hosts = []
    for host in netloc[-1].split(","):
        name, _, port = host.rpartition(":")
        hosts.append((name or port, int(port) if name else 26379))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise SystemExit("batchy: a sentinel URL needs the primary's name: redis+sentinel://host:26379/<name>/<db>")
    service = path[0]
    db = int(path[1]) if len(path) > 1 else 0
    sentinel = Sentinel(
        hosts,
        socket_timeout=options["socket_timeout"],
        socket_connect_timeout=options["socket_connect_timeout"],
    )
    return sentinel.master_for(service, db=db, password=password, **options)


@dataclass
class State:
    """One consistent read of a workflow."""

    wf: str
    now: datetime
    jobs: dict[str, dict]
    meta: dict[str, str]
    version: str = "0"
    floor: int = 0  # lowest batch id still free, raised when a snapshot key was taken

    @property
    def last_batch_id(self) -> int | None:
        value = self.meta.get("last_batch_id")
        return int(value) if value else None


@dataclass
class Change:
    """What one commit writes; see scripts.COMMIT for how each part is applied."""

    action: str
    jobs: dict[str, dict] = field(default_factory=dict)
    replace: bool = False
    drop: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    batches: list[tuple[str, str, float, dict[str, dict]]] = field(default_factory=list)
    batch_id: int | None = None
    event: dict[str, str] = field(default_factory=dict)
    state: dict[str, dict] = field(default_factory=dict)  # every job after the change


class BatchStore:
    def __init__(self, client: redis.Redis, settings: dict):
        self.redis = client
        self.settings = settings
        self._commit = client.register_script(scripts.COMMIT)
        self._keep = settings["BATCHY_HISTORY_KEEP"]
        self._events_keep = settings["BATCHY_EVENTS_KEEP"]
        self._wait_replicas = settings["BATCHY_REDIS_WAIT_REPLICAS"]
        self._wait_timeout = settings["BATCHY_REDIS_WAIT_TIMEOUT_MS"]

    # -- reads ---------------------------------------------------------------

    def ping(self) -> bool:
        return bool(self.redis.ping())

    def raw_status(self, wf: str) -> dict[str, str]:
        """Return the workflow hash as stored: {job: JSON text}. One round trip."""
        raw = self.redis.hgetall(keys.workflow(wf))
        if not raw:
            raise _not_found(wf)
        return raw

    def status(self, wf: str) -> dict[str, dict]:
        return {job: json.loads(value) for job, value in self.raw_status(wf).items()}

    def raw_batch(self, wf: str, batch_id: int) -> dict[str, str]:
        raw = self.redis.hgetall(keys.batch(wf, batch_id))
        if not raw:
            raise BatchNotFound(f"workflow {wf!r} has no batch {batch_id} (never opened, or past retention)",
                                workflow=wf, batch_id=batch_id)
        return raw

    def workflows(self) -> list[str]:
        """Return the names of every loaded workflow."""
        return sorted(self.redis.smembers(keys.WORKFLOWS))

    def overview(self, names: list[str]) -> dict[str, dict]:
        """Return {wf: {"jobs": {...}, "settings": {...}, "counts": {action: n}, "last_batch_id"}}.

        One pipelined round trip for all workflows (dashboard, metrics).
        """
        pipe = self.redis.pipeline(transaction=False)
        for wf in names:
            pipe.hgetall(keys.workflow(wf))
            pipe.hgetall(keys.meta(wf))
        replies = pipe.execute()
        result = {}
        for wf, raw, meta in zip(names, replies[::2], replies[1::2]):
            if not raw:
                continue
            result[wf] = {
                "jobs": {job: json.loads(value) for job, value in raw.items()},
                "settings": json.loads(meta.get("settings") or "{}"),
                "counts": {k[6:]: int(v) for k, v in meta.items() if k.startswith("count:")},
                "last_batch_id": int(meta["last_batch_id"]) if meta.get("last_batch_id") else None,
            }
        return result

    def now(self) -> datetime:
        """Return the Redis server's clock, the one every batch time comes from."""
        seconds, _micro = self.redis.time()
        return datetime.fromtimestamp(int(seconds), timezone.utc)

    def read(self, wf: str) -> State:
        """Read the clock, the workflow and its bookkeeping in one atomic round trip."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.time()
        pipe.hgetall(keys.workflow(wf))
        pipe.hgetall(keys.meta(wf))
        (seconds, _micro), raw, meta = pipe.execute()
        now = datetime.fromtimestamp(int(seconds), timezone.utc)
        jobs = {job: json.loads(value) for job, value in raw.items()}
        return State(wf, now, jobs, meta, meta.get("version", "0"))

    # -- state changes -----------------------------------------------------------

    def load(self, wf: str, config: workflows.Config, *, reset: bool = False, actor: str = "") -> dict[str, dict]:
        """Store config as wf's jobs; unless reset, jobs that have run keep their runtime state."""

        def plan(state: State) -> Change:
            jobs = dict(config.jobs) if reset else workflows.merge(state.jobs, config.jobs)
            return Change(
                action="reset" if reset else "load",
                jobs=jobs,
                replace=True,
                meta={"settings": _dumps(config.settings)},
            )

        return self.mutate(wf, plan, actor=actor, must_exist=False).state

    def open(self, wf: str, *, actor: str = "", dry_run: bool = False) -> Change:
        """Open a new batch of every job in wf; return the change (jobs and batch_id)."""

        def plan(state: State) -> Change:
            batch_id = max(int(state.now.timestamp()), (state.last_batch_id or 0) + 1, state.floor)
            opened = watermark.open_jobs(state.jobs, state.now, batch_id)
            batches = [(keys.batch(wf, batch_id), "new", state.now.timestamp(), opened)]
            for old_id, snapshot in watermark.abandoned_jobs(state.jobs, batch_id).items():
                batches.append((keys.batch(wf, old_id), "update", 0, snapshot))
            return Change(
                action="open",
                jobs=opened,
                meta={"last_batch_id": str(batch_id)},
                batches=batches,
                batch_id=batch_id,
            )

        return self.mutate(wf, plan, actor=actor, dry_run=dry_run)

    def close(
        self,
        wf: str,
        outcome: str,
        *,
        job: str | None = None,
        batch_id: int | None = None,
        records_processed: int | None = None,
        message: str | None = None,
        actor: str = "",
    ) -> Change:
        """Mark wf's open jobs (or one job) success or failed, here and in their batch snapshot."""

        def plan(state: State) -> Change:
            closed = watermark.close_jobs(
                wf,
                state.jobs,
                outcome,
                state.now,
                job=job,
                batch_id=batch_id,
                current_batch_id=state.last_batch_id,
                records_processed=records_processed,
                message=message,
            )
            by_batch: dict[int, dict[str, dict]] = {}
            for name, new in closed.items():
                by_batch.setdefault(new["batch_id"], {})[name] = new
            return Change(
                action="close" if outcome == watermark.SUCCESS else "fail",
                jobs=closed,
                batches=[(keys.batch(wf, bid), "update", 0, snap) for bid, snap in by_batch.items()],
                batch_id=state.last_batch_id,
            )

        return self.mutate(wf, plan, actor=actor)

    def mutate(self, wf, plan, *, actor: str = "", must_exist: bool = True, dry_run: bool = False) -> Change:
        """Read wf, plan a change from the state, commit it if nobody else did first; retry."""
        floor = 0
        for attempt in range(MAX_ATTEMPTS):
            state = self.read(wf)
            state.floor = floor
            if must_exist and not state.jobs:
                raise _not_found(wf)
            change = plan(state)
            change.state = change.jobs if change.replace else {**state.jobs, **change.jobs}
            if dry_run:
                return change
            status, value = self._apply(wf, state, change, actor)
            if status == 1:
                if self._wait_replicas:
                    self._wait_for_replicas(wf)
                return change
            if status == -1:  # a snapshot key with that batch id exists: skip past it
                floor = int(str(value).rsplit("-", 1)[-1]) + 1
                continue
            # Someone changed the workflow between our read and our write: back off a
            # little (more under heavier contention) and plan again from fresh state.
            time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))
        raise Busy(f"workflow {wf!r} is changing too fast to update; retry", workflow=wf)

    def _apply(self, wf: str, state: State, change: Change, actor: str):
        args: list = [state.version, "1" if change.replace else "0", len(change.jobs)]
        for name, job in change.jobs.items():
            args += [name, _dumps(job)]
        args.append(len(change.drop))
        args += change.drop
        args.append(len(change.meta))
        for item in change.meta.items():
            args += item
        args.append(len(change.batches))
        for key, mode, score, snapshot in change.batches:
            args += [key, mode, score, len(snapshot)]
            for name, job in snapshot.items():
                args += [name, _dumps(job)]
        event = self._event(state, change, actor)
        args += [self._keep, keys.batch_prefix(wf), self._events_keep, len(event)]
        for item in event.items():
            args += item
        args += [keys.channel(wf), change.action]
        result = self._commit(
            keys=[
                keys.workflow(wf),
                keys.meta(wf),
                keys.history(wf),
                keys.BATCHES,
                keys.events(wf),
                keys.WORKFLOWS,
            ],
            args=args,
        )
        return int(result[0]), result[1]

    def _event(self, state: State, change: Change, actor: str) -> dict[str, str]:
        before = {name: job.get("from_date") for name, job in state.jobs.items() if name in change.jobs or change.replace}
        after = {name: job.get("from_date") for name, job in change.jobs.items()}
        event = {
            "time": watermark.format_time(state.now),
            "action": change.action,
            "batch_id": "" if change.batch_id is None else str(change.batch_id),
            "actor": actor or "",
            "jobs": _dumps(sorted(change.jobs)),
            "from_before": _dumps(before),
            "from_after": _dumps(after),
        }
        event.update(change.event)
        return event

    def _wait_for_replicas(self, wf: str) -> None:
        acked = self.redis.execute_command("WAIT", self._wait_replicas, self._wait_timeout)
        if int(acked) < self._wait_replicas:
            raise Unavailable(
                f"the change to {wf!r} is applied on the Redis primary but only {acked} of "
                f"{self._wait_replicas} replicas confirmed it in {self._wait_timeout} ms",
                workflow=wf,
            )


def _not_found(wf: str) -> WorkflowNotFound:
    return WorkflowNotFound(
        f"workflow {wf!r} is not loaded: create cfg/{wf}.yaml and call /load_cfg/{wf}",
        workflow=wf,
    )
