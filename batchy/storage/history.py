"""Reading what happened: batch snapshots, the history index, search, audit, most recent.

Reads only; every write goes through commit.py.
"""
from __future__ import annotations

import heapq
import itertools
import json
from datetime import datetime
from typing import Callable

import redis

from ..rules import coverage as coverage_mod, lateness
from . import keys
from ..errors import BatchNotFound, CorruptState, InvalidParameter, JobNotFound, WorkflowNotFound
from ..rules.health import loaded_through
from ..rules.jobs import decode, readable_mark, summarize_batch
from ..rules.times import UTC, format_time, in_zone, job_zone, parse_time


# An answer of /history stops past this many bytes of snapshots, and says where to go on.
MAX_ANSWER_BYTES = 2 * 1024 * 1024
HISTORY_CHUNK = 10  # snapshots read per round trip


class History:
    """Batches, search and audit events of the workflows in one Redis."""

    def __init__(self, client: redis.Redis, not_found: Callable[[str], WorkflowNotFound],
                 style: keys.KeyStyle = keys.CLASSIC):
        self.keys = style
        self.redis = client
        self.not_found = not_found

    def raw_batch(self, wf: str, batch_id: int) -> dict[str, str]:
        """Return the snapshot of one batch as stored, {job: JSON text}, in name order."""
        raw = self.redis.hgetall(self.keys.batch(wf, batch_id))
        if not raw:
            raise BatchNotFound(f"workflow {wf!r} has no batch {batch_id} (never opened, or past retention)",
                                workflow=wf, batch_id=batch_id)
        return dict(sorted(raw.items()))

    def history(self, wf: str, *, limit: int = 50, before: int | None = None,
                max_bytes: int = MAX_ANSWER_BYTES) -> tuple[list[dict], bool]:
        """Return wf's batches newest first, each summarized, and whether more are older.

        An answer stops at limit batches or past max_bytes of snapshots, whichever comes
        first (a batch of 10,000 jobs is megabytes), with at least one batch.
        """
        top = f"({before}" if before is not None else "+inf"
        ids = self.redis.zrevrangebyscore(self.keys.history(wf), top, "-inf", start=0, num=limit)
        if not ids and not self.redis.exists(self.keys.workflow(wf)):
            raise self.not_found(wf)
        entries: list[dict] = []
        size = 0
        for start in range(0, len(ids), HISTORY_CHUNK):
            chunk = ids[start:start + HISTORY_CHUNK]
            pipe = self.redis.pipeline(transaction=False)
            for batch_id in chunk:
                pipe.hgetall(self.keys.batch(wf, batch_id))
            for batch_id, raw in zip(chunk, pipe.execute()):
                if not raw:  # retention may remove a snapshot between the two reads
                    continue
                if entries and size > max_bytes:
                    return entries, True
                size += sum(len(k) + len(v) for k, v in raw.items())
                jobs = decode(raw, wf, self.keys.batch(wf, batch_id), snapshot=True)
                entries.append(summarize_batch(int(batch_id), jobs))
        return entries, len(ids) == limit

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
        merged: list[str] = []  # on a cluster: every workflow's index in range, read once a call
        while len(found) < limit and scanned < scan_limit:
            members = self._indexed(low, high, offset + scanned, chunk, workflow, merged)
            if not members:
                return found, None
            pipe = self.redis.pipeline(transaction=False)
            for member in members:
                pipe.hgetall(member)
            for member, raw in zip(members, pipe.execute()):
                scanned += 1
                wf, batch_id = self.keys.batch_id_of(member)
                if not raw or (workflow and wf != workflow):
                    continue
                jobs = decode(raw, wf, member, snapshot=True, lenient=True)  # one bad key must not end a search
                if not jobs:
                    continue
                entry = summarize_batch(int(batch_id), jobs)
                if status and entry["status"] != status:
                    continue
                found.append({"workflow": wf, **entry})
                if len(found) == limit:
                    break
            if len(members) < chunk and len(found) < limit:
                return found, None
        return found, offset + scanned

    def _indexed(self, low, high, start: int, num: int, workflow: str | None, merged: list[str]) -> list[str]:
        """Return num batch keys from start of the batches index by start time (score, then name).

        Classic style: one ZRANGEBYSCORE of batchy:batches. Cluster style: each workflow has its
        own index in its own slot, so the ranges of the workflows asked about are read (one
        pipeline, routed per node) and merged in the same order.
        """
        if not self.keys.cluster:
            return self.redis.zrangebyscore(self.keys.BATCHES, low, high, start=start, num=num)
        if not merged:
            names = [workflow] if workflow else sorted(self.redis.smembers(self.keys.WORKFLOWS))
            pipe = self.redis.pipeline(transaction=False)
            for wf in names:
                pipe.zrangebyscore(self.keys.batches(wf), low, high, withscores=True)
            entries = sorted((score, member) for found in pipe.execute() for member, score in found)
            merged += [member for _score, member in entries] or [""]  # [""]: read, none found
        return [member for member in merged[start:start + num] if member]

    def events(self, wf: str, *, limit: int = 100, before: str | None = None) -> list[dict]:
        """Return wf's audit events newest first: its own stream merged with its backfills' chunk
        event streams (their ids share one order: backfill_lua.chunk_audit)."""
        top = f"({before}" if before else "+"
        streams = [self.keys.events(wf)] + [self.keys.backfill_events(wf, backfill_id)
                                       for backfill_id in self.redis.zrange(self.keys.backfills(wf), 0, -1)]
        pipe = self.redis.pipeline(transaction=False)
        for stream in streams:
            pipe.xrevrange(stream, top, "-", count=limit)
        try:
            replies = pipe.execute()
        except redis.ResponseError as exc:
            raise InvalidParameter(f"before must be an event id such as 1700000000000-0 ({exc})",
                                   parameter="before") from None
        entries = heapq.nlargest(limit, itertools.chain.from_iterable(replies), key=lambda e: _event_order(e[0]))
        if not entries and not self.redis.exists(self.keys.workflow(wf)):
            raise self.not_found(wf)
        result = []
        for event_id, fields in entries:
            event = {"id": event_id, **fields}
            for name in ("jobs", "from_before", "from_after", "runs"):
                if name in event:
                    event[name] = json.loads(event[name])
            result.append(event)
        return result

    def most_recent(self, wf: str, job: str | None = None) -> dict:
        """Return the batch_start of wf's (or job's) last successful batch.

        For a whole workflow that is the oldest of its jobs' last successes
        (health.loaded_through). None if some job never succeeded.
        """
        pipe = self.redis.pipeline(transaction=True)
        pipe.hkeys(self.keys.workflow(wf))
        pipe.hgetall(self.keys.meta(wf))
        job_names, meta = pipe.execute()
        if not job_names:
            raise self.not_found(wf)
        if job is not None and job not in job_names:
            raise JobNotFound(f"workflow {wf!r} has no job {job!r}", workflow=wf, job=job)
        marks = success_marks(meta, wf, self.keys.meta(wf))
        names = [job] if job is not None else sorted(job_names)
        mark = loaded_through([marks.get(name) for name in names])
        start = mark["start"] if mark else None
        return {
            "workflow": wf,
            "job": job,
            "most_recent": start,
            "timestamp": int(parse_time(start).timestamp()) if start else None,
            "batch_id": mark["batch_id"] if mark else None,
            "jobs": {name: marks.get(name) for name in names},
        }

    def gate_state(self, wf: str, lenient: bool = False) -> tuple[dict[str, dict], dict[str, coverage_mod.Ledger],
                                                                  dict]:
        """Return wf's jobs, their coverage (coverage.Ledger) and its settings, in one atomic read."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hgetall(self.keys.workflow(wf))
        pipe.hgetall(self.keys.meta(wf))
        raw, meta = pipe.execute()
        if not raw:
            raise self.not_found(wf)
        return decode(raw, wf, lenient=lenient), ledgers_of(wf, meta, self.keys.meta(wf)), _settings(meta)

    def coverage(self, wf: str, job: str | None = None, since: datetime | None = None,
                 until: datetime | None = None) -> dict[str, dict]:
        """Return {job: {"covered", "holes", "dirty", "failed_quality", "generation"}}, times in the job's zone.

        Holes lie between the job's first covered start (or since) and its latest covered
        end (or until): time that no successful, passing window covers now (dirty ranges and
        quality failures among them). since and until without an offset are wall times in
        each job's zone.
        """
        jobs, ledgers, _ = self.gate_state(wf, lenient=True)
        if job is not None and job not in jobs:
            raise JobNotFound(f"workflow {wf!r} has no job {job!r}", workflow=wf, job=job)
        result = {}
        for name in [job] if job is not None else sorted(jobs):
            ledger = ledgers.get(name) or coverage_mod.Ledger([])
            tz = job_zone(jobs[name])
            start = in_zone(since, tz).timestamp() if since is not None else None
            end = in_zone(until, tz).timestamp() if until is not None else None
            if start is not None and end is not None and end <= start:
                raise InvalidParameter("to must be later than from", parameter="to")
            result[name] = {
                "covered": _render(coverage_mod.clip(ledger.effective, start, end), tz),
                "holes": _render(ledger.holes(start, end), tz),
                "dirty": _render(coverage_mod.clip(ledger.dirty, start, end), tz),
                "failed_quality": _render(coverage_mod.clip(ledger.failed, start, end), tz),
                "generation": jobs[name].get("generation") or 0,
            }
            if ledger.records is not None and len(ledger.records) == len(ledger.windows):
                # The rows each merged interval of successful windows holds (null: not known).
                result[name]["records"] = [[*_render([window], tz)[0], count]
                                           for window, count in zip(ledger.windows, ledger.records)
                                           if coverage_mod.clip([window], start, end)]
        return result

    def overview(self, names: list[str]) -> dict[str, dict]:
        """Return {wf: {"jobs": {...}, "settings": {...}, "counts": {action: n}, "last_batch_id"}}.

        One pipelined round trip for all workflows (dashboard, metrics).
        """
        pipe = self.redis.pipeline(transaction=False)
        for wf in names:
            pipe.hgetall(self.keys.workflow(wf))
            pipe.hgetall(self.keys.meta(wf))
        replies = pipe.execute()
        result = {}
        for wf, raw, meta in zip(names, replies[::2], replies[1::2]):
            if not raw:
                continue
            try:
                jobs = decode(raw, wf)
                marks = success_marks(meta, wf, self.keys.meta(wf))
                last = int(meta[self.keys.LAST_BATCH_ID]) if meta.get(self.keys.LAST_BATCH_ID) else None
            except (CorruptState, ValueError) as exc:
                # One broken workflow must not hide the others from the dashboard and metrics.
                message = exc.message if isinstance(exc, CorruptState) else f"workflow {wf!r}: bad meta: {exc}"
                result[wf] = {"jobs": {}, "settings": {}, "counts": {}, "last_batch_id": None, "error": message}
                continue
            try:
                found = ledgers_of(wf, meta, self.keys.meta(wf))
            except CorruptState:
                found = None
            texts = self.keys.coverage_texts(meta)
            for job in texts:
                if job in jobs:
                    if found is None:
                        jobs[job]["coverage_holes"] = None
                        continue
                    ledger = found[job]
                    jobs[job]["coverage_holes"] = len(ledger.holes())
                    # a dirty range or a quality failure stops the unbroken coverage as a hole does
                    first = ledger.windows[0][0] if ledger.windows else None
                    jobs[job]["coverage_through"] = lateness.covered_through(ledger.effective, first)
            for job in jobs.keys() - texts.keys():  # nothing covered yet: behind since its first from_date
                jobs[job]["coverage_through"] = _epoch_or_none(jobs[job].get("from_date"))
            for job, mark in marks.items():
                if job in jobs and isinstance(mark, dict):
                    jobs[job].update(last_success_start=mark.get("start"), last_success_end=mark.get("end"))
            result[wf] = {
                "jobs": jobs,
                "settings": _settings(meta),
                "counts": _counts(meta),
                "last_batch_id": last,
            }
            problem = lateness.setting_problem(jobs, result[wf]["settings"])
            if problem:  # shown, and counted as corrupt, for this workflow only; its jobs stay on view
                result[wf]["error"] = f"workflow {wf!r}: {problem}"
        return result


def _event_order(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def success_marks(meta: dict[str, str], wf: str, meta_key: str) -> dict[str, dict]:
    """Return {job: {batch_id, start, end}} of each job's last success in a meta hash, or raise
    CorruptState naming the first one a hand edit broke."""
    marks = {}
    for job, text in keys.success_texts(meta).items():
        try:
            mark = json.loads(text)
        except ValueError:
            mark = None
        if not readable_mark(mark):
            raise CorruptState.of_record(wf, f"last success {keys.success_field(job)!r} of {meta_key!r}", text, job)
        marks[job] = mark
    return marks


def _settings(meta: dict[str, str]) -> dict:
    try:
        settings = json.loads(meta.get(keys.SETTINGS) or "{}")
    except ValueError:
        return {}
    return settings if isinstance(settings, dict) else {}


def _counts(meta: dict[str, str]) -> dict[str, int]:
    try:
        return keys.counts(meta)
    except ValueError:
        return {}


def _epoch_or_none(text) -> float | None:
    try:
        return parse_time(text).timestamp() if isinstance(text, str) and text else None
    except (ValueError, InvalidParameter):
        return None


def ledgers_of(wf: str, meta: dict[str, str], meta_key: str | None = None) -> dict[str, coverage_mod.Ledger]:
    """Return {job: its coverage} of a meta hash, or raise CorruptState naming the field."""
    parts = {}
    for item, prefix in (("coverage ledger", keys.COVERAGE_PREFIX), ("dirty ranges", keys.DIRTY_PREFIX),
                         ("quality failures", keys.QUALITY_PREFIX)):
        for name, text in keys.prefixed(meta, prefix).items():
            try:
                parts.setdefault(name, {})[prefix] = coverage_mod.loads_cached(text)
            except ValueError:
                raise CorruptState.of_record(wf, f"{item} {prefix + name!r} of {meta_key or keys.meta(wf)!r}", text,
                                             name) from None
    result = {}
    for name, found in parts.items():
        records = None
        text = meta.get(keys.records_field(name))
        if text:
            try:
                records = json.loads(text)
            except ValueError:
                pass
        result[name] = coverage_mod.Ledger(found.get(keys.COVERAGE_PREFIX, []), found.get(keys.DIRTY_PREFIX, []),
                                           found.get(keys.QUALITY_PREFIX, []),
                                           records if isinstance(records, list) else None)
    return result


def _render(intervals: list, tz) -> list[list[str]]:
    return [[format_time(_moment(low), tz), format_time(_moment(high), tz)] for low, high in intervals]


def _moment(epoch: float):
    return datetime.fromtimestamp(epoch, UTC)
