"""What a plan reads and returns: a State of a workflow, and the Change to commit, as values. Pure."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Mapping, NamedTuple, Protocol

from . import coverage, fields
from ..errors import CorruptState


# How a change writes a batch snapshot (the commit script applies each).
SNAPSHOT_NEW = "new"  # the snapshot must not exist yet; indexed with its start
SNAPSHOT_UPDATE = "update"  # written only if it still exists (retention may have dropped it)
SNAPSHOT_PUT = "put"  # written whole and indexed, replacing any (import)


class Stored(Protocol):
    """How a State reads the bookkeeping kept beside a workflow's jobs (storage/bookkeeping.Reader):
    each item as the text storage holds, or None; rules never learn where storage keeps it."""

    def ledger(self, meta: Mapping[str, str], job: str) -> str | None: ...

    def mark(self, meta: Mapping[str, str], job: str) -> str | None: ...

    def coverage(self, meta: Mapping[str, str], job: str) -> tuple[str | None, str | None, str | None, str | None]:
        """job's ledger, dirty ranges, quality failures and rows per interval (the last three: None, usually)."""

    def counts(self, meta: Mapping[str, str]) -> Mapping[str, int]:
        """How many changes of each kind (action -> count)."""

    def where(self, item: str, job: str | None) -> str:
        """Name where an item is kept, for a corrupt-state message."""


class State:
    """One consistent read of a workflow, at one second of Redis' clock.

    The bookkeeping beside the jobs comes as the text storage keeps (`stored`, read
    through `reader`, decoded here only when a plan needs it).
    """

    # Slots and no defaults to fill: a state is built for every change.
    __slots__ = ("wf", "now", "jobs", "last_batch_text", "settings_text", "raw", "version", "second", "stored",
                 "reader", "floor")

    def __init__(self, wf: str, now: datetime, jobs: dict[str, dict], last_batch_text: str | None,
                 settings_text: str | None, raw: dict[str, str], version: str, second: str,
                 stored: Mapping[str, str], reader: Stored):
        self.wf = wf
        self.now = now
        self.jobs = jobs
        self.last_batch_text = last_batch_text
        self.settings_text = settings_text
        self.raw = raw  # the jobs as stored (JSON text)
        self.version = version
        self.second = second  # the Redis TIME seconds `now` was made from, as the commit checks it
        self.stored = stored  # storage's own copy of the bookkeeping
        self.reader = reader
        self.floor = 0  # lowest batch id still free, raised when a snapshot key was taken

    @property
    def counts(self) -> Mapping[str, int]:
        """action -> how many changes of that kind."""
        return self.reader.counts(self.stored)

    @property
    def last_batch_id(self) -> int | None:
        value = self.last_batch_text
        if not value:
            return None
        try:
            return int(value)
        except ValueError:
            raise self.corrupt("last_batch_id", value) from None

    @property
    def settings(self) -> dict:
        text = self.settings_text or "{}"
        try:
            settings = _settings(text)
        except ValueError:
            settings = None
        if not isinstance(settings, dict):
            raise self.corrupt("settings", text)
        return settings

    def ledger(self, job: str, cached: bool = False) -> list:
        """Return job's coverage ledger (coverage.py), or raise CorruptState."""
        return self._ledger(self.reader.ledger(self.stored, job), job, cached)

    def _ledger(self, text: str | None, job: str, cached: bool) -> list:
        text = text or ""
        try:
            return coverage.loads_cached(text) if cached else coverage.loads(text)
        except ValueError:
            raise self.corrupt("coverage", text, job) from None

    def coverage(self, job: str, cached: bool = False) -> coverage.Ledger:
        """Return job's whole coverage (ledger, dirty ranges, quality failures, rows), or raise CorruptState."""
        ledger, dirty, failed, records = self.reader.coverage(self.stored, job)
        if not (dirty or failed or records):
            return coverage.Ledger(self._ledger(ledger, job, cached))  # the usual case: windows only, on every close
        parts = []
        for item, text in (("dirty", dirty), ("quality", failed)):
            try:
                parts.append(coverage.loads_cached(text) if text else [])
            except ValueError:
                raise self.corrupt(item, text, job) from None
        try:
            records = json.loads(records) if records else None
        except ValueError:
            records = None  # a count is a convenience: never worth refusing a close over
        if not isinstance(records, list):
            records = None
        return coverage.Ledger(self._ledger(ledger, job, cached), parts[0], parts[1], records)

    def mark(self, job: str) -> dict | None:
        """Return job's last success {batch_id, start, end}, or None (none, or unreadable)."""
        try:
            mark = json.loads(self.reader.mark(self.stored, job) or "")
        except ValueError:
            return None
        return mark if isinstance(mark, dict) else None

    def corrupt(self, item: str, value: str, job: str | None = None) -> CorruptState:
        if item in RECORDS:  # a reset keeps them
            return CorruptState.of_record(self.wf, self.reader.where(item, job), value, job)
        return CorruptState(
            f"workflow {self.wf!r}: {self.reader.where(item, job)} holds {value[:80]!r}, which Batchy "
            f"did not write; reload the workflow with load_cfg/{self.wf}?reset=true", workflow=self.wf)


