"""BatchStore: all of Batchy's Redis I/O. No Flask here.

Every state change is optimistic: pure functions in `watermark` plan the change from a
state of the workflow, and one EVALSHA of `scripts.COMMIT` applies it only if the
workflow's `version` is still the one planned on and Redis' clock (TIME) still shows the
second every time in the change was computed for. The state comes from a per-process
cache of the workflow as this process last wrote it, so a change is one round trip; when
another process wrote in between (or the cache is cold), the refused commit answers with
the current state and the clock, and the change is planned again from them. Either way a
change is at most two round trips, however many jobs.
"""
from __future__ import annotations

import collections
import functools
import json
import logging
import os
import random
import threading
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import formats, keys, scripts, watermark, workflows
from .errors import (
    BatchNotFound,
    BatchyError,
    Busy,
    InvalidParameter,
    JobNotFound,
    Paused,
    Unavailable,
    WorkflowExists,
    WorkflowNotFound,
)

log = logging.getLogger("batchy")

try:  # redis-py's own C packer; without it every commit goes through redis-py's command layer
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - hiredis is a dependency
    _pack = None


class FairLock:
    """A lock handed to its waiters in the order they came.

    threading.Lock lets a thread arriving just as it is released take it before the
    thread woken for it, so with 16 writers queued on one workflow some waited 2 s
    while others barged through (bench/run.py, all on one workflow). Here a release
    hands the lock straight to the oldest waiter.
    """

    __slots__ = ("_mutex", "_waiters", "_held")

    def __init__(self):
        self._mutex = threading.Lock()  # guards _held and _waiters only, never held long
        self._waiters: collections.deque = collections.deque()
        self._held = False

    def __enter__(self):
        with self._mutex:
            if not self._held:
                self._held = True
                return self
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        try:
            turn.acquire()  # released by the holder that hands over
        except BaseException:
            # Interrupted while waiting (a signal handler raising in the main thread):
            # leave the queue, or, if the lock was handed over meanwhile, pass it on,
            # so that it is never left held by nobody.
            with self._mutex:
                if turn in self._waiters:
                    self._waiters.remove(turn)
                else:
                    self._hand_over()
            raise
        return self

    def __exit__(self, *exc):
        with self._mutex:
            self._hand_over()

    def _hand_over(self) -> None:
        """Give the held lock to the oldest waiter, or free it (called under _mutex)."""
        if self._waiters:
            self._waiters.popleft().release()  # still held: now by that waiter
        else:
            self._held = False


MAX_ATTEMPTS = 50
# Writers to one workflow in this process queue on a lock instead of invalidating each
# other's optimistic reads: measured with 32 writers on one workflow, retries piled up
# into 409 busy and a 4 s p99. The version check in COMMIT still guards across processes.
_WRITE_LOCKS = tuple(FairLock() for _ in range(64))
_dumps = formats.dumps


