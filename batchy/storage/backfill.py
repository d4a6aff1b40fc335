"""Backfills in Redis: create, read, lease, close or fail, cancel. No Flask here.

Each backfill is a hash (keys.backfill), its chunks a hash of JSON (keys.backfill_chunks)
and a queue of the chunks a worker may lease (keys.backfill_queue); every chunk change
is one Lua script (backfill_lua.BACKFILL_*) that also appends its event: creation and
cancel to the workflow's audit stream, chunk events (lease, close, fail, expire, coverage)
to the backfill's own capped stream (keys.backfill_events), so chunk traffic never evicts
the workflow's audit trail. The workflow's own state is never touched, except the coverage
ledger: a successful chunk's window is merged into it by a committed change
(rules/plans.plan_backfill_coverage through store.mutate), after the chunk is recorded
successful, so the ledger never holds more than what succeeded; a retried close merges it
again (a no-op if it is there).
"""
from __future__ import annotations

import json
import secrets
from datetime import datetime

from ..rules import backfill, coverage, formats, plans
from . import backfill_lua, keys
from ..errors import BackfillNotFound, NotLeased, StaleAttempt, Unavailable, WrongLeaseToken
from .cache import DerivedCache
from ..errors import CorruptState, InvalidParameter
from .store import BatchStore
from ..rules.times import UTC, format_time, parse_time, zone

Reply = backfill_lua.BackfillReply


def _pairs(flat: list) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2]))


def _counts(record: dict[str, str]) -> dict[str, int]:
    return {str(s): int(record.get(keys.backfill_count_field(s)) or 0) for s in backfill.CHUNK_STATUSES}


def _summary(wf: str, backfill_id, record: dict[str, str]) -> dict:
    """Return backfill.summary of a stored backfill hash, or CorruptState naming it (a bad hand edit)."""
    try:
        return backfill.summary(record, _counts(record))
    except (ValueError, KeyError, TypeError) as exc:
        raise _corrupt(wf, backfill_id, exc) from None


def _corrupt(wf: str, backfill_id, exc: Exception) -> CorruptState:
    return CorruptState(f"workflow {wf!r}: backfill {backfill_id} in Redis key {keys.backfill(wf, backfill_id)!r} "
                        f"holds a value Batchy cannot read ({str(exc)[:200]}); fix it with redis-cli or cancel "
                        "and create the backfill again", workflow=wf, backfill_id=str(backfill_id))


