"""A workflow's bookkeeping in its meta hash: the domain's values (rules/state.py) to fields and back.

Plans speak values (a Book of last batch id, settings, success marks, ledgers, counts,
and an audit event); this module alone turns them into the meta hash's fields and the
audit stream's entries, and builds the State a plan reads from what Redis returned.
"""
from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from datetime import datetime

from . import keys
from ..rules import coverage
from ..rules.formats import dumps
from ..rules.state import Book, State


def fields(book: Book) -> dict[str, str]:
    """Return the meta hash fields that write book."""
    out = {}
    if book.last_batch_id is not None:
        out[keys.LAST_BATCH_ID] = str(book.last_batch_id)
    if book.settings is not None:
        out[keys.SETTINGS] = dumps(book.settings)
    for action, count in book.counts.items():
        out[keys.count_field(action)] = str(count)
    # Each job's part of the bookkeeping, under its own field (keys.py's prefixes); most
    # changes (every open) write none.
    if not (book.marks or book.ledgers or book.dirty or book.failed or book.records):
        return out
    for part, prefix in ((book.marks, keys.SUCCESS_PREFIX), (book.ledgers, keys.COVERAGE_PREFIX),
                         (book.dirty, keys.DIRTY_PREFIX), (book.failed, keys.QUALITY_PREFIX),
                         (book.records, keys.RECORDS_PREFIX)):
        for job, value in part.items():
            out[prefix + job] = dumps(value)
    return out


def book_of(meta: dict[str, str]) -> Book:
    """Return the Book of a meta hash's fields (checked already: an export's, say); the version is left out."""
    book = Book()
    for field, text in meta.items():
        if field == keys.LAST_BATCH_ID:
            book.last_batch_id = int(text) if text else None
        elif field == keys.SETTINGS:
            book.settings = json.loads(text)
        elif field.startswith(keys.COUNT_PREFIX):
            book.counts[field[len(keys.COUNT_PREFIX):]] = int(text)
        elif field.startswith(keys.SUCCESS_PREFIX):
            book.marks[field[len(keys.SUCCESS_PREFIX):]] = json.loads(text)
        elif field.startswith(keys.COVERAGE_PREFIX):
            book.ledgers[field[len(keys.COVERAGE_PREFIX):]] = coverage.loads(text)
        elif field.startswith(keys.DIRTY_PREFIX):
            book.dirty[field[len(keys.DIRTY_PREFIX):]] = coverage.loads(text)
        elif field.startswith(keys.QUALITY_PREFIX):
            book.failed[field[len(keys.QUALITY_PREFIX):]] = coverage.loads(text)
        elif field.startswith(keys.RECORDS_PREFIX):
            records = json.loads(text)
            if isinstance(records, list):
                book.records[field[len(keys.RECORDS_PREFIX):]] = records
    return book


def state(wf: str, now: datetime, jobs: dict[str, dict], meta: dict[str, str], raw: dict[str, str],
          second: str = "", meta_key: str | None = None) -> State:
    """Return the State a plan reads: wf's jobs, and its meta hash as the values it holds."""
    # The meta hash itself, read through a Reader: nothing is decoded or copied until a plan asks.
    return State(wf, now, jobs, meta.get(keys.LAST_BATCH_ID), meta.get(keys.SETTINGS), raw,
                 meta.get(keys.VERSION, "0"), second, meta, _reader(meta_key or keys.meta(wf)))


class Reader:
    """How a State reads a workflow's meta hash (rules/state.Stored): one per meta key, shared."""

    __slots__ = ("meta_key",)

    def __init__(self, meta_key: str):
        self.meta_key = meta_key

    def ledger(self, meta: dict[str, str], job: str) -> str | None:
        return meta.get(keys.COVERAGE_PREFIX + job)

    def mark(self, meta: dict[str, str], job: str) -> str | None:
        return meta.get(keys.SUCCESS_PREFIX + job)

    def coverage(self, meta: dict[str, str], job: str) -> tuple[str | None, str | None, str | None, str | None]:
        return (meta.get(keys.COVERAGE_PREFIX + job), meta.get(keys.DIRTY_PREFIX + job),
                meta.get(keys.QUALITY_PREFIX + job), meta.get(keys.RECORDS_PREFIX + job))

    def counts(self, meta: dict[str, str]) -> Mapping[str, int]:
        return Counts(meta, keys.COUNT_PREFIX)

    def where(self, item: str, job: str | None) -> str:
        """Name where an item of the bookkeeping is kept, for a corrupt-state message."""
        return f"field {_FIELDS[item](job)!r} of {self.meta_key!r}"


@functools.lru_cache(maxsize=4096)
def _reader(meta_key: str) -> Reader:
    return Reader(meta_key)


class Counts(Mapping):
    """The count:<action> fields of a meta hash, by action: a value Batchy did not write counts as 0."""

    __slots__ = ("meta", "prefix")

    def __init__(self, meta: dict[str, str], prefix: str):
        self.meta, self.prefix = meta, prefix

    def __getitem__(self, name: str) -> int:
        text = self.meta[self.prefix + name]
        return int(text) if text.isdigit() else 0

    def get(self, name: str, default=None):
        text = self.meta.get(self.prefix + name)
        return default if text is None else (int(text) if text.isdigit() else 0)

    def __iter__(self):
        n = len(self.prefix)
        return (field[n:] for field in self.meta if field[:n] == self.prefix)

    def __len__(self) -> int:
        return sum(1 for _ in self)


_FIELDS = {"last_batch_id": lambda job: keys.LAST_BATCH_ID, "settings": lambda job: keys.SETTINGS,
           "coverage": keys.coverage_field, "dirty": keys.dirty_field, "quality": keys.quality_field}


def event_fields(audit: dict, actor: str) -> dict[str, str]:
    """Return an audit event as the entry of the workflow's audit stream."""
    return {
        "time": audit["time"],
        "action": audit["action"],
        "batch_id": audit["batch_id"],
        "actor": actor or "",
        "jobs": dumps(audit["jobs"]),
        "from_before": dumps(audit["from_before"]),
        "from_after": dumps(audit["from_after"]),
        **({"message": audit["message"]} if audit.get("message") else {}),
    }
