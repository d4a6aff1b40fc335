"""What a plan reads and returns: a State of a workflow, and the Change to commit. Pure."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from . import keys
from .errors import CorruptState


@dataclass
class State:
    """One consistent read of a workflow, at one second of Redis' clock."""

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
        value = self.meta.get(keys.LAST_BATCH_ID)
        if not value:
            return None
        try:
            return int(value)
        except ValueError:
            raise self.corrupt(keys.LAST_BATCH_ID, value) from None

    @property
    def settings(self) -> dict:
        text = self.meta.get(keys.SETTINGS) or "{}"
        try:
            settings = _settings(text)
        except ValueError:
            settings = None
        if not isinstance(settings, dict):
            raise self.corrupt(keys.SETTINGS, text)
        return settings

    def corrupt(self, field: str, value: str) -> CorruptState:
        return CorruptState(
            f"workflow {self.wf!r}: field {field!r} of {keys.meta(self.wf)!r} holds {value[:80]!r}, which Batchy "
            f"did not write; reload the workflow with load_cfg/{self.wf}?reset=true", workflow=self.wf)


class SnapshotWrite(NamedTuple):
    """One batch snapshot a change writes; mode is one of scripts.SNAPSHOT_*."""

    batch_id: int | str
    mode: str
    score: float  # the batch's start (epoch seconds), for the batchy:batches index
    jobs: dict[str, dict]


@dataclass
class Change:
    """What one commit writes; see scripts.COMMIT for how each part is applied."""

    action: str  # open, close, fail, load, reset, set, rewind, import: the audit and count name
    writes: dict[str, dict] = field(default_factory=dict)  # jobs written to the workflow hash
    replace: bool = False  # the workflow hash is replaced by writes (load, import)
    meta: dict[str, str] = field(default_factory=dict)
    snapshots: list[SnapshotWrite] = field(default_factory=list)
    batch_id: int | None = None
    check_pause: bool = False
    # Set by commit: every job after the change, and once committed the JSON text
    # stored for each (answers are built from it without encoding the jobs again).
    after: dict[str, dict] = field(default_factory=dict)
    after_text: dict[str, str] | None = None
    # Nothing to write: the call repeats one already applied (a retried close).
    noop: bool = False
    idempotency_key: str | None = None  # an open's Idempotency-Key (scripts.COMMIT, KEYS[10])
    # False: no event in the workflow's audit stream (a backfill chunk's coverage merge: its
    # event goes to the backfill's chunk event stream, backfill_scripts.BACKFILL_NOTE).
    audited: bool = True


@functools.lru_cache(maxsize=1024)
def _settings(text: str) -> dict:
    """Return a workflow's settings from their JSON text (the same text on every open).

    Shared between calls: read-only, as the plans that read it are pure.
    """
    return json.loads(text)
