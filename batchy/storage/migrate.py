"""Moving a deployment's keys between the classic and the cluster style (batchy migrate-keys).

Every key of a workflow is copied to its name in the other style (DUMP, then RESTORE with
its time to live, REPLACE) and the old one deleted; the service-wide indexes are rebuilt in
the target's shape (the batches index merged or split, the pause markers written or
dropped, the webhook queues renamed). Each step can be repeated: a key that still exists
under its old name is the truth, so a migration stopped half way is finished by running
it again. It refuses to run while a service writes (writes_seen).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis

from . import keys
from .connections import is_cluster


def scan(client, pattern: str):
    """Yield the keys matching pattern, on every primary of a cluster."""
    if is_cluster(client):
        return client.scan_iter(match=pattern, count=1000, target_nodes=redis.RedisCluster.PRIMARIES)
    return client.scan_iter(match=pattern, count=1000)


def workflows_in(client, style: keys.KeyStyle) -> list[str]:
    """Return the workflows stored in style: its index, and every meta hash a SCAN finds."""
    prefix = keys.meta("")
    names = set()
    for key in scan(client, style.meta("*")):
        name = key[len(prefix):]
        if style.cluster and name.startswith("{") and name.endswith("}"):
            names.add(name[1:-1])
        elif not style.cluster and "{" not in name:
            names.add(name)
    if style.cluster:  # the index is shared by both styles; only names whose keys are there count
        return sorted(names)
    return sorted(names | {wf for wf in client.smembers(keys.WORKFLOWS)
                           if client.exists(style.workflow(wf))})


@dataclass
class Plan:
    """What a migration moves: (old name, new name) of every key, and the index entries."""

    to: str
    workflows: list[str] = field(default_factory=list)
    moves: list[tuple[str, str]] = field(default_factory=list)
    batches: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # wf -> [(old member, score)]
    paused: bool = False
    cursors: dict[str, str] = field(default_factory=dict)  # the lineage cursors, their streams named in the target style

    def summary(self) -> dict:
        return {"to": self.to, "workflows": len(self.workflows), "keys": len(self.moves),
                "batches_indexed": sum(len(v) for v in self.batches.values()), "service_paused": self.paused}


class Migration:
    """Move every Batchy key of one Redis (or cluster) to the key style `to`."""

    def __init__(self, client, to: keys.KeyStyle):
        self.redis = client
        self.to = to
        self.src = keys.style(not to.cluster)

    # -- is anything writing? -----------------------------------------------------------

    def fingerprint(self) -> dict:
        """What every write changes: each workflow's version and last audit and backfill event, in both styles."""
        pipe = self.redis.pipeline(transaction=False)
        probes = []
        for style in (self.src, self.to):
            for wf in workflows_in(self.redis, style):
                probes.append((style.name, wf))
                pipe.hget(style.meta(wf), keys.VERSION)
                pipe.xrevrange(style.events(wf), count=1)
                pipe.zrevrange(style.backfills(wf), 0, 0)
        pipe.xrevrange(keys.pause_history(), count=1)
        replies = pipe.execute()
        seen = {probe: tuple(map(str, replies[3 * i:3 * i + 3])) for i, probe in enumerate(probes)}
        seen[("service", "pause-history")] = str(replies[-1])
        # Chunk traffic of running backfills bumps neither: their own streams' last ids.
        pipe = self.redis.pipeline(transaction=False)
        chunk_probes = []
        for style_name, wf in probes:
            if seen[(style_name, wf)][2] == "[]":  # no backfill
                continue
            style = keys.style(style_name == "cluster")
            for backfill_id in self.redis.zrange(style.backfills(wf), 0, -1):
                chunk_probes.append((style_name, wf, backfill_id))
                pipe.xrevrange(style.backfill_events(wf, backfill_id), count=1)
        for probe, last in zip(chunk_probes, pipe.execute()):
            seen[probe] = str(last)
        return seen

    def writes_seen(self, seconds: float) -> list[str]:
        """Watch for seconds; return what changed meanwhile (empty: nothing writes)."""
        before = self.fingerprint()
        time.sleep(seconds)
        after = self.fingerprint()
        return sorted({"/".join(map(str, probe)) for probe in before.keys() | after.keys()
                       if before.get(probe) != after.get(probe)})

    # -- what moves ---------------------------------------------------------------------

    def plan(self) -> Plan:
        src, to = self.src, self.to
        plan = Plan(to=to.name, workflows=workflows_in(self.redis, src))
        for wf in plan.workflows:
            candidates = [(src.workflow(wf), to.workflow(wf)), (src.meta(wf), to.meta(wf)),
                          (src.history(wf), to.history(wf)), (src.events(wf), to.events(wf)),
                          (src.pause(wf), to.pause(wf)), (src.backfills(wf), to.backfills(wf)),
                          (src.lag_episodes(wf), to.lag_episodes(wf))]
            for batch_id in self.redis.zrange(src.history(wf), 0, -1):
                candidates.append((src.batch(wf, batch_id), to.batch(wf, batch_id)))
            for backfill_id in self.redis.zrange(src.backfills(wf), 0, -1):
                candidates += [(src.backfill(wf, backfill_id), to.backfill(wf, backfill_id)),
                               (src.backfill_chunks(wf, backfill_id), to.backfill_chunks(wf, backfill_id)),
                               (src.backfill_queue(wf, backfill_id), to.backfill_queue(wf, backfill_id)),
                               (src.backfill_events(wf, backfill_id), to.backfill_events(wf, backfill_id))]
            idem = src.idempotency(wf, "x").rsplit(":", 1)[0] + ":"
            for key in scan(self.redis, idem + "*"):
                candidates.append((key, to.idempotency(wf, "x").rsplit(":", 1)[0] + ":" + key[len(idem):]))
            plan.moves += self._existing(candidates)
            plan.batches[wf] = self._indexed(wf)
        plan.moves += self._existing([(src.WEBHOOK_OUTBOX, to.WEBHOOK_OUTBOX), (src.WEBHOOK_INFLIGHT, to.WEBHOOK_INFLIGHT),
                                      (src.WEBHOOK_SENDING, to.WEBHOOK_SENDING)])
        seen_prefix = src.webhook_seen("")
        for key in scan(self.redis, seen_prefix + "*"):
            plan.moves.append((key, to.webhook_seen(key[len(seen_prefix):])))
        # OpenLineage: the runs queued move as they are; each cursor names an audit stream,
        # so its field is renamed to the stream's name in the target style (since is kept).
        plan.moves += self._existing([(src.LINEAGE_OUTBOX, to.LINEAGE_OUTBOX), (src.LINEAGE_INFLIGHT, to.LINEAGE_INFLIGHT),
                                      (src.LINEAGE_SENDING, to.LINEAGE_SENDING)])
        for name, value in self.redis.hgetall(src.LINEAGE_CURSORS).items():
            owner = src.stream_owner(name)
            if name == keys.LINEAGE_SINCE:
                plan.cursors[name] = value
            elif owner is not None:
                wf, backfill_id = owner
                plan.cursors[to.events(wf) if backfill_id is None else to.backfill_events(wf, backfill_id)] = value
        plan.paused = bool(self.redis.exists(keys.PAUSE))
        return plan

    def _existing(self, pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
        pipe = self.redis.pipeline(transaction=False)
        for old, _new in pairs:
            pipe.exists(old)
        return [pair for pair, n in zip(pairs, pipe.execute()) if n and pair[0] != pair[1]]

    def _indexed(self, wf: str) -> list[tuple[str, float]]:
        """Return wf's entries of the source batches index: (member, score)."""
        if self.src.cluster:
            return self.redis.zrange(self.src.batches(wf), 0, -1, withscores=True)
        prefix = keys.batch_prefix(wf)
        found = []
        for member, score in self.redis.zscan_iter(keys.BATCHES, match=prefix + "*", count=1000):
            if member[len(prefix):].isdigit():  # wf-1 and not wf-x-1 (another workflow's batch)
                found.append((member, score))
        return found

    # -- moving -------------------------------------------------------------------------

    def apply(self, plan: Plan) -> None:
        """Move every key of plan, rebuild the indexes in the target's shape."""
        for start in range(0, len(plan.moves), 200):
            part = plan.moves[start:start + 200]
            pipe = self.redis.pipeline(transaction=False)
            for old, _new in part:
                pipe.dump(old)
                pipe.pttl(old)
            replies = pipe.execute()
            pipe = self.redis.pipeline(transaction=False)
            for (old, new), data, ttl in zip(part, replies[::2], replies[1::2]):
                if data is None:  # gone meanwhile (an idempotency key expired)
                    continue
                pipe.restore(new, max(int(ttl), 0), data, replace=True)
            pipe.execute()
            pipe = self.redis.pipeline(transaction=False)
            for old, _new in part:
                pipe.delete(old)
            pipe.execute()
        for wf, entries in plan.batches.items():
            if not entries:
                continue
            moved = {self.to.batch(wf, member.rsplit("-", 1)[1]): score for member, score in entries}
            self.redis.zadd(self.to.batches(wf), moved)
            if self.src.cluster:
                self.redis.delete(self.src.batches(wf))
            else:
                self.redis.zrem(keys.BATCHES, *(member for member, _score in entries))
        if plan.workflows:
            self.redis.sadd(keys.WORKFLOWS, *plan.workflows)
        if plan.cursors:
            self.redis.hset(self.to.LINEAGE_CURSORS, mapping=plan.cursors)
            if self.src.LINEAGE_CURSORS != self.to.LINEAGE_CURSORS:
                self.redis.delete(self.src.LINEAGE_CURSORS)
        markers = keys.CLUSTER.pause_markers()
        pipe = self.redis.pipeline(transaction=False)
        for marker in markers:
            if self.to.cluster and plan.paused:
                pipe.set(marker, "1")
            elif not self.to.cluster:
                pipe.delete(marker)
        pipe.execute()
