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
# count:import, there once an import has written the workflow (an import only ever adds to it):
# only an import can leave a final line under a job still open, so a workflow without it has
# its snapshot updates written without reading the lines first (scripts.COMMIT's mode "amend").
IMPORT_COUNT = COUNT_PREFIX + "import"


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


# -- key styles: classic (the names above) and cluster (every workflow's keys in one hash slot) -------

SLOTS = 16384


def key_slot(key: str) -> int:
    """Return the Redis Cluster hash slot of key (CRC16 of its hash tag, or of the whole key)."""
    from redis.crc import key_slot as _slot  # redis-py's own: the same answer the cluster gives

    return _slot(key.encode())


@functools.lru_cache(maxsize=1)
def _slot_tags() -> tuple[str, ...]:
    """Return, for every slot, the shortest decimal text whose hash tag lands in that slot."""
    from binascii import crc_hqx

    tags: list[str | None] = [None] * SLOTS
    missing, i = SLOTS, 0
    while missing:
        text = str(i)
        slot = crc_hqx(text.encode(), 0) % SLOTS
        if tags[slot] is None:
            tags[slot] = text
            missing -= 1
        i += 1
    return tuple(tags)  # type: ignore[arg-type]


_PER_WORKFLOW = ("workflow", "batch_prefix", "batch", "meta", "history", "events", "pause", "turn", "idempotency",
                 "channel", "workflow_from_channel", "backfills", "backfill", "backfill_chunks", "backfill_queue",
                 "backfill_events", "repair_lock", "webhook_seen")


