"""The optimistic commit loop: plan a change on a state, apply it only if nothing moved.

A change is planned (rules/plans.py) on a State, encoded here (bookkeeping.py turns its
values into fields) and sent to scripts.COMMIT, which applies it
only if the workflow's version is still the one planned on and Redis' TIME still shows
the second every time in the change was computed for. The state comes from a
per-process cache (StateCache) of the workflow as this process last wrote it, so a
change is one round trip; when another process wrote in between (or the cache is cold),
the refused commit answers with the current state and the clock, and the change is
planned again from them. Either way a change is at most two round trips.

Writers to one workflow in one process take turns on that workflow's own lock
(locks.LockTable) instead of invalidating each other's optimistic reads: measured with
32 writers on one workflow, retries piled up into 409 busy and a 4 s p99. The version
check in COMMIT still guards across processes.
"""
from __future__ import annotations

import difflib
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Callable

import redis

from ..errors import BatchyError, Busy, StaleBatch, Unavailable, WorkflowNotFound
from ..rules.formats import dumps
from ..rules import lineage
from ..rules.jobs import decode, running_batches
from ..rules.state import SNAPSHOT_NEW, SNAPSHOT_PUT, SNAPSHOT_UPDATE, Change, State
from ..rules.workflows import config_path
from . import bookkeeping, keys, scripts
from .cache import StateCache
from .clock import Clock
from .connections import Transport
from .locks import LockTable

log = logging.getLogger("batchy")

# A writer gives up with 409 busy only past its time budget and after this many tries.
MIN_ATTEMPTS = 5


@dataclass
class _Writer:
    """One call's attempts at a change: its token, and whether it may hold the turn."""

    token: str
    insisted: bool = False
    lenient: bool = False  # plan on the readable jobs only (see decode)


