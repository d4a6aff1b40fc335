"""The only place Redis key names are built.

The workflow hash `<wf>` and the batch snapshots `<wf>-<batch_id>` are the storage
contract operators read with redis-cli; everything else Batchy keeps lives under
`batchy:`, which a workflow name can never reach (names have no colon).
"""
from __future__ import annotations

import functools
import hashlib

NAMESPACE = "batchy:"
WORKFLOWS = NAMESPACE + "workflows"  # set of loaded workflow names
BATCHES = NAMESPACE + "batches"  # zset of "<wf>-<batch_id>" scored by batch start (epoch s)
PAUSE = NAMESPACE + "pause"  # hash: the service-wide pause, if any
READY_PROBE = NAMESPACE + "ready-probe"  # string, written by /readyz and /metrics to prove Redis takes writes
CHANNEL_PREFIX = NAMESPACE + "changed:"
CHANNEL_PATTERN = CHANNEL_PREFIX + "*"

# Fields of the meta hash batchy:wf:<wf>.
VERSION = "version"  # "<count>-<token>", bumped by every commit (scripts.COMMIT)
LAST_BATCH_ID = "last_batch_id"
SETTINGS = "settings"  # the workflow's .batchy settings, JSON
COUNT_PREFIX = "count:"  # count:<action>: state changes of that kind
SUCCESS_PREFIX = "success:"  # success:<job>: JSON {batch_id, start, end} of its last success
COVERAGE_PREFIX = "coverage:"  # coverage:<job>: JSON [[start, end], ...], its successful windows merged
DIRTY_PREFIX = "dirty:"  # dirty:<job>: JSON [[start, end], ...], ranges invalidated since they were covered
QUALITY_PREFIX = "quality:"  # quality:<job>: JSON [[start, end], ...], windows whose last close said dq=fail
RECORDS_PREFIX = "records:"  # records:<job>: JSON [n or null, ...], rows of each coverage interval


def workflow(wf: str) -> str:
    """Hash of the current state: one field per job, each a JSON object."""
    return wf


def batch_prefix(wf: str) -> str:
    """Prefix of the batch snapshot keys (the commit script builds old ones from it)."""
    return wf + "-"


def batch(wf: str, batch_id: int | str) -> str:
    """Hash of one batch's snapshot, same shape as the workflow hash."""
    return f"{wf}-{batch_id}"


def meta(wf: str) -> str:
    """Hash of bookkeeping: version (bumped on every change), last_batch_id, config."""
    return f"{NAMESPACE}wf:{wf}"


def history(wf: str) -> str:
    """Zset of the workflow's batch ids, scored by batch id."""
    return f"{NAMESPACE}history:{wf}"


def events(wf: str) -> str:
    """Capped stream of audit events for the workflow."""
    return f"{NAMESPACE}events:{wf}"


def pause(wf: str) -> str:
    """Hash: the workflow's pause, if any."""
    return f"{NAMESPACE}pause:{wf}"


def turn(wf: str) -> str:
    """String, briefly: the writer whose commit to the workflow goes next (see scripts.COMMIT)."""
    return f"{NAMESPACE}turn:{wf}"


def idempotency(wf: str, key: str) -> str:
    """String: the batch id an open with this Idempotency-Key made (expires)."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]  # any text a client sends, one safe name
    return f"{NAMESPACE}idem:{wf}:{digest}"


def pause_history() -> str:
    """Capped stream of pause and resume events, service-wide and per workflow."""
    return f"{NAMESPACE}pause-history"


def channel(wf: str) -> str:
    """Pub/sub channel every state change of the workflow is announced on."""
    return f"{NAMESPACE}changed:{wf}"


def workflow_from_channel(name: str) -> str:
    """Return the workflow a channel name announces changes of."""
    return name[len(CHANNEL_PREFIX):]


def count_field(action: str) -> str:
    """Meta field counting the workflow's changes of one kind (open, close, load...)."""
    return COUNT_PREFIX + action


def success_field(job: str) -> str:
    """Meta field holding the job's last success."""
    return SUCCESS_PREFIX + job


def coverage_field(job: str) -> str:
    """Meta field holding the job's coverage ledger (coverage.py)."""
    return COVERAGE_PREFIX + job


def dirty_field(job: str) -> str:
    """Meta field holding the job's dirty ranges (invalidated, not covered again yet)."""
    return DIRTY_PREFIX + job


def quality_field(job: str) -> str:
    """Meta field holding the job's ranges whose last successful window failed its quality check."""
    return QUALITY_PREFIX + job


def records_field(job: str) -> str:
    """Meta field holding the rows of each interval of the job's coverage ledger."""
    return RECORDS_PREFIX + job


def prefixed(meta: dict[str, str], prefix: str) -> dict[str, str]:
    """Return {name: text} of the meta hash fields under prefix (a job, an action)."""
    n = len(prefix)
    return {k[n:]: v for k, v in meta.items() if k.startswith(prefix)}


def coverage_texts(meta: dict[str, str]) -> dict[str, str]:
    """Return {job: JSON text of its coverage ledger} of a meta hash."""
    n = len(COVERAGE_PREFIX)
    return {k[n:]: v for k, v in meta.items() if k.startswith(COVERAGE_PREFIX)}