class KeyStyle:
    """The key names of one store, chosen once when it is made.

    classic: the names above, byte for byte (one Redis, or Sentinel).
    cluster: the same shapes with the workflow name as a hash tag - `{wf1}`,
    `{wf1}-<batch_id>`, `batchy:wf:{wf1}` - so every key of one workflow lives in one
    hash slot and each commit stays one atomic script. Service-wide keys are never a
    commit script's KEYS there: the batches index is per workflow (`batchy:batches:{wf1}`),
    `batchy:workflows` is kept around the commit (store.py), the service pause is copied
    into a marker per slot (pause_marker), and the webhook queues share the tag `{webhooks}`.
    """

    # Meta fields do not depend on the style.
    VERSION, LAST_BATCH_ID, SETTINGS = VERSION, LAST_BATCH_ID, SETTINGS
    COUNT_PREFIX, SUCCESS_PREFIX, COVERAGE_PREFIX = COUNT_PREFIX, SUCCESS_PREFIX, COVERAGE_PREFIX
    IMPORT_COUNT = IMPORT_COUNT
    BACKFILL_COUNT_PREFIX = BACKFILL_COUNT_PREFIX
    WORKFLOWS, PAUSE, READY_PROBE, BATCHES = WORKFLOWS, PAUSE, READY_PROBE, BATCHES
    WEBHOOK_LEADER, REPAIR_LEADER = WEBHOOK_LEADER, REPAIR_LEADER
    count_field = staticmethod(count_field)
    success_field = staticmethod(success_field)
    coverage_field = staticmethod(coverage_field)
    coverage_texts = staticmethod(coverage_texts)
    counts = staticmethod(counts)
    success_texts = staticmethod(success_texts)
    backfill_count_field = staticmethod(backfill_count_field)
    pause_history = staticmethod(pause_history)

    def __init__(self, cluster: bool = False):
        self.cluster = cluster
        self.name = "cluster" if cluster else "classic"
        if cluster:
            self.WEBHOOK_OUTBOX = NAMESPACE + "{webhooks}:outbox"
            self.WEBHOOK_INFLIGHT = NAMESPACE + "{webhooks}:inflight"
            self.WEBHOOK_SENDING = NAMESPACE + "{webhooks}:sending"
            # the lineage outbox's scripts and the transaction that queues runs and moves the
            # cursors touch these together: one tag
            self.LINEAGE_OUTBOX = NAMESPACE + "{lineage}:outbox"
            self.LINEAGE_INFLIGHT = NAMESPACE + "{lineage}:inflight"
            self.LINEAGE_SENDING = NAMESPACE + "{lineage}:sending"
            self.LINEAGE_CURSORS = NAMESPACE + "{lineage}:cursors"
        else:
            self.WEBHOOK_OUTBOX, self.WEBHOOK_INFLIGHT, self.WEBHOOK_SENDING = (
                WEBHOOK_OUTBOX, WEBHOOK_INFLIGHT, WEBHOOK_SENDING)
            self.LINEAGE_OUTBOX, self.LINEAGE_INFLIGHT, self.LINEAGE_SENDING, self.LINEAGE_CURSORS = (
                LINEAGE_OUTBOX, LINEAGE_INFLIGHT, LINEAGE_SENDING, LINEAGE_CURSORS)
        self.commit_keys = functools.lru_cache(maxsize=4096)(self._commit_keys)
        if not cluster:
            # Classic: the module's own functions, bound as they are - the same names byte for
            # byte, and no extra call on the hot path.
            g = globals()
            for name in _PER_WORKFLOW:
                setattr(self, name, g[name])
            self.commit_keys = commit_keys

    def __repr__(self) -> str:
        return f"KeyStyle({self.name})"

    def __getattr__(self, name: str):
        """Any other name of this module through the style: constants and field helpers as they
        are; a key function of a workflow (its first parameter is `wf`) with the workflow's
        name tagged on a cluster. A key added to the module is thus in both styles at once;
        a service-wide key a script uses with others needs a shared tag here by hand
        (as the webhook queues have)."""
        import inspect

        found = globals().get(name)
        if found is None or name.startswith("_"):
            raise AttributeError(name)
        if self.cluster and inspect.isfunction(found):
            params = list(inspect.signature(found).parameters)
            if params and params[0] == "wf":
                def tagged(wf, *args, _key=found):
                    return _key(self.tag(wf), *args)
                setattr(self, name, tagged)
                return tagged
        return found

    def stream_owner(self, name: str) -> tuple[str, str | None] | None:
        """Return (workflow, backfill id or None) of an audit stream's key in this style, else None."""
        found = stream_owner(name)
        if found is None or not self.cluster:
            return found
        wf = self.untag(found[0])
        return None if wf == found[0] else (wf, found[1])

    def tag(self, wf: str) -> str:
        """Return how wf appears in its key names: itself, or `{wf}` on a cluster."""
        return "{" + wf + "}" if self.cluster else wf

    def untag(self, name: str) -> str:
        """Return the workflow of a tagged name (the inverse of tag)."""
        return name[1:-1] if self.cluster and name.startswith("{") and name.endswith("}") else name

    def workflow(self, wf: str) -> str:
        return workflow(self.tag(wf))

    def batch_prefix(self, wf: str) -> str:
        return batch_prefix(self.tag(wf))

    def batch(self, wf: str, batch_id: int | str) -> str:
        return batch(self.tag(wf), batch_id)

    def meta(self, wf: str) -> str:
        return meta(self.tag(wf))

    def history(self, wf: str) -> str:
        return history(self.tag(wf))

    def events(self, wf: str) -> str:
        return events(self.tag(wf))

    def pause(self, wf: str) -> str:
        return pause(self.tag(wf))

    def turn(self, wf: str) -> str:
        return turn(self.tag(wf))

    def idempotency(self, wf: str, key: str) -> str:
        return idempotency(self.tag(wf), key)

    def channel(self, wf: str) -> str:
        return channel(self.tag(wf))

    def workflow_from_channel(self, name: str) -> str:
        return self.untag(workflow_from_channel(name))

    def backfills(self, wf: str) -> str:
        return backfills(self.tag(wf))

    def backfill(self, wf: str, backfill_id: int | str) -> str:
        return backfill(self.tag(wf), backfill_id)

    def backfill_chunks(self, wf: str, backfill_id: int | str) -> str:
        return backfill_chunks(self.tag(wf), backfill_id)

    def backfill_queue(self, wf: str, backfill_id: int | str) -> str:
        return backfill_queue(self.tag(wf), backfill_id)

    def backfill_events(self, wf: str, backfill_id: int | str) -> str:
        return backfill_events(self.tag(wf), backfill_id)

    def repair_lock(self, wf: str) -> str:
        return repair_lock(self.tag(wf))

    def webhook_seen(self, event_id: str) -> str:
        return f"{NAMESPACE}{{webhooks}}:seen:{event_id}" if self.cluster else webhook_seen(event_id)

    def batches(self, wf: str) -> str:
        """The index of wf's batch snapshots by start: the service-wide zset, or wf's own on a cluster."""
        return f"{NAMESPACE}batches:{self.tag(wf)}" if self.cluster else BATCHES

    def pause_marker(self, wf: str) -> str:
        """The service pause as wf's commit sees it: batchy:pause, or the marker of wf's slot on a cluster."""
        if not self.cluster:
            return PAUSE
        return f"{NAMESPACE}pause-slot:{{{_slot_tags()[key_slot(self.workflow(wf))]}}}"

    def pause_markers(self) -> list[str]:
        """Every slot's service pause marker (cluster style only)."""
        return [f"{NAMESPACE}pause-slot:{{{tag}}}" for tag in _slot_tags()]

    def _commit_keys(self, wf: str) -> tuple[str, ...]:
        """Return the KEYS of scripts.COMMIT for wf, in its order (all in wf's slot on a cluster;
        KEYS[6] is unused there: the workflows index is kept around the commit)."""
        if not self.cluster:
            return commit_keys(wf)
        return (self.workflow(wf), self.meta(wf), self.history(wf), self.batches(wf), self.events(wf),
                self.workflow(wf), self.pause_marker(wf), self.pause(wf), self.turn(wf))

    def batch_id_of(self, member: str) -> tuple[str, str]:
        """Return (workflow, batch id) of a batches-index member `<wf>-<id>` (tagged on a cluster)."""
        wf, _, batch_id = member.rpartition("-")
        return self.untag(wf), batch_id


CLASSIC = KeyStyle(False)
CLUSTER = KeyStyle(True)


def style(cluster: bool) -> KeyStyle:
    """Return the key style of a store: CLUSTER or CLASSIC."""
    return CLUSTER if cluster else CLASSIC