def connect(url: str, timeout: float = 2.0) -> redis.Redis:
    """Return a Redis client for url; an empty url gives an embedded in-memory store."""
    options = dict(
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # One quick retry on a fresh connection covers pooled sockets that died with a
        # Redis restart; more would hold a request well past the 503 it should get.
        # Only connection errors: a timed-out command may have run, and a silent Redis
        # would otherwise hold the request for several timeouts.
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
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
    raw: dict[str, str] = field(default_factory=dict)  # the jobs as stored (JSON text)
    version: str = "0"
    floor: int = 0  # lowest batch id still free, raised when a snapshot key was taken
    second: str = ""  # the Redis TIME seconds `now` was made from, as the commit checks it

    @property
    def last_batch_id(self) -> int | None:
        value = self.meta.get("last_batch_id")
        return int(value) if value else None

    @property
    def settings(self) -> dict:
        return _settings(self.meta.get("settings") or "{}")


@dataclass
class Change:
    """What one commit writes; see scripts.COMMIT for how each part is applied."""

    action: str
    jobs: dict[str, dict] = field(default_factory=dict)
    replace: bool = False
    meta: dict[str, str] = field(default_factory=dict)
    batches: list[tuple[str, str, float, dict[str, dict]]] = field(default_factory=list)
    batch_id: int | None = None
    check_pause: bool = False
    state: dict[str, dict] = field(default_factory=dict)  # every job after the change
    # Every job after the change as the JSON text stored for it, once committed: the
    # answer is built from it without encoding the jobs again.
    stored: dict[str, str] | None = None


class BatchStore:
    def __init__(self, client: redis.Redis, settings: dict):
        self.redis = client
        self._commit = client.register_script(scripts.COMMIT)
        self._read = client.register_script(scripts.READ)
        self._keep = settings["BATCHY_HISTORY_KEEP"]
        self._events_keep = settings["BATCHY_EVENTS_KEEP"]
        self._wait_replicas = settings["BATCHY_REDIS_WAIT_REPLICAS"]
        self._wait_timeout = settings["BATCHY_REDIS_WAIT_TIMEOUT_MS"]
        # {wf: (jobs as JSON text, meta, jobs decoded or None)} as this process last committed them
        self._cache: dict[str, tuple[dict[str, str], dict[str, str], dict[str, dict] | None]] = {}
        self._cache_size = settings.get("BATCHY_STATE_CACHE", 1024)
        self._cache_lock = threading.Lock()
        self._clock_offset = 0.0  # Redis TIME minus this host's clock, from the last reply
        # BatchStore._send's direct path needs hiredis and a plain redis-py client and pool.
        self._direct = (_pack is not None and type(client) is redis.Redis
                        and isinstance(client.connection_pool, redis.ConnectionPool))
        self._local = threading.local()  # each thread's own connection for _send

    # -- reads ---------------------------------------------------------------

    def ping(self) -> bool:
        return bool(self.redis.ping())

    def raw_status(self, wf: str) -> dict[str, str]:
        """Return the workflow hash as stored: {job: JSON text}. One round trip."""
        if self._direct:  # the hot path of every status poll and waiting gate
            raw = self._execute(("HGETALL", keys.workflow(wf)))
            if isinstance(raw, list):  # RESP2 answers a flat list, RESP3 a map
                raw = dict(zip(raw[::2], raw[1::2]))
        else:
            raw = self.redis.hgetall(keys.workflow(wf))
        if not raw:
            raise _not_found(wf)
        return dict(sorted(raw.items()))

    def status(self, wf: str) -> dict[str, dict]:
        return decode(self.raw_status(wf))

    def raw_batch(self, wf: str, batch_id: int) -> dict[str, str]:
        raw = self.redis.hgetall(keys.batch(wf, batch_id))
        if not raw:
            raise BatchNotFound(f"workflow {wf!r} has no batch {batch_id} (never opened, or past retention)",
                                workflow=wf, batch_id=batch_id)
        return dict(sorted(raw.items()))

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
            jobs = decode(raw)
            for job, mark in _success_marks(meta).items():
                if job in jobs:
                    jobs[job].update(last_success_start=mark.get("start"), last_success_end=mark.get("end"))
            result[wf] = {
                "jobs": jobs,
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
        clock, flat_raw, flat_meta = self._send(self._read, (keys.workflow(wf), keys.meta(wf)), ())
        return self._state(wf, clock, flat_raw, flat_meta)

    def _state(self, wf: str, clock, flat_raw, flat_meta) -> State:
        """Return the State of a reply holding TIME and the two flat HGETALLs."""
        seconds = self._learn_clock(clock)
        # In name order, as every answer lists jobs (and as a remembered state already is):
        # HGETALL follows insertion order, or none past 128 fields.
        raw = dict(sorted(zip(flat_raw[::2], flat_raw[1::2])))
        meta = dict(zip(flat_meta[::2], flat_meta[1::2]))
        return self._planned(wf, raw, meta, seconds)

    def _learn_clock(self, clock) -> int:
        """Note how far Redis' TIME (a reply's [seconds, microseconds]) is from this host's clock."""
        seconds = int(clock[0])
        self._clock_offset = seconds + int(clock[1]) / 1e6 - time.time()
        return seconds

    def _planned(self, wf: str, raw: dict[str, str], meta: dict[str, str], seconds: int,
                 jobs: dict[str, dict] | None = None) -> State:
        now = _utc_second(seconds)
        jobs = decode(raw) if jobs is None else jobs
        return State(wf, now, jobs, meta, raw, meta.get("version", "0"), second=str(seconds))

    def _cached(self, wf: str) -> State | None:
        """Return wf as this process last wrote it, at the second Redis' clock should show now.

        Nothing here is trusted: the commit is refused unless the version and the second
        are still those (see scripts.COMMIT), and the refusal carries the real state.
        The jobs are shared with the cache: plans (watermark) never change a job in place.
        """
        entry = self._cache.get(wf)
        if entry is None:
            return None
        raw, meta, jobs = entry
        return self._planned(wf, raw, meta, int(time.time() + self._clock_offset), jobs)

    def _remember(self, wf: str, version: str, state: State, change: Change) -> None:
        if not self._cache_size:
            return
        # A load or import carries jobs as read from a file: keep only their JSON text.
        jobs = None if change.replace else change.state
        entry = (change.stored, {**state.meta, **change.meta, "version": version}, jobs)
        with self._cache_lock:
            self._cache.pop(wf, None)
            self._cache[wf] = entry
            while len(self._cache) > self._cache_size:
                del self._cache[next(iter(self._cache))]

    def _forget(self, wf: str) -> None:
        with self._cache_lock:
            self._cache.pop(wf, None)

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

        if dry_run:
            self._check_pause(wf)

        def plan(state: State) -> Change:
            watermark.check_exclusive(wf, state.jobs, state.now, state.settings, state.last_batch_id)
            batch_id = max(int(state.now.timestamp()), (state.last_batch_id or 0) + 1, state.floor)
            opened = watermark.open_jobs(state.jobs, state.now, batch_id)
            snapshots = {name: watermark.snapshot(job) for name, job in opened.items()}
            batches = [(keys.batch(wf, batch_id), "new", state.now.timestamp(), snapshots)]
            for old_id, snapshot in watermark.abandoned_jobs(state.jobs, batch_id).items():
                batches.append((keys.batch(wf, old_id), "update", 0, snapshot))
            return Change(
                action="open",
                jobs=opened,
                meta={"last_batch_id": str(batch_id)},
                batches=batches,
                batch_id=batch_id,
                check_pause=True,
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
                by_batch.setdefault(new["batch_id"], {})[name] = watermark.snapshot(new)
            marks = watermark.success_marks(closed)
            return Change(
                action="close" if outcome == watermark.SUCCESS else "fail",
                jobs=closed,
                meta={f"success:{name}": _dumps(mark) for name, mark in marks.items()},
                batches=[(keys.batch(wf, bid), "update", 0, snap) for bid, snap in by_batch.items()],
                batch_id=state.last_batch_id,
            )

        return self.mutate(wf, plan, actor=actor)

    def set_from_date(
        self, wf: str, moment: datetime, *, job: str | None = None, force: bool = False, actor: str = ""
    ) -> Change:
        """Make the next batch of wf (or one job) extract from moment exactly."""

        def plan(state: State) -> Change:
            targets = {name: moment for name in _targets(wf, state.jobs, job)}
            changed = watermark.set_next_from_date(wf, state.jobs, targets, force=force)
            return Change(action="set", jobs=changed, batch_id=state.last_batch_id)

        return self.mutate(wf, plan, actor=actor)

    def rewind(
        self, wf: str, batch_id: int, *, job: str | None = None, force: bool = False, actor: str = ""
    ) -> Change:
        """Make the next batch of wf (or one job) extract from where batch batch_id did."""
        snapshot = decode(self.raw_batch(wf, batch_id))

        def plan(state: State) -> Change:
            targets = {}
            for name in _targets(wf, state.jobs, job):
                if name in snapshot and snapshot[name].get("from_date"):
                    targets[name] = watermark.parse_time(snapshot[name]["from_date"])
                elif job is not None:
                    raise JobNotFound(f"batch {batch_id} of {wf!r} has no job {name!r}", workflow=wf, job=name)
            changed = watermark.set_next_from_date(wf, state.jobs, targets, force=force)
            return Change(action="rewind", jobs=changed, batch_id=batch_id)

        return self.mutate(wf, plan, actor=actor)

    # -- history, audit, most recent --------------------------------------------

    def history(self, wf: str, *, limit: int = 50, before: int | None = None) -> list[dict]:
        """Return wf's batches newest first, each summarized, from the history index."""
        top = f"({before}" if before is not None else "+inf"
        ids = self.redis.zrevrangebyscore(keys.history(wf), top, "-inf", start=0, num=limit)
        if not ids and not self.redis.exists(keys.workflow(wf)):
            raise _not_found(wf)
        pipe = self.redis.pipeline(transaction=False)
        for batch_id in ids:
            pipe.hgetall(keys.batch(wf, batch_id))
        entries = []
        for batch_id, raw in zip(ids, pipe.execute()):
            if raw:  # retention may remove a snapshot between the two reads
                jobs = decode(raw)
                entries.append(watermark.summarize_batch(int(batch_id), jobs))
        return entries

    def batches(
        self,
        *,
        start: float | None = None,
        end: float | None = None,
        status: str | None = None,
        workflow: str | None = None,
        limit: int = 50,
        offset: int = 0,
        scan_limit: int = 5000,
    ) -> tuple[list[dict], int | None]:
        """Return batches of every workflow that started in [start, end], oldest first.

        Reads the batchy:batches index by score, never the keyspace. Filtering happens
        as it reads, at most scan_limit index entries per call; the second value is the
        offset to continue from, or None when the range is exhausted.
        """
        low = "-inf" if start is None else start
        high = "+inf" if end is None else end
        found: list[dict] = []
        scanned = 0
        chunk = 200
        while len(found) < limit and scanned < scan_limit:
            members = self.redis.zrangebyscore(keys.BATCHES, low, high, start=offset + scanned, num=chunk)
            if not members:
                return found, None
            pipe = self.redis.pipeline(transaction=False)
            for member in members:
                pipe.hgetall(member)
            for member, raw in zip(members, pipe.execute()):
                scanned += 1
                wf, _, batch_id = member.rpartition("-")
                if not raw or (workflow and wf != workflow):
                    continue
                entry = watermark.summarize_batch(int(batch_id), decode(raw))
                if status and entry["status"] != status:
                    continue
                found.append({"workflow": wf, **entry})
                if len(found) == limit:
                    break
            if len(members) < chunk and len(found) < limit:
                return found, None
        return found, offset + scanned

    def events(self, wf: str, *, limit: int = 100, before: str | None = None) -> list[dict]:
        """Return wf's audit events newest first."""
        top = f"({before}" if before else "+"
        try:
            entries = self.redis.xrevrange(keys.events(wf), top, "-", count=limit)
        except redis.ResponseError as exc:
            raise InvalidParameter(f"before must be an event id such as 1700000000000-0 ({exc})",
                                   parameter="before") from None
        if not entries and not self.redis.exists(keys.workflow(wf)):
            raise _not_found(wf)
        result = []
        for event_id, fields in entries:
            event = {"id": event_id, **fields}
            for name in ("jobs", "from_before", "from_after"):
                if name in event:
                    event[name] = json.loads(event[name])
            result.append(event)
        return result

    def most_recent(self, wf: str, job: str | None = None) -> dict:
        """Return the batch_start of wf's (or job's) last successful batch.

        For a whole workflow that is the oldest of its jobs' last successes: the point
        up to which every job has loaded. None if some job never succeeded.
        """
        pipe = self.redis.pipeline(transaction=True)
        pipe.hkeys(keys.workflow(wf))
        pipe.hgetall(keys.meta(wf))
        job_names, meta = pipe.execute()
        if not job_names:
            raise _not_found(wf)
        if job is not None and job not in job_names:
            raise JobNotFound(f"workflow {wf!r} has no job {job!r}", workflow=wf, job=job)
        marks = _success_marks(meta)
        names = [job] if job is not None else job_names
        chosen = [marks.get(name) for name in names]
        mark = None
        if all(chosen):
            mark = min(chosen, key=lambda m: watermark.parse_time(m["start"]))
        start = mark["start"] if mark else None
        return {
            "workflow": wf,
            "job": job,
            "most_recent": start,
            "timestamp": int(watermark.parse_time(start).timestamp()) if start else None,
            "batch_id": mark["batch_id"] if mark else None,
            "jobs": {name: marks.get(name) for name in names},
        }

    # -- pause -------------------------------------------------------------------

    def pause(self, wf: str | None, message: str, actor: str = "") -> dict:
        """Refuse new batches of wf (None: of every workflow) until resumed."""
        if wf is not None and not self.redis.exists(keys.workflow(wf)):
            raise _not_found(wf)
        now = watermark.format_time(self.now())
        record = {"message": message, "since": now, "actor": actor, "scope": wf or "*"}
        self._pause_write(wf, "pause", record, lambda pipe, key: pipe.hset(key, mapping=record))
        return {**record, "paused": True}

    def resume(self, wf: str | None, actor: str = "") -> dict:
        """Allow new batches again."""
        now = watermark.format_time(self.now())
        record = {"message": "", "since": now, "actor": actor, "scope": wf or "*"}
        self._pause_write(wf, "resume", record, lambda pipe, key: pipe.delete(key))
        return {**record, "paused": False}

    def _pause_write(self, wf, action, record, write) -> None:
        key = keys.pause(wf) if wf else keys.PAUSE
        pipe = self.redis.pipeline(transaction=True)
        write(pipe, key)
        entry = {"time": record["since"], "action": action, "scope": record["scope"],
                 "message": record["message"], "actor": record["actor"]}
        pipe.xadd(keys.pause_history(), entry, maxlen=self._events_keep, approximate=True)
        if wf:
            pipe.xadd(keys.events(wf), {**entry, "batch_id": ""}, maxlen=self._events_keep, approximate=True)
            pipe.publish(keys.channel(wf), action)
        pipe.execute()

    def pauses(self, names: list[str] | None = None) -> dict:
        """Return the service-wide pause and every paused workflow (of names, default all)."""
        service = self.redis.hgetall(keys.PAUSE)
        names = self.workflows() if names is None else names
        pipe = self.redis.pipeline(transaction=False)
        for wf in names:
            pipe.hgetall(keys.pause(wf))
        paused = {wf: p for wf, p in zip(names, pipe.execute()) if p}
        return {"service": service or None, "workflows": paused}

    def pause_history(self, limit: int = 100) -> list[dict]:
        return [{"id": i, **f} for i, f in self.redis.xrevrange(keys.pause_history(), count=limit)]

    def _check_pause(self, wf: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.PAUSE)
        pipe.hgetall(keys.pause(wf))
        service, own = pipe.execute()
        pause = own or service
        if pause:
            scope = f"workflow {wf!r}" if own else "the service"
            raise Paused(
                f"{scope} is paused since {pause.get('since')}: {pause.get('message') or 'no reason given'}",
                workflow=wf,
                pause=pause,
            )

    # -- export / import -----------------------------------------------------------

    def export(self, names: list[str] | None = None, *, history: bool = True) -> dict:
        """Return the state of the named (default: all) workflows as a JSON-ready document."""
        names = names or self.workflows()
        doc = {"format": "batchy-export/1", "exported_at": watermark.format_time(self.now()), "workflows": {}}
        for wf in names:
            pipe = self.redis.pipeline(transaction=True)
            pipe.hgetall(keys.workflow(wf))
            pipe.hgetall(keys.meta(wf))
            pipe.zrange(keys.history(wf), 0, -1, withscores=True)
            raw, meta, ids = pipe.execute()
            if not raw:
                raise _not_found(wf)
            entry = {
                "jobs": decode(raw),
                "meta": {k: v for k, v in meta.items() if k != "version"},
                "batches": {},
            }
            if history:
                pipe = self.redis.pipeline(transaction=False)
                for batch_id, _score in ids:
                    pipe.hgetall(keys.batch(wf, batch_id))
                for (batch_id, _score), snap in zip(ids, pipe.execute()):
                    if snap:
                        entry["batches"][batch_id] = decode(snap)
            doc["workflows"][wf] = entry
        return doc

    def import_(self, doc: dict, *, replace: bool = False, actor: str = "import") -> list[str]:
        """Restore workflows from an export document; existing ones only with replace."""
        from . import names as names_mod

        if not isinstance(doc, dict) or not isinstance(doc.get("workflows"), dict):
            raise InvalidParameter("not a Batchy export: expected {\"workflows\": {...}}")
        imported = []
        for wf, entry in doc["workflows"].items():
            names_mod.check_workflow(wf)
            jobs = entry.get("jobs") or {}
            if not isinstance(jobs, dict) or not jobs:
                raise InvalidParameter(f"workflow {wf!r} in the export has no jobs", workflow=wf)
            for job in jobs:
                names_mod.check_job(job, wf)
            batches = entry.get("batches") or {}
            meta = {k: str(v) for k, v in (entry.get("meta") or {}).items()}
            known = [int(b) for b in batches] + [int(meta.get("last_batch_id") or 0)]

            def plan(state: State, jobs=jobs, batches=batches, meta=meta, known=known, wf=wf) -> Change:
                if state.jobs and not replace:
                    raise WorkflowExists(f"workflow {wf!r} already exists here; import with replace to overwrite",
                                    workflow=wf)
                # batch ids stay strictly increasing: never below what either side used
                last = max(known + [state.last_batch_id or 0])
                starts = {}
                for batch_id, snap in batches.items():
                    stamps = [watermark.parse_time(j["batch_start"]).timestamp()
                              for j in snap.values() if j.get("batch_start")]
                    starts[batch_id] = min(stamps) if stamps else float(batch_id)
                return Change(
                    action="import",
                    jobs=jobs,
                    replace=True,
                    meta={**meta, "last_batch_id": str(last)},
                    batches=[(keys.batch(wf, b), "put", starts[b], snap) for b, snap in batches.items()],
                )

            self.mutate(wf, plan, actor=actor, must_exist=False)
            imported.append(wf)
        return imported

    def mutate(self, wf, plan, *, actor: str = "", must_exist: bool = True, dry_run: bool = False) -> Change:
        """Read wf, plan a change from the state, commit it if nobody else did first; retry."""
        if dry_run:
            return self._mutate(wf, plan, actor, must_exist, dry_run=True)
        with _WRITE_LOCKS[zlib.crc32(wf.encode()) % len(_WRITE_LOCKS)]:
            return self._mutate(wf, plan, actor, must_exist)

    def _mutate(self, wf, plan, actor: str, must_exist: bool, dry_run: bool = False) -> Change:
        floor = 0
        # Names this writer's turn and its new version. random is reseeded in every
        # forked worker; 48 bits make two writers reaching one count with one token moot.
        token = f"{random.getrandbits(48):012x}"
        lost = 0  # commits refused in a row because another writer got in first
        # A dry run commits nothing, so nothing would check a cached state: read it.
        state = None if dry_run else self._cached(wf)
        fresh = state is None
        if state is None:
            state = self.read(wf)
        for attempt in range(MAX_ATTEMPTS):
            state.floor = floor
            try:
                if must_exist and not state.jobs:
                    raise _not_found(wf)
                change = plan(state)
            except BatchyError:
                if fresh:
                    raise
                # Refused on a cached state (a job not open, say): another process may
                # have changed the workflow since. Only the current state may refuse.
                state, fresh = self.read(wf), True
                continue
            change.state = change.jobs if change.replace else {**state.jobs, **change.jobs}
            if dry_run:
                return change
            try:
                reply = self._apply(wf, state, change, actor, token, insist=lost >= 2)
            except Exception:
                self._forget(wf)  # applied or not, this process no longer knows
                raise
            status, value = int(reply[0]), reply[1]
            if status == 1:
                self._learn_clock(reply[2])
                self._remember(wf, value, state, change)
                if len(reply) > 3 and reply[3] < self._wait_replicas:
                    self._forget(wf)  # a failover may still lose this change
                    raise Unavailable(
                        f"the change to {wf!r} is applied on the Redis primary but only {reply[3]} of "
                        f"{self._wait_replicas} replicas confirmed it in {self._wait_timeout} ms",
                        workflow=wf,
                    )
                return change
            if status == -2:
                self._check_pause(wf)
                state, fresh = self.read(wf), True
                continue  # resumed in between: plan again
            if status == -1:  # a snapshot key with that batch id exists: skip past it
                floor = int(str(value).rsplit("-", 1)[-1]) + 1
                state, fresh = self.read(wf), True
                continue
            # The version or the second moved on since the state was planned on, or
            # another writer has the turn: plan again from the state the refusal carries.
            # A writer that lost to another one twice takes the turn (scripts.COMMIT);
            # one that finds the turn taken waits a moment for that writer to commit.
            if fresh and value != state.version:
                lost += 1
            self._forget(wf)
            state, fresh = self._state(wf, *reply[2:5]), True
            if int(reply[5]):
                time.sleep(random.uniform(0.0005, 0.002))
        raise Busy(f"workflow {wf!r} is changing too fast to update; retry", workflow=wf)

    def _apply(self, wf: str, state: State, change: Change, actor: str, token: str, insist: bool) -> list:
        """Send the change to scripts.COMMIT; return its reply (with WAIT's count appended)."""
        args: list = [state.version, token, state.second, "1" if insist else "0",
                      "1" if change.check_pause else "0", "1" if change.replace else "0", len(change.jobs)]
        encoded = {name: _dumps(job) for name, job in change.jobs.items()}
        for item in encoded.items():
            args += item
        if change.replace or not encoded.keys() <= state.raw.keys():
            merged = encoded if change.replace else {**state.raw, **encoded}
            change.stored = {name: merged[name] for name in sorted(merged)}
        else:  # the same jobs: state.raw is in name order already (_state, _remember)
            change.stored = {**state.raw, **encoded}
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
        commit_keys = _commit_keys(wf)
        if not self._wait_replicas:
            return self._send(self._commit, commit_keys, args)
        # WAIT counts the replicas that have the latest write of *its* connection: send
        # it on the same connection as the commit, in one pipeline.
        pipe = self.redis.pipeline(transaction=False)
        self._commit(keys=commit_keys, args=args, client=pipe)
        pipe.execute_command("WAIT", self._wait_replicas, self._wait_timeout)
        result, acked = pipe.execute()
        return [*result, int(acked)] if int(result[0]) == 1 else result

    def _send(self, script, script_keys, args) -> list:
        """Run script in one round trip: the hot path of every state change (see _execute).

        Clients without a plain redis-py pool (the embedded fakeredis) take the normal path.
        """
        if not self._direct:
            return script(keys=script_keys, args=args)
        try:
            return self._execute(("EVALSHA", script.sha, len(script_keys), *script_keys, *args))
        except redis.exceptions.NoScriptError:  # Redis lost its scripts (restart, SCRIPT FLUSH)
            self.redis.script_load(script.script)
            return script(keys=script_keys, args=args)  # loaded just now: let redis-py finish

    def _execute(self, command: tuple):
        """Send one command on this thread's own connection and return the reply as parsed.

        redis-py's command layer (argument checks, retry wrapper, observability hooks) and
        its pool's checkout (a lock, a poll of the socket, metrics) cost more than the
        round trip's own Python work: measured, 62,000 instructions for a checkout and
        return, 65,000 for packing a commit. So the command is packed by hiredis and sent
        on a connection this thread holds (_connection), with redis-py's semantics: one
        retry on a fresh connection after a connection error, none after a timeout.
        """
        packed = [_pack(command)]
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.send_packed_command(packed)
                return conn.read_response()
            except redis.ConnectionError:  # redis-py has closed the connection already
                if attempt == 2:
                    raise
            except redis.exceptions.ResponseError:
                raise  # an error reply: the connection read all of it and stays usable
            except BaseException:
                # A timeout, or anything that stopped us between the command and its
                # reply: a reply may still come, and must never be read as the answer
                # to the next command on this connection.
                conn.disconnect()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _connection(self) -> redis.connection.AbstractConnection:
        """Return this thread's own connection to Redis, made like the pool's.

        Held by the thread, not checked out of the pool per call: a thread runs one
        request at a time, so the connection is never shared. It reconnects by itself
        after an error (send_packed_command connects a closed connection); it is made
        again in a forked child; it is closed when its thread ends (the thread-local is
        dropped, and the connection with it).
        """
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.pid != os.getpid():
            pool = self.redis.connection_pool
            conn = self._local.conn = pool.connection_class(**pool.connection_kwargs)
        return conn

    def _event(self, state: State, change: Change, actor: str) -> dict[str, str]:
        # The watermark of a job: the from_date its next batch starts from once an
        # operator set one, else the from_date of its latest window.
        jobs = change.jobs
        before = {name: job.get("next_from_date") or job.get("from_date")
                  for name, job in state.jobs.items() if change.replace or name in jobs}
        after = {name: job.get("next_from_date") or job.get("from_date") for name, job in jobs.items()}
        return {
            "time": watermark.format_now(state.now),
            "action": change.action,
            "batch_id": "" if change.batch_id is None else str(change.batch_id),
            "actor": actor or "",
            "jobs": _dumps(sorted(jobs)),
            "from_before": _dumps(before),
            "from_after": _dumps(after),
        }


@functools.lru_cache(maxsize=1024)
def _settings(text: str) -> dict:
    """Return a workflow's settings from their JSON text (the same text on every open).

    Shared between calls: read-only, as the plans that read it are pure.
    """
    return json.loads(text)


@functools.lru_cache(maxsize=16)
def _utc_second(seconds: int) -> datetime:
    """Return Redis' clock second as a datetime (every change in one second shares it)."""
    return datetime.fromtimestamp(seconds, timezone.utc)


@functools.lru_cache(maxsize=4096)
def _commit_keys(wf: str) -> tuple[str, ...]:
    """Return the KEYS of scripts.COMMIT for wf, in its order."""
    return (keys.workflow(wf), keys.meta(wf), keys.history(wf), keys.BATCHES, keys.events(wf),
            keys.WORKFLOWS, keys.PAUSE, keys.pause(wf), keys.turn(wf))


def _not_found(wf: str) -> WorkflowNotFound:
    return WorkflowNotFound(
        f"workflow {wf!r} is not loaded: create cfg/{wf}.yaml and call /load_cfg/{wf}",
        workflow=wf,
    )


def decode(raw: dict[str, str]) -> dict[str, dict]:
    """Return a workflow or snapshot hash as {job: {...}}, jobs in name order.

    Redis keeps no field order in a large hash; name order makes every answer stable.
    """
    return {job: json.loads(raw[job]) for job in sorted(raw)}


def _targets(wf: str, jobs: dict[str, dict], job: str | None) -> list[str]:
    if job is None:
        return list(jobs)
    if job not in jobs:
        raise JobNotFound(f"workflow {wf!r} has no job {job!r}", workflow=wf, job=job)
    return [job]


def _success_marks(meta: dict[str, str]) -> dict[str, dict]:
    return {k[8:]: json.loads(v) for k, v in meta.items() if k.startswith("success:")}