def counts(meta: dict[str, str]) -> dict[str, int]:
    """Return {action: count} of a meta hash."""
    n = len(COUNT_PREFIX)
    return {k[n:]: int(v) for k, v in meta.items() if k.startswith(COUNT_PREFIX)}


def success_texts(meta: dict[str, str]) -> dict[str, str]:
    """Return {job: JSON text of its last success} of a meta hash."""
    n = len(SUCCESS_PREFIX)
    return {k[n:]: v for k, v in meta.items() if k.startswith(SUCCESS_PREFIX)}


@functools.lru_cache(maxsize=4096)
def commit_keys(wf: str) -> tuple[str, ...]:
    """Return the KEYS of scripts.COMMIT for wf, in its order."""
    return (workflow(wf), meta(wf), history(wf), BATCHES, events(wf), WORKFLOWS, PAUSE, pause(wf), turn(wf))


# -- backfills (storage/backfill.py): a past range reloaded in chunks, beside the watermark ----------

BACKFILL_COUNT_PREFIX = "count:"  # count:<status>: a backfill's chunks in that status


def backfills(wf: str) -> str:
    """Zset of the workflow's backfill ids, scored by id (ids are creation seconds, increasing)."""
    return f"{NAMESPACE}backfills:{wf}"


def backfill(wf: str, backfill_id: int | str) -> str:
    """Hash of one backfill: its range, jobs, step, max_attempts, status and chunk counts."""
    return f"{NAMESPACE}backfill:{wf}:{backfill_id}"


def backfill_chunks(wf: str, backfill_id: int | str) -> str:
    """Hash of a backfill's chunks: chunk number -> JSON of the chunk (window, status, attempts)."""
    return f"{NAMESPACE}backfill:{wf}:{backfill_id}:chunks"


def backfill_queue(wf: str, backfill_id: int | str) -> str:
    """Zset of the chunks a worker may lease: pending ones scored by number, leased ones by lease end (ms)."""
    return f"{NAMESPACE}backfill:{wf}:{backfill_id}:queue"


def backfill_events(wf: str, backfill_id: int | str) -> str:
    """Capped stream of a backfill's chunk events (lease, close, fail, expire, coverage), kept apart
    from the workflow's audit stream so chunk traffic never evicts it; ids ordered with it."""
    return f"{NAMESPACE}backfill:{wf}:{backfill_id}:events"


def backfill_count_field(status: str) -> str:
    """Field of the backfill hash counting its chunks in status."""
    return BACKFILL_COUNT_PREFIX + status


WEBHOOK_OUTBOX = NAMESPACE + "webhook-outbox"  # list of JSON events not yet delivered, newest first
WEBHOOK_INFLIGHT = NAMESPACE + "webhook-inflight"  # zset: events being posted -> deadline (ms, Redis' clock)
WEBHOOK_SENDING = NAMESPACE + "webhook-sending"  # list where versions before the in-flight zset kept one (drained)
WEBHOOK_LEADER = NAMESPACE + "webhook-leader"  # string, expiring: the process that checks and delivers


def webhook_seen(event_id: str) -> str:
    """String, expiring: an event already queued (each is announced once)."""
    return f"{NAMESPACE}webhook-seen:{event_id}"



def lag_episodes(wf: str) -> str:
    """Hash: job -> when its current coverage-lag episode began (announced once; deleted when it ends)."""
    return f"{NAMESPACE}lag-episodes:{wf}"

# -- OpenLineage (storage/lineage.py) -------------------------------------------------------------------

LINEAGE_OUTBOX = NAMESPACE + "lineage-outbox"  # list of run events not yet sent, newest first
LINEAGE_INFLIGHT = NAMESPACE + "lineage-inflight"  # zset: run events being sent -> deadline (ms, Redis' clock)
LINEAGE_SENDING = NAMESPACE + "lineage-sending"  # list, never written: the outbox's slot for an older layout
LINEAGE_LEADER = NAMESPACE + "lineage-leader"  # string, expiring: the process that collects and sends
LINEAGE_CURSORS = NAMESPACE + "lineage-cursors"  # hash: audit stream key -> last entry id queued; "since"
LINEAGE_SINCE = "since"  # field of LINEAGE_CURSORS: stream ids (ms) from which a stream with no cursor is read



def stream_owner(name: str) -> tuple[str, str | None] | None:
    """Return (workflow, backfill id or None) of an audit stream's key (events, backfill_events), else None."""
    events_prefix, backfill_prefix = f"{NAMESPACE}events:", f"{NAMESPACE}backfill:"
    if name.startswith(events_prefix):
        return name[len(events_prefix):], None
    if name.startswith(backfill_prefix) and name.endswith(":events"):
        wf, _, backfill_id = name[len(backfill_prefix):-len(":events")].rpartition(":")
        return (wf, backfill_id) if wf else None
    return None

# -- automatic backfills (storage/repair.py) ----------------------------------------------------------

REPAIR_LEADER = NAMESPACE + "repair-leader"  # string, expiring: the process that creates automatic backfills


def repair_lock(wf: str) -> str:
    """String, expiring: held while one process checks and repairs wf's holes (never two backfills of one range)."""
    return f"{NAMESPACE}repair:{wf}"
