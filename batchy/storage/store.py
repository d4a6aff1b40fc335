"""BatchStore: the state of each workflow and every change to it. No Flask here.

Every state change is a pure plan (rules/plans.py) committed by commit.py in one round
trip. Reads of what happened are history.py's and pauses pauses.py's: the app's Services
(web/db.py) hand each to the views.
"""
from __future__ import annotations

import logging
from datetime import datetime

import redis

from . import keys, migrate, transfer, webhooks
from ..rules import plans
from .cache import StateCache
from .clock import Clock
from .commit import Committer
from .connections import Transport, is_cluster
from ..errors import BatchyError, WorkflowNotFound, redis_refusal
from .history import History
from ..rules.jobs import Status, check_raw, decode
from .pauses import Pauses
from ..rules.state import Change, State
from ..rules.workflows import Config, names_in, read_config

__all__ = ["BatchStore", "decode"]
log = logging.getLogger("batchy")


class BatchStore:
    """Batchy's state in one Redis: read it, change it, search it."""

    def __init__(self, client: redis.Redis, settings: dict, clock: Clock | None = None):
        self.redis = client
        # The key style, chosen once: cluster-style names (hash tags) when asked, or on a cluster client.
        self.keys = keys.style(bool(settings.get("BATCHY_REDIS_CLUSTER")) or is_cluster(client))
        self.webhooks = bool(settings.get("BATCHY_WEBHOOK_URL"))
        self.clock = clock or Clock()
        self.transport = Transport(client)
        self.cache = StateCache(settings.get("BATCHY_STATE_CACHE", 1024))
        cfg_dir = settings.get("BATCHY_CFG_DIR", "cfg")
        self.pausing = Pauses(client, settings["BATCHY_EVENTS_KEEP"], self.now, self._not_found, self.keys)
        self.committer = Committer(self.transport, self.clock, self.cache, settings, self.pausing.check, cfg_dir,
                                   self.keys)
        self.reads = History(client, self._not_found, self.keys)

    def _not_found(self, wf: str):
        return self.committer.not_found(wf)

    # -- reads ---------------------------------------------------------------

    def ping(self) -> bool:
        return bool(self.redis.ping())

    def refuses_writes(self) -> str | None:
        """Return why Redis refuses writes now (out of memory, read-only), or None if it takes them."""
        try:
            self.redis.set(self.keys.READY_PROBE, "1", px=10000)
        except redis.ResponseError as exc:
            why = redis_refusal(exc)
            if why is None:
                raise
            return why
        return None

    def now(self) -> datetime:
        """Return the Redis server's clock, the one every batch time comes from."""
        seconds, _micro = self.redis.time()
        return self.clock.moment(int(seconds))

    def raw_status(self, wf: str) -> dict[str, str]:
        """Return the workflow hash as stored: {job: JSON text}, in name order. One round trip."""
        raw = self.transport.hgetall(self.keys.workflow(wf))
        if not raw:
            raise self._not_found(wf)
        return check_raw(wf, dict(sorted(raw.items())))

    def status(self, wf: str) -> dict[str, dict]:
        return decode(self.raw_status(wf), wf)

    def workflows(self) -> list[str]:
        """Return the names of every loaded workflow."""
        return sorted(self.redis.smembers(self.keys.WORKFLOWS))

    def reconcile_index(self) -> dict[str, list[str]]:
        """Make batchy:workflows list exactly the workflows that exist; return {added, dropped}.

        On a cluster the index is kept around each commit, not in it (scripts.for_cluster):
        a process that stops between a load and its SADD leaves the workflow unlisted. Found
        by a SCAN of every primary for meta hashes; nothing the commits decide reads the index.
        """
        names = set(migrate.workflows_in(self.redis, self.keys))
        listed = set(self.redis.smembers(self.keys.WORKFLOWS))
        candidates = sorted(names | listed)
        pipe = self.redis.pipeline(transaction=False)
        for wf in candidates:
            pipe.exists(self.keys.workflow(wf))
        exists = {wf for wf, n in zip(candidates, pipe.execute()) if n}
        added, dropped = sorted(exists - listed), sorted(listed - exists)
        if added:
            self.redis.sadd(self.keys.WORKFLOWS, *added)
        if dropped:
            self.redis.srem(self.keys.WORKFLOWS, *dropped)
        return {"added": added, "dropped": dropped}

    def read(self, wf: str) -> State:
        return self.committer.read(wf)

    def raw_batch(self, wf: str, batch_id: int) -> dict[str, str]:
        return self.reads.raw_batch(wf, batch_id)

    # -- state changes -----------------------------------------------------------

    def mutate(self, wf: str, plan, *, actor: str = "", must_exist: bool = True, dry_run: bool = False,
               lenient: bool = False):
        """Commit plan(state) to wf (commit.Committer.mutate)."""
        return self.committer.mutate(wf, plan, actor=actor, must_exist=must_exist, dry_run=dry_run, lenient=lenient)

    def load(self, wf: str, config: Config, *, reset: bool = False, actor: str = "") -> dict[str, dict]:
        """Store config as wf's jobs; unless reset, jobs that have run keep their runtime state."""
        # A reset replaces every job, so it plans on what can be read: it repairs a
        # workflow whose stored state a hand edit broke.
        change = self.mutate(wf, lambda state: plans.plan_load(state, config, reset=reset),
                             actor=actor, must_exist=False, lenient=reset)
        return dict(sorted(change.after.items()))

    def open(self, wf: str, *, actor: str = "", dry_run: bool = False,
             idempotency_key: str | None = None, jobs: list[str] | None = None) -> Change:
        """Open a new batch of every job in wf, or of the jobs named; return the change (jobs and batch_id).

        With an idempotency_key, a retry answers the batch the first call opened.
        """
        if idempotency_key and jobs:  # one key, one scope: the same key naming other jobs is another open
            idempotency_key = f"{idempotency_key}\njobs={','.join(sorted(set(jobs)))}"

        def plan(state):
            return plans.plan_open(state, idempotency_key, jobs)

        if dry_run:
            self.pausing.check(wf)
            return self.mutate(wf, plan, actor=actor, dry_run=True)
        if idempotency_key:
            # A retry answers the batch its key opened before any rule is applied again (an
            # exclusive workflow would refuse a second open); the commit script checks the
            # key once more, for two attempts racing.
            opened = self.redis.get(self.keys.idempotency(wf, idempotency_key))
            if opened is not None:
                return self.committer.repeated_open(wf, int(opened))
        return self.mutate(wf, plan, actor=actor)

    def close(self, wf: str, outcome: str, *, job: str | None = None, batch_id: int | None = None,
              records_processed: int | None = None, message: str | None = None, actor: str = "",
              attested: dict | None = None) -> Change:
        """Mark wf's open jobs (or one job) success or failed, here and in their batch snapshot."""
        def plan(state):
            return plans.plan_close(state, outcome, job=job, batch_id=batch_id,
                                    records_processed=records_processed, message=message, attested=attested)

        change = self.mutate(wf, plan, actor=actor)
        if self.webhooks and outcome == Status.FAILED and not change.noop:
            try:
                text, ident = webhooks.failure_text(wf, change.writes)
                webhooks.announce(self.redis, "failed", text, ident, self.keys, workflow=wf, batch_id=change.batch_id,
                                  jobs=sorted(change.writes))
            except redis.RedisError as exc:  # the failure is recorded; only its announcement is lost
                log.warning("webhooks: could not queue the failure of %s: %s", wf, exc)
        return change

    def invalidate(self, wf: str, start: datetime, end: datetime, *, jobs: list[str] | None = None,
                   reason: str | None = None, actor: str = "") -> Change:
        """Mark [start, end) of wf's jobs (or those named) dirty: late data arrived for it."""
        return self.mutate(wf, lambda state: plans.plan_invalidate(state, start, end, jobs, reason), actor=actor)

    def set_from_date(self, wf: str, moment: datetime, *, job: str | None = None, force: bool = False,
                      actor: str = "") -> Change:
        """Make the next batch of wf (or one job) extract from moment exactly."""
        return self.mutate(wf, lambda state: plans.plan_set_from_date(state, moment, job=job, force=force),
                           actor=actor)

    def rewind(self, wf: str, batch_id: int, *, job: str | None = None, force: bool = False,
               actor: str = "") -> Change:
        """Make the next batch of wf (or one job) extract from where batch batch_id did."""
        snapshot = decode(self.raw_batch(wf, batch_id), wf, self.keys.batch(wf, batch_id), snapshot=True)
        return self.mutate(wf, lambda state: plans.plan_rewind(state, batch_id, snapshot, job=job, force=force),
                           actor=actor)

    def remove(self, wf: str, *, purge_history: bool = False, actor: str = "") -> dict:
        """Remove wf: its state goes; its history and backfills stay (open batches abandoned) or are purged."""
        try:
            # A corrupt workflow can be removed too (lenient); the script says whether it exists.
            self.mutate(wf, lambda state: plans.plan_remove(state, purge_history), actor=actor, must_exist=False,
                        lenient=True)
        except WorkflowNotFound:
            if purge_history:  # a retry of a removal whose purge failed: finish it
                self._purge_backfills(wf)
            raise
        if purge_history:
            self._purge_backfills(wf)
        return {"workflow": wf, "removed": True, "history": "purged" if purge_history else "kept"}

    def _purge_backfills(self, wf: str) -> None:
        """Delete every backfill of wf (removed: none can be created meanwhile)."""
        ids = self.redis.zrange(self.keys.backfills(wf), 0, -1)
        if not ids:
            return
        pipe = self.redis.pipeline(transaction=True)
        for backfill_id in ids:
            pipe.delete(self.keys.backfill(wf, backfill_id), self.keys.backfill_chunks(wf, backfill_id),
                        self.keys.backfill_queue(wf, backfill_id), self.keys.backfill_events(wf, backfill_id))
        pipe.zrem(self.keys.backfills(wf), *ids)
        pipe.execute()

    def load_all(self, cfg_dir: str, max_bytes: int, *, reset: bool = False,
                 actor: str = "") -> tuple[dict[str, dict], dict[str, dict]]:
        """Load every workflow file in cfg_dir; return (states loaded, errors of the others)."""
        loaded, failed = {}, {}
        for wf in names_in(cfg_dir):
            try:
                loaded[wf] = self.load(wf, read_config(cfg_dir, wf, max_bytes), reset=reset, actor=actor)
            except BatchyError as exc:
                failed[wf] = {"error": exc.code, "message": exc.message, "status": exc.status}
        return loaded, failed

    def summaries(self, limit: int | None = None, offset: int = 0) -> tuple[list[dict], int | None]:
        """Return limit loaded workflows from offset in name order (each its name, job count, last batch
        id and pause), and the offset of the next ones, or None after the last."""
        names = self.workflows()
        chosen = names[offset:] if limit is None else names[offset:offset + limit]
        pipe = self.redis.pipeline(transaction=False)
        for wf in chosen:
            pipe.hlen(self.keys.workflow(wf))
            pipe.hget(self.keys.meta(wf), self.keys.LAST_BATCH_ID)
            pipe.exists(self.keys.pause(wf))
        replies = pipe.execute()
        found = [{"workflow": wf, "jobs": jobs, "last_batch_id": int(last) if last and last.isdigit() else None,
                  "paused": bool(paused)}
                 for wf, jobs, last, paused in zip(chosen, replies[::3], replies[1::3], replies[2::3]) if jobs]
        following = offset + len(chosen)
        return found, following if following < len(names) else None

    # -- export / import -----------------------------------------------------------

    def export(self, names: list[str] | None = None, *, history: bool = True) -> dict:
        return transfer.export(self, names, history=history)

    def import_(self, doc: dict, *, replace: bool = False, actor: str = "import") -> list[str]:
        return transfer.import_(self, doc, replace=replace, actor=actor)