class Backfills:
    """The backfills of the workflows in one store's Redis."""

    def __init__(self, store: BatchStore, events_keep: int):
        self.store = store
        self.keys = store.keys
        self.events_keep = events_keep
        client = store.redis
        self._create = client.register_script(backfill_lua.BACKFILL_CREATE)
        self._lease = client.register_script(backfill_lua.BACKFILL_LEASE)
        self._finish = client.register_script(backfill_lua.BACKFILL_FINISH)
        self._cancel = client.register_script(backfill_lua.BACKFILL_CANCEL)
        self._renew = client.register_script(backfill_lua.BACKFILL_RENEW)
        # What running backfills may still fill, per workflow: shared by every /wait of
        # this process, computed once per change (filling_cache.computed counts).
        self.filling_cache = DerivedCache()
        self._note = client.register_script(backfill_lua.BACKFILL_NOTE)

    def _run(self, script, script_keys, args) -> list:
        return self.store.transport.run(script, tuple(script_keys), args)

    def _missing(self, wf: str, backfill_id: int) -> Exception:
        """Return the 404 for a backfill not found: of the workflow if that is gone too."""
        if not self.store.redis.exists(self.keys.workflow(wf)):
            return self.store.committer.not_found(wf)
        return BackfillNotFound(f"workflow {wf!r} has no backfill {backfill_id}", workflow=wf, backfill_id=backfill_id)

    # -- create ------------------------------------------------------------------------

    def create(self, wf: str, start: datetime, end: datetime, *, jobs: list[str] | None = None,
               batch_size: str | None = None, chunk_hours: float | None = None,
               max_attempts: int = backfill.DEFAULT_MAX_ATTEMPTS, actor: str = "") -> dict:
        """Create a backfill of [start, end) for jobs (default all); return it with its chunks."""
        state = self.store.read(wf)
        if not state.jobs:
            raise self.store.committer.not_found(wf)
        chunks = backfill.plan(wf, state.jobs, state.settings, start, end, state.now, names=jobs,
                               batch_size=batch_size, chunk_hours=chunk_hours)
        names = list(dict.fromkeys(chunk["job"] for chunk in chunks))
        zones = {name: state.jobs[name].get("timezone") or "UTC" for name in names}
        record = {
            "workflow": wf,
            "from": start.isoformat(),
            "to": end.isoformat(),
            "jobs": formats.dumps(names),
            "zones": formats.dumps(zones),
            "batch_size": batch_size or "",
            "chunk_hours": "" if chunk_hours is None else repr(chunk_hours),
            "max_attempts": str(max_attempts),
            "chunks": str(len(chunks)),
            "status": backfill.RUNNING,
            "actor": actor,
        }
        backfill_id = int(state.now.timestamp())
        message = f"{len(chunks)} chunk(s) of [{record['from']}, {record['to']})"
        while True:
            record["backfill_id"] = str(backfill_id)
            args: list = [backfill_id, self.events_keep, actor, record["jobs"], message, len(record)]
            for item in record.items():
                args += item
            args.append(len(chunks))
            args += [formats.dumps(chunk) for chunk in chunks]
            reply = self._run(self._create, (self.keys.workflow(wf), self.keys.backfills(wf), self.keys.backfill(wf, backfill_id),
                                             self.keys.backfill_chunks(wf, backfill_id),
                                             self.keys.backfill_queue(wf, backfill_id), self.keys.events(wf)), args)
            code = int(reply[0])
            if code == Reply.APPLIED:
                break
            if code == Reply.NO_WORKFLOW or code == Reply.NO_BACKFILL:
                raise self.store.committer.not_found(wf)
            backfill_id = int(reply[1])  # taken by a backfill created the same second: the next free id
        counts = {str(backfill.ChunkStatus.PENDING): len(chunks)}
        answer = backfill.summary({**record, "created": _created(reply)}, counts)
        answer["chunks"] = [backfill.render_chunk(n, chunk, zone(zones[chunk["job"]]))
                            for n, chunk in enumerate(chunks)]
        return answer

    # -- reads -------------------------------------------------------------------------

    def get(self, wf: str, backfill_id: int) -> dict:
        """Return a backfill with every chunk and its progress."""
        pipe = self.store.redis.pipeline(transaction=True)
        pipe.hgetall(self.keys.backfill(wf, backfill_id))
        pipe.hgetall(self.keys.backfill_chunks(wf, backfill_id))
        record, raw = pipe.execute()
        if not record:
            raise self._missing(wf, backfill_id)
        answer = _summary(wf, backfill_id, record)
        try:
            zones = json.loads(record.get("zones") or "{}")
            answer["chunks"] = [
                backfill.render_chunk(n, chunk, zone(zones.get(chunk["job"]) or "UTC"))
                for n, chunk in sorted((int(n), json.loads(text)) for n, text in raw.items())
            ]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise _corrupt(wf, backfill_id, exc) from None
        return answer

    def list(self, wf: str, limit: int = 50) -> list[dict]:
        """Return wf's backfills newest first, without their chunks."""
        ids = self.store.redis.zrevrange(self.keys.backfills(wf), 0, limit - 1)
        if not ids and not self.store.redis.exists(self.keys.workflow(wf)):
            raise self.store.committer.not_found(wf)
        pipe = self.store.redis.pipeline(transaction=False)
        for backfill_id in ids:
            pipe.hgetall(self.keys.backfill(wf, backfill_id))
        return [_summary(wf, backfill_id, record) for backfill_id, record in zip(ids, pipe.execute()) if record]

    def running(self, wfs: list[str], limit: int = 20) -> dict[str, list[dict]]:
        """Return {wf: its running backfills} of each of wfs' newest limit, in two round trips."""
        pipe = self.store.redis.pipeline(transaction=False)
        for wf in wfs:
            pipe.zrevrange(self.keys.backfills(wf), 0, limit - 1)
        ids = dict(zip(wfs, pipe.execute()))
        pipe = self.store.redis.pipeline(transaction=False)
        for wf, found in ids.items():
            for backfill_id in found:
                pipe.hgetall(self.keys.backfill(wf, backfill_id))
        records = iter(pipe.execute())
        result = {}
        for wf, found in ids.items():
            summaries = []
            for backfill_id, record in zip(found, [next(records) for _ in found]):
                try:
                    summaries += [_summary(wf, backfill_id, record)] if record else []
                except CorruptState as exc:  # shown on its workflow; the other backfills and workflows go on
                    summaries.append({"backfill_id": backfill_id, "status": backfill.RUNNING, "error": exc.message})
            result[wf] = [s for s in summaries if s["status"] == backfill.RUNNING]
        return result

    def filling(self, wf: str, limit: int = 50) -> dict[str, list]:
        """Return {job: merged [[start, end], ...]} (epoch seconds) the chunks of wf's running
        backfills (of its newest limit) fill or may still fill: every chunk not failed or cancelled.

        A successful chunk counts too: its window is merged into the ledger just after it is
        recorded successful, so a gate that read the ledger before never finds it in neither.
        Computed once per change of what it depends on (which backfills run, and how many of
        their chunks failed or were cancelled: a chunk never comes back from those), in time
        proportional to the chunks, however many ask: filling_cache.computed counts.
        """
        ids = self.store.redis.zrevrange(self.keys.backfills(wf), 0, limit - 1)
        pipe = self.store.redis.pipeline(transaction=False)
        for backfill_id in ids:
            pipe.hgetall(self.keys.backfill(wf, backfill_id))
        running = []
        for backfill_id, record in zip(ids, pipe.execute()):
            counts = _counts(record) if record else {}
            if record and backfill.status_of(record.get("status", ""), counts) == backfill.RUNNING:
                lost = counts[backfill.ChunkStatus.FAILED] + counts[backfill.ChunkStatus.CANCELLED]
                running.append((backfill_id, record.get("created"), record.get("from"), record.get("to"), lost))
        return self.filling_cache.get(wf, tuple(running), lambda: self._read_filling(wf, [r[0] for r in running]))

    def _read_filling(self, wf: str, ids: list[str]) -> dict[str, list]:
        """Return {job: merged intervals} of the chunks of backfills ids not failed or cancelled."""
        pipe = self.store.redis.pipeline(transaction=False)
        for backfill_id in ids:
            pipe.hvals(self.keys.backfill_chunks(wf, backfill_id))
        spans: dict[str, list] = {}
        lost = (backfill.ChunkStatus.FAILED, backfill.ChunkStatus.CANCELLED)
        for texts in pipe.execute():
            for text in texts:
                chunk = json.loads(text)
                if chunk.get("status") not in lost:
                    spans.setdefault(chunk["job"], []).append(
                        [parse_time(chunk["from_date"]).timestamp(), parse_time(chunk["to_date"]).timestamp()])
        return {job: coverage.union(found, []) for job, found in spans.items()}

    # -- chunk changes -----------------------------------------------------------------

    def lease(self, wf: str, backfill_id: int, lease_seconds: float = backfill.DEFAULT_LEASE_SECONDS,
              actor: str = "") -> dict | None:
        """Lease the next chunk due (attempt + 1) for lease_seconds; None when none is due now."""
        lease_ms = max(1, round(lease_seconds * 1000))
        script_keys = (self.keys.workflow(wf), self.keys.backfill(wf, backfill_id), self.keys.backfill_chunks(wf, backfill_id),
                       self.keys.backfill_queue(wf, backfill_id), self.keys.backfill_events(wf, backfill_id), self.keys.pause_marker(wf),
                       self.keys.pause(wf), self.keys.events(wf))
        for _ in range(3):
            # 128 random bits: a close cannot be guessed from (chunk, attempt), two small numbers.
            token = secrets.token_hex(16)
            reply = self._run(self._lease, script_keys, (lease_ms, self.events_keep, actor, backfill_id, token))
            code = int(reply[0])
            if code == Reply.PAUSED:
                self.store.pausing.check(wf)  # raises Paused with the pause's message
                continue  # resumed in between
            break
        else:  # a pause marker without its record (a resume that failed half way): never loop on it
            raise Unavailable(f"workflow {wf!r}: its slot still holds a service pause marker that no pause record "
                       "explains (a resume that failed half way?): run `batchy resume` again", workflow=wf)
        if code == Reply.NO_WORKFLOW:
            raise self.store.committer.not_found(wf)
        if code == Reply.NO_BACKFILL:
            raise self._missing(wf, backfill_id)
        if code == Reply.NOTHING:
            return None
        return _lease_answer(wf, backfill_id, int(reply[1]), json.loads(reply[2]), _pairs(reply[3]))

    def renew(self, wf: str, backfill_id: int, number: int, attempt: int,
              lease_seconds: float = backfill.DEFAULT_LEASE_SECONDS, *, lease_token: str | None = None) -> dict:
        """Renew attempt's lease of chunk number: it now ends lease_seconds from now (a heartbeat).

        lease_token: the one the lease answered (WrongLeaseToken without it)."""
        lease_ms = max(1, round(lease_seconds * 1000))
        reply = self._run(self._renew, (self.keys.backfill(wf, backfill_id), self.keys.backfill_chunks(wf, backfill_id),
                                        self.keys.backfill_queue(wf, backfill_id)),
                          (number, attempt, lease_ms, lease_token or ""))
        chunk = self._checked(wf, backfill_id, number, attempt, reply, lease_token)
        return _lease_answer(wf, backfill_id, number, chunk, _pairs(reply[2]))

    def _checked(self, wf: str, backfill_id: int, number: int, attempt: int, reply: list,
                 lease_token: str | None = None) -> dict:
        """Return the chunk of a BACKFILL_FINISH or BACKFILL_RENEW reply, or raise the refusal it is."""
        code = int(reply[0])
        if code == Reply.NO_BACKFILL:
            raise self._missing(wf, backfill_id)
        if code == Reply.NO_CHUNK:
            raise InvalidParameter(f"backfill {backfill_id} of {wf!r} has no chunk {number}", parameter="chunk",
                                   workflow=wf, backfill_id=backfill_id)
        chunk = json.loads(reply[1])
        context = dict(workflow=wf, backfill_id=backfill_id, chunk=number, attempt=attempt,
                       chunk_status=chunk["status"], attempts=chunk["attempts"])
        if code == Reply.STALE_ATTEMPT:
            why = (f"attempt {attempt} was never leased" if attempt > chunk["attempts"] else
                   f"attempt {attempt} is over (it failed, or its lease ran out and the chunk was leased again), "
                   "so its outcome is not recorded")
            raise StaleAttempt(f"chunk {number} of backfill {backfill_id} is on attempt {chunk['attempts']} "
                               f"({chunk['status']}), not {attempt}: {why}", **context)
        if code == Reply.WRONG_TOKEN:
            problem = "without the lease_token" if not lease_token else "with a lease_token that is not the one"
            raise WrongLeaseToken(f"chunk {number} of backfill {backfill_id}, attempt {attempt}: called {problem} "
                                  "its lease answered: only the worker holding the lease may renew, close or fail "
                                  "it; nothing changed", **context)
        if code == Reply.NOT_LEASED:
            raise NotLeased(f"chunk {number} of backfill {backfill_id} is {chunk['status']}, not leased: attempt "
                            f"{attempt} ended already (or never started)", **context)
        return chunk

    def finish(self, wf: str, backfill_id: int, number: int, attempt: int, outcome: str, *,
               records_processed: int | None = None, message: str | None = None, actor: str = "",
               lease_token: str | None = None, attested: dict | None = None) -> dict:
        """End attempt of chunk number with outcome (success or failed); return the chunk and the progress.

        A success merges the chunk's window into its job's coverage ledger. lease_token: the
        one the lease answered (WrongLeaseToken without it). attested (watermark.attestation):
        the chunk's checksum and quality verdict; dq=fail leaves its window a hole (failed quality).
        """
        attested = attested or {}
        reply = self._run(self._finish, (self.keys.backfill(wf, backfill_id), self.keys.backfill_chunks(wf, backfill_id),
                                         self.keys.backfill_queue(wf, backfill_id), self.keys.backfill_events(wf, backfill_id),
                                         self.keys.events(wf)),
                          (number, attempt, outcome, "" if records_processed is None else records_processed,
                           message or "", self.events_keep, actor, backfill_id, lease_token or "",
                           attested.get("checksum") or "", attested.get("dq") or "", attested.get("dq_message") or ""))
        chunk = self._checked(wf, backfill_id, number, attempt, reply, lease_token)
        record = _pairs(reply[2])
        if outcome == backfill.ChunkStatus.SUCCESS:
            merged = self.store.mutate(wf, lambda state: plans.plan_backfill_coverage(
                state, chunk["job"], parse_time(chunk["from_date"]), parse_time(chunk["to_date"]),
                passed=chunk.get("dq") != "fail", records=chunk.get("records_processed")), actor=actor)
            if not merged.noop:
                self._run(self._note, (self.keys.backfill_events(wf, backfill_id), self.keys.events(wf)),
                          (self.events_keep, "backfill_coverage", actor, formats.dumps([chunk["job"]]),
                           f"chunk {number} {chunk['job']} [{chunk['from_date']}, {chunk['to_date']}): merged into "
                           "the coverage ledger" + (" as a quality failure" if chunk.get("dq") == "fail" else ""),
                           backfill_id, number, attempt))
        counts = _counts(record)
        return {"backfill_id": backfill_id, "workflow": wf,
                **backfill.render_chunk(number, chunk, _zone(record, chunk["job"])),
                "backfill_status": backfill.status_of(record.get("status", ""), counts),
                "progress": backfill.progress(counts, int(record["chunks"]))}

    def cancel(self, wf: str, backfill_id: int, actor: str = "") -> dict:
        """Cancel a backfill: pending chunks are cancelled; leased ones may still close."""
        record = self.store.redis.hgetall(self.keys.backfill(wf, backfill_id))
        reply = self._run(self._cancel, (self.keys.backfill(wf, backfill_id), self.keys.backfill_chunks(wf, backfill_id),
                                         self.keys.backfill_queue(wf, backfill_id), self.keys.events(wf)),
                          (self.events_keep, actor, backfill_id, record.get("jobs") or "[]"))
        if int(reply[0]) == Reply.NO_BACKFILL:
            raise self._missing(wf, backfill_id)
        record = _pairs(reply[2])
        return {**backfill.summary(record, _counts(record)), "cancelled_chunks": int(reply[1])}


def _lease_answer(wf: str, backfill_id: int, number: int, chunk: dict, record: dict[str, str]) -> dict:
    """Return what a lease (or its renewal) answers: the chunk's window, attempt and lease end."""
    shown = backfill.render_chunk(number, chunk, _zone(record, chunk["job"]))
    return {"backfill_id": backfill_id, "workflow": wf, "chunk": number, "job": chunk["job"],
            "from_date": chunk["from_date"], "to_date": chunk["to_date"], "attempt": chunk["attempts"],
            "max_attempts": int(record["max_attempts"]), "lease_until": shown["lease_until"],
            "lease_token": chunk.get("lease_token")}


def _zone(record: dict[str, str], job: str):
    return zone(json.loads(record.get("zones") or "{}").get(job) or "UTC")


def _created(reply: list) -> str:
    """Return the creation time BACKFILL_CREATE stored (the TIME it replied), as it wrote it."""
    return format_time(datetime.fromtimestamp(int(reply[1][0]), UTC))