# The bookkeeping that records what was loaded: a reset keeps it (a corrupt one is repaired by hand).
RECORDS = ("coverage", "dirty", "quality")


@dataclass
class Book:
    """A workflow's bookkeeping as values: each part a change writes (None or empty: unchanged)."""

    last_batch_id: int | None = None
    settings: dict | None = None
    marks: dict[str, dict] = field(default_factory=dict)  # job -> its last success {batch_id, start, end}
    ledgers: dict[str, list] = field(default_factory=dict)  # job -> its coverage ledger
    counts: dict[str, int] = field(default_factory=dict)  # action -> count (an import restores them)
    dirty: dict[str, list] = field(default_factory=dict)  # job -> its dirty ranges
    failed: dict[str, list] = field(default_factory=dict)  # job -> its quality failures
    records: dict[str, list] = field(default_factory=dict)  # job -> rows per ledger interval

    def __bool__(self) -> bool:
        return bool(self.last_batch_id is not None or self.settings is not None or self.marks or self.ledgers
                    or self.counts or self.dirty or self.failed or self.records)

    def put(self, job: str, new: coverage.Ledger, old: coverage.Ledger | None = None) -> None:
        """Write job's coverage new; of old (what is stored), only the parts that changed."""
        if old is not None and not (new.dirty or old.dirty or new.failed or old.failed) \
                and new.records is None and old.records is None:  # windows only (every close, usually)
            if new.windows != old.windows:
                self.ledgers[job] = new.windows
            return
        if old is None or new.windows != old.windows:
            self.ledgers[job] = new.windows
        if old is None or new.dirty != old.dirty:
            self.dirty[job] = new.dirty
        if old is None or new.failed != old.failed:
            self.failed[job] = new.failed
        known = old is not None and old.records is not None
        if new.records is not None and (not known or new.records != old.records) and (
                known or any(count is not None for count in new.records)):  # no rows ever said: nothing kept
            self.records[job] = new.records


class SnapshotWrite(NamedTuple):
    """One batch snapshot a change writes; mode is one of SNAPSHOT_*."""

    batch_id: int | str
    mode: str
    score: float  # the batch's start (epoch seconds), for the batches index
    jobs: dict[str, dict]


@dataclass
class Change:
    """What one commit writes: values only; storage turns them into keys, JSON and script arguments."""

    action: str  # open, close, fail, load, reset, set, rewind, import, remove: the audit and count name
    writes: dict[str, dict] = field(default_factory=dict)  # jobs written to the workflow's state
    replace: bool = False  # the workflow's jobs are replaced by writes (load, import, remove)
    book: Book = field(default_factory=Book)
    snapshots: list[SnapshotWrite] = field(default_factory=list)
    batch_id: int | None = None
    check_pause: bool = False
    audit: dict | None = None  # the audit event (plans.audit_event), set on every change to commit
    purge: bool = False  # a removal that deletes the history too
    # Set by commit: every job after the change, and once committed the JSON text
    # stored for each (answers are built from it without encoding the jobs again).
    after: dict[str, dict] = field(default_factory=dict)
    after_text: dict[str, str] | None = None
    # Nothing to write: the call repeats one already applied (a retried close).
    noop: bool = False
    idempotency_key: str | None = None  # an open's Idempotency-Key
    reason: str = ""  # why, as the operator said it (an invalidation): the audit event's message


@functools.lru_cache(maxsize=1024)
def _settings(text: str) -> dict:
    """Return a workflow's settings from their JSON text (the same text on every open).

    Shared between calls: read-only, as the plans that read it are pure. Settings a hand edit
    broke (fields.py's checks) are a ValueError: the caller's CorruptState.
    """
    settings = json.loads(text)
    if isinstance(settings, dict):
        problem = fields.stored_problem(settings, fields.STORED_WORKFLOW_CHECKS)
        if problem is not None:
            raise ValueError(problem)
    return settings