class Committer:
    """Read workflows and commit planned changes to them, optimistically."""

    def __init__(self, transport: Transport, clock: Clock, cache: StateCache, settings: dict,
                 check_pause: Callable[[str], None], cfg_dir: str = "cfg", style: keys.KeyStyle = keys.CLASSIC):
        self.transport = transport
        self.keys = style
        self.clock = clock
        self.cache = cache
        self.locks = LockTable()
        self.check_pause = check_pause
        self.cfg_dir = cfg_dir
        client = transport.redis
        cluster = self.keys.cluster
        self._commit = client.register_script(scripts.for_cluster(scripts.COMMIT) if cluster else scripts.COMMIT)
        self._read = client.register_script(scripts.READ)
        self._release = client.register_script(scripts.RELEASE_TURN)
        self._remove = client.register_script(scripts.for_cluster(scripts.REMOVE) if cluster else scripts.REMOVE)
        # Every change answers within about one Redis timeout of arriving.
        self.budget = float(settings.get("BATCHY_REDIS_TIMEOUT", 2.0))
        self._idempotency_ms = float(settings.get("BATCHY_IDEMPOTENCY_HOURS", 24.0)) * 3_600_000
        self._keep = settings["BATCHY_HISTORY_KEEP"]
        self._events_keep = settings["BATCHY_EVENTS_KEEP"]
        self._wait_replicas = settings["BATCHY_REDIS_WAIT_REPLICAS"]
        self._wait_timeout = settings["BATCHY_REDIS_WAIT_TIMEOUT_MS"]
        self._lineage = bool(settings.get("BATCHY_OPENLINEAGE_URL"))

    def not_found(self, wf: str) -> WorkflowNotFound:
        try:
            path = config_path(self.cfg_dir, wf)  # logs where it looked when there is none
        except BatchyError:  # no file, or a name no file can have
            return WorkflowNotFound.named(wf, meant=self._meant(wf))
        log.info("workflow %s is not loaded; its file is %s", wf, os.path.abspath(path))
        return WorkflowNotFound.named(wf, has_file=True)

    def _meant(self, wf: str) -> str | None:
        """Return the loaded workflow whose name is closest to wf (a typo), if one is close."""
        try:
            loaded = self.transport.redis.smembers(self.keys.WORKFLOWS)
        except redis.RedisError:  # the 404 is answered anyway, without a suggestion
            return None
        by_lower = {name.lower(): name for name in loaded}  # Wf1 for wf1 too
        close = difflib.get_close_matches(wf.lower(), list(by_lower), n=1, cutoff=0.75)
        return by_lower[close[0]] if close else None

    # -- reading a state -------------------------------------------------------

    def read(self, wf: str, lenient: bool = False) -> State:
        """Read the clock, the workflow and its bookkeeping in one atomic round trip."""
        clock, flat_raw, flat_meta = self.transport.run(self._read, (self.keys.workflow(wf), self.keys.meta(wf)), ())
        return self._state(wf, clock, flat_raw, flat_meta, lenient)

    def _state(self, wf: str, clock, flat_raw, flat_meta, lenient: bool = False) -> State:
        """Return the State of a reply holding TIME and the two flat HGETALLs."""
        seconds = self.clock.learn(clock)
        # In name order, as every answer lists jobs (and as a remembered state already is):
        # HGETALL follows insertion order, or none past 128 fields.
        raw = dict(sorted(zip(flat_raw[::2], flat_raw[1::2])))
        meta = dict(zip(flat_meta[::2], flat_meta[1::2]))
        return self._planned(wf, raw, meta, seconds, lenient=lenient)

    def _planned(self, wf: str, raw: dict[str, str], meta: dict[str, str], seconds: int,
                 jobs: dict[str, dict] | None = None, lenient: bool = False) -> State:
        jobs = decode(raw, wf, lenient=lenient, shared=True) if jobs is None else jobs
        return bookkeeping.state(wf, self.clock.moment(seconds), jobs, meta, raw, str(seconds), self.keys.meta(wf))

    def _cached(self, wf: str) -> State | None:
        """Return wf as this process last wrote it, at the second Redis' clock should show now."""
        entry = self.cache.get(wf)
        if entry is None:
            return None
        raw, meta, jobs = entry
        return self._planned(wf, raw, meta, self.clock.expected_second(), jobs)

    def _remember(self, wf: str, version: str, state: State, change: Change, fields: dict[str, str]) -> None:
        # A load or import carries jobs as read from a file: keep only their JSON text.
        jobs = None if change.replace else change.after
        meta = {**state.stored, **fields, self.keys.VERSION: version}
        counted = self.keys.COUNT_PREFIX + change.action  # COMMIT counts the change (self.keys.count_field): so does the copy
        meta[counted] = str(int(meta.get(counted) or 0) + 1)
        self.cache.put(wf, (change.after_text, meta, jobs))

    # -- committing a change ---------------------------------------------------

    def mutate(self, wf: str, plan: Callable[[State], Change], *, actor: str = "", must_exist: bool = True,
               dry_run: bool = False, lenient: bool = False) -> Change:
        """Read wf, plan a change from the state, commit it if nobody else did first; retry.

        Answers within about budget seconds of the call, however many writers queue.
        lenient: plan on the jobs that can be read, leaving out corrupt ones (a reset).
        """
        deadline = time.monotonic() + self.budget
        if dry_run:
            return self._mutate(wf, plan, actor, must_exist, deadline, _Writer("", lenient=lenient), dry_run=True)
        lock = self.locks(wf)
        if not lock.acquire(timeout=self.budget):
            raise Unavailable(f"earlier changes to {wf!r} in this process did not complete within "
                              f"{self.budget:g} s: Redis is slow or unreachable; retry", workflow=wf)
        try:
            return self._mutate(wf, plan, actor, must_exist, deadline, _Writer("", lenient=lenient))
        finally:
            lock.release()

    def _mutate(self, wf, plan, actor: str, must_exist: bool, deadline: float, writer: "_Writer",
                dry_run: bool = False) -> Change:
        # Names this writer's turn and its new version. random is reseeded in every
        # forked worker; 48 bits make two writers reaching one count with one token moot.
        writer.token = f"{random.getrandbits(48):012x}"
        try:
            return self._attempts(wf, plan, actor, must_exist, deadline, dry_run, writer)
        except BaseException:
            if writer.insisted:  # it may hold the turn: others must not wait out its 200 ms
                self._release_turn(wf, writer.token)
            raise

    def _release_turn(self, wf: str, token: str) -> None:
        """Give back a turn this writer may hold; best effort (it expires by itself)."""
        try:
            self.transport.run(self._release, (self.keys.turn(wf),), (token,))
        except Exception:  # noqa: BLE001 - the original error is what the caller must see
            pass

    def _attempts(self, wf, plan, actor, must_exist, deadline, dry_run, writer: "_Writer") -> Change:
        floor = 0
        lost = 0  # commits refused in a row because another writer got in first
        # A dry run commits nothing, so nothing would check a cached state: read it.
        state = None if dry_run else self._cached(wf)
        fresh = state is None
        if state is None:
            state = self.read(wf, writer.lenient)
        attempt = 0
        while True:
            attempt += 1
            if attempt > MIN_ATTEMPTS and time.monotonic() > deadline:
                raise Busy(f"workflow {wf!r} is changing too fast to update; retry", workflow=wf)
            state.floor = floor
            try:
                if must_exist and not state.jobs:
                    raise self.not_found(wf)
                change = plan(state)
            except BatchyError:
                if fresh:
                    raise
                # Refused on a cached state (a job not open, say): another process may
                # have changed the workflow since. Only the current state may refuse.
                state, fresh = self.read(wf, writer.lenient), True
                continue
            if change.noop:
                if not fresh:  # only the current state may say the call was applied already
                    state, fresh = self.read(wf, writer.lenient), True
                    continue
                change.after, change.after_text = state.jobs, state.raw
                return change
            change.after = change.writes if change.replace else {**state.jobs, **change.writes}
            if dry_run:
                return change
            if change.action == "remove":
                if self._remove_now(wf, state, change, actor):
                    return change
                state, fresh = self.read(wf, writer.lenient), True  # it changed meanwhile: plan again
                continue
            insist = lost >= 2
            writer.insisted |= insist
            fields = bookkeeping.fields(change.book)
            try:
                reply = self._apply(wf, state, change, fields, actor, writer.token, insist=insist)
            except Exception:
                self.cache.forget(wf)  # applied or not, this process no longer knows
                raise
            status, value = int(reply[0]), reply[1]
            if status == scripts.Reply.APPLIED:
                writer.insisted = False  # the commit gave the turn back
                if change.replace and self.keys.cluster:
                    # A load or import made the workflow exist: list it in the service-wide index
                    # (its own slot), after the commit. A crash in between leaves it unlisted, never
                    # wrong; reconcile_index lists it again (docs/operations.md).
                    self.transport.redis.sadd(self.keys.WORKFLOWS, wf)
                    if not self.transport.redis.exists(self.keys.workflow(wf)):  # removed meanwhile
                        self.transport.redis.srem(self.keys.WORKFLOWS, wf)
                self.clock.learn(reply[2])
                self._remember(wf, value, state, change, fields)
                if len(reply) > 3 and reply[3] < self._wait_replicas:
                    self.cache.forget(wf)  # a failover may still lose this change
                    raise Unavailable(
                        f"the change to {wf!r} is applied on the Redis primary but only {reply[3]} of "
                        f"{self._wait_replicas} replicas confirmed it in {self._wait_timeout} ms",
                        workflow=wf,
                    )
                return change
            if status == scripts.Reply.PAUSED:
                self.check_pause(wf)
                state, fresh = self.read(wf, writer.lenient), True
                continue  # resumed in between: plan again
            if status == scripts.Reply.DUPLICATE:
                return self.repeated_open(wf, int(value), writer.lenient)
            if status == scripts.Reply.SNAPSHOT_TAKEN:  # skip past that batch id
                floor = int(str(value).rsplit("-", 1)[-1]) + 1
                state, fresh = self.read(wf, writer.lenient), True
                continue
            # Reply.REFUSED: the version or the second moved on since the state was
            # planned on, or another writer has the turn: plan again from the state the
            # refusal carries. A writer that lost to another one twice takes the turn
            # (scripts.COMMIT); one that finds the turn taken waits a moment.
            if fresh and value != state.version:
                lost += 1
            self.cache.forget(wf)
            state, fresh = self._state(wf, *reply[2:5], lenient=writer.lenient), True
            if int(reply[5]):
                time.sleep(random.uniform(0.0005, 0.002))

    def _remove_now(self, wf: str, state: State, change: Change, actor: str) -> bool:
        """Apply a removal with scripts.REMOVE; return False when the workflow changed since state."""
        args: list = [state.version, "1" if change.purge else "0", self.keys.batch_prefix(wf), self._events_keep,
                      len(change.snapshots)]
        for batch_id, _mode, _score, snapshot in change.snapshots:
            args += [self.keys.batch(wf, batch_id), len(snapshot)]
            for name, job in snapshot.items():
                args += [name, dumps(job)]
        event = self._event(state, change, actor)
        args.append(len(event))
        for item in event.items():
            args += item
        args.append(self.keys.channel(wf))
        try:
            index = self.keys.workflow(wf) if self.keys.cluster else self.keys.WORKFLOWS  # a placeholder on a cluster
            done = int(self.transport.run(self._remove, self.keys.commit_keys(wf)[:5] + (
                index, self.keys.pause(wf), self.keys.turn(wf)), args))
        finally:
            self.cache.forget(wf)
        if done == -1:
            raise self.not_found(wf)
        if done == 1 and self.keys.cluster:
            self.transport.redis.srem(self.keys.WORKFLOWS, wf)  # after the commit: see docs/operations.md
            if self.transport.redis.exists(self.keys.workflow(wf)):
                # loaded again meanwhile, and that load's SADD came before this SREM: list it again
                self.transport.redis.sadd(self.keys.WORKFLOWS, wf)
        return done == 1

    def repeated_open(self, wf: str, batch_id: int, lenient: bool = False) -> Change:
        """Answer an open retried with its Idempotency-Key: the batch it opened, while a job still runs in it.

        A newer batch of the same jobs (or a reset) supersedes it; a newer batch of other jobs
        (each on its own schedule) does not.
        """
        state = self.read(wf, lenient)
        ran = {name: job for name, job in state.jobs.items() if job.get("batch_id") == batch_id}
        # A job it opened that runs in a newer batch now (its own schedule moved on): the
        # batch is not the one to answer with any more, whole or in part.
        opened = self.transport.redis.hkeys(self.keys.batch(wf, batch_id))
        moved = sorted(name for name in opened if name in state.jobs
                       and (state.jobs[name].get("batch_id") or 0) > batch_id)
        if moved:
            raise StaleBatch(
                f"this Idempotency-Key opened batch {batch_id} of {wf!r}; a newer batch of {', '.join(moved)} "
                "was opened since", workflow=wf, batch_id=batch_id,
                current_batch_id=state.jobs[moved[0]].get("batch_id"))
        if not ran and state.last_batch_id != batch_id:
            raise StaleBatch(
                f"this Idempotency-Key opened batch {batch_id} of {wf!r}, which batch {state.last_batch_id} "
                "has superseded since", workflow=wf, batch_id=batch_id, current_batch_id=state.last_batch_id)
        if not ran:  # a reset (or a reload that dropped its jobs) ended it: nothing to answer with
            raise StaleBatch(
                f"this Idempotency-Key opened batch {batch_id} of {wf!r}, which no job runs in any more "
                "(a reset or a reload since)", workflow=wf, batch_id=batch_id, current_batch_id=batch_id)
        return Change(action="open", writes=ran, batch_id=batch_id, noop=True, after=state.jobs,
                      after_text=state.raw)

    def _event(self, state: State, change: Change, actor: str) -> dict[str, str]:
        """Return the change's audit event; with OpenLineage on, with the runs it starts or ends,
        so they are recorded in the same step as the change (storage/lineage.py sends them)."""
        event = bookkeeping.event_fields(change.audit, actor)
        if self._lineage:
            found = lineage.runs(state, change)
            if found:
                event["runs"] = dumps(found)
        return event

    def _apply(self, wf: str, state: State, change: Change, fields: dict[str, str], actor: str, token: str,
               insist: bool) -> list:
        """Send the change to scripts.COMMIT; return its reply (with WAIT's count appended)."""
        args: list = [state.version, token, state.second, "1" if insist else "0",
                      "1" if change.check_pause else "0", "1" if change.replace else "0", len(change.writes)]
        encoded = {name: dumps(job) for name, job in change.writes.items()}
        for item in encoded.items():
            args += item
        if change.replace or not encoded.keys() <= state.raw.keys():
            merged = encoded if change.replace else {**state.raw, **encoded}
            change.after_text = {name: merged[name] for name in sorted(merged)}
        else:  # the same jobs: state.raw is in name order already (_state, _remember)
            change.after_text = {**state.raw, **encoded}
        args.append(len(fields))
        for item in fields.items():
            args += item
        args.append(len(change.snapshots))
        # History is append-only; only an import can leave a final line under a job still
        # open, so a workflow no import has written sends its updates as amends (scripts.py).
        update = SNAPSHOT_UPDATE if self.keys.IMPORT_COUNT in state.stored else scripts.SNAPSHOT_AMEND
        indexed = False  # a batch added to the history index: retention runs
        for batch_id, mode, score, snapshot in change.snapshots:
            args += [self.keys.batch(wf, batch_id), update if mode == SNAPSHOT_UPDATE else mode, score, len(snapshot)]
            for name, job in snapshot.items():
                args += [name, dumps(job)]
            indexed = indexed or mode == SNAPSHOT_NEW or mode == SNAPSHOT_PUT
        # Retention deletes the oldest batches but none a job still runs, the one opened now
        # included (with BATCHY_HISTORY_KEEP or more running, the index holds more until they end).
        running = running_batches(state.jobs, change.writes, change.replace) if indexed else ()
        # A change planned without an audit event (a chunk's coverage merge: its event goes to
        # the backfill's own stream) writes none.
        event = self._event(state, change, actor) if change.audit else {}
        args += [self._keep, self.keys.batch_prefix(wf), len(running), *running, self._events_keep, len(event)]
        for item in event.items():
            args += item
        args += [self.keys.channel(wf), change.action]
        commit_keys = self.keys.commit_keys(wf)
        if change.idempotency_key:
            commit_keys = (*commit_keys, self.keys.idempotency(wf, change.idempotency_key))
            args += [change.batch_id, int(self._idempotency_ms)]
        if not self._wait_replicas:
            return self.transport.run(self._commit, commit_keys, args)
        # WAIT counts the replicas that have the latest write of *its* connection: send
        # it on the same connection as the commit, in one pipeline.
        if self.keys.cluster:
            return self._apply_and_wait_on_cluster(commit_keys, args)
        pipe = self.transport.redis.pipeline(transaction=False)
        self._commit(keys=commit_keys, args=args, client=pipe)
        pipe.execute_command("WAIT", self._wait_replicas, self._wait_timeout)
        result, acked = pipe.execute()
        return [*result, int(acked)] if int(result[0]) == scripts.Reply.APPLIED else result

    def _apply_and_wait_on_cluster(self, commit_keys, args) -> list:
        """COMMIT then WAIT on the primary of the workflow's slot, on one connection of that node.

        redis-py's cluster pipeline would send the keyless WAIT to any node: the node's own
        client is used instead. A slot that moved (MOVED, ASK: the script did not run) is tried
        once more on its new primary; a node that does not answer makes the client learn the
        cluster's shape again, and the call answers 503 (the change may or may not be applied,
        as with any lost connection).
        """
        cluster = self.transport.redis
        for attempt in (1, 2):
            node = cluster.get_redis_connection(cluster.get_node_from_key(commit_keys[0]))
            pipe = node.pipeline(transaction=False)
            self._commit(keys=commit_keys, args=args, client=pipe)
            pipe.execute_command("WAIT", self._wait_replicas, self._wait_timeout)
            try:
                result, acked = pipe.execute()
            except (redis.exceptions.AskError, redis.exceptions.TryAgainError,
                    redis.exceptions.ClusterDownError) as exc:
                # By type: redis-py's parser strips the MOVED/ASK/... prefix from the message.
                # MovedError is an AskError; an ASK (a slot being migrated) is tried again once
                # the slots map is read again, as a MOVED is.
                self._relearn(cluster)
                if attempt == 2 or not isinstance(exc, redis.exceptions.AskError):
                    raise redis.exceptions.TryAgainError(str(exc)) from exc
                continue
            except (redis.ConnectionError, redis.TimeoutError):
                self._relearn(cluster)
                raise
            return [*result, int(acked)] if int(result[0]) == scripts.Reply.APPLIED else result
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _relearn(cluster) -> None:
        """Make the cluster client read the slots' owners again (best effort)."""
        try:
            cluster.nodes_manager.initialize()
        except Exception as exc:  # noqa: BLE001 - the caller's error is the one to answer
            log.info("redis cluster: could not refresh the slots map yet: %s", exc)
