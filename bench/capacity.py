"""Capacity: Redis memory per workflow, per history entry and per backfill chunk, and Redis CPU
per commit, on a single redis-server and on a three-primary Redis Cluster.

    .venv/bin/python -m bench.capacity                  # 2,000 workflows, 4,000 batches, 3,000 chunks
    .venv/bin/python -m bench.capacity --smoke          # seconds: only checks the harness works
    .venv/bin/python -m bench.capacity --workflows 5000 --batches 10000

Run from the repo root. Each target is a Redis of its own (a redis-server on a free port, or
`redis-server --cluster-enabled yes` x 3 joined by `redis-cli --cluster create`), driven
in-process through BatchStore, so the figures are Redis' own: `used_memory` (summed over
the primaries) before and after each step, and `used_cpu_user + used_cpu_sys` of the Redis
processes across the commits, beside INFO commandstats' usec per EVALSHA. A commit is an
open or a close of a 3-job workflow (one script each). docs/operations.md turns the figures
into the capacity model.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

import redis

from batchy import settings as batchy_settings
from batchy.rules.workflows import read_config
from batchy.storage.backfill import Backfills
from batchy.storage.store import BatchStore
from batchy.testing import RedisCluster, RedisServer

from .procs import THREE_STEPS

UTC = timezone.utc


def primaries(client) -> list[redis.Redis]:
    """A plain client of each primary (one, for a single redis-server)."""
    if isinstance(client, redis.RedisCluster):
        return [client.get_redis_connection(node) for node in client.get_primaries()]
    return [client]


def used_memory(client) -> int:
    return sum(int(p.info("memory")["used_memory"]) for p in primaries(client))


def cpu_seconds(client) -> float:
    total = 0.0
    for p in primaries(client):
        cpu = p.info("cpu")
        total += float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
    return total


def evalsha_usec(client) -> tuple[int, float]:
    """Return (calls, usec) of EVALSHA since the last CONFIG RESETSTAT, over the primaries."""
    calls, usec = 0, 0.0
    for p in primaries(client):
        stats = p.info("commandstats").get("cmdstat_evalsha") or {}
        calls += int(stats.get("calls", 0))
        usec += float(stats.get("usec", 0))
    return calls, usec


def measure(client, cluster: bool, cfg_dir: str, workflows: int, batches: int, chunks: int) -> dict:
    conf = {**batchy_settings.load(environ={}), "BATCHY_REDIS_CLUSTER": cluster, "BATCHY_CFG_DIR": cfg_dir}
    store = BatchStore(client, conf)
    backfills = Backfills(store, conf["BATCHY_EVENTS_KEEP"])
    names = [f"wf{i:05d}" for i in range(workflows)]
    config = read_config(cfg_dir, "template", conf["BATCHY_MAX_CFG_BYTES"])
    row: dict = {"target": "cluster (3 primaries)" if cluster else "single redis-server"}

    before = used_memory(client)
    for wf in names:
        store.load(wf, config)
    loaded = used_memory(client)
    row["bytes/workflow"] = (loaded - before) / workflows

    for p in primaries(client):
        p.config_resetstat()
    cpu0 = cpu_seconds(client)
    started = time.perf_counter()
    for i in range(batches):
        wf = names[i % workflows]
        store.open(wf)
        store.close(wf, "success")
    elapsed = time.perf_counter() - started
    cpu1 = cpu_seconds(client)
    commits = 2 * batches
    calls, usec = evalsha_usec(client)
    row["bytes/history entry"] = (used_memory(client) - loaded) / batches
    row["redis cpu us/commit"] = (cpu1 - cpu0) * 1e6 / commits
    row["evalsha us/call"] = usec / calls if calls else float("nan")
    row["commits/s (one client thread)"] = commits / elapsed

    # What a batch's bytes are made of: its snapshot hash, and the audit events (open, close).
    sample = names[:min(workflows, 50)]
    snapshot, events, count = 0, 0, 0
    for wf in sample:
        last = store.redis.hget(store.keys.meta(wf), store.keys.LAST_BATCH_ID)
        if last:
            snapshot += store.redis.memory_usage(store.keys.batch(wf, last), samples=0) or 0
            count += 1
        events += (store.redis.memory_usage(store.keys.events(wf), samples=0) or 0) / max(
            1, store.redis.xlen(store.keys.events(wf)))
    row["bytes/batch snapshot key"] = snapshot / max(count, 1)
    row["bytes/audit event"] = events / len(sample)

    # A long-lived workflow: its audit stream and history grow long, and pack tighter.
    runs = max(10, batches // 4)
    store.load("longrun", config)
    grown = used_memory(client)
    for _ in range(runs):
        store.open("longrun")
        store.close("longrun", "success")
    row[f"bytes/batch, one workflow x {runs}"] = (used_memory(client) - grown) / runs
    row[f"bytes/audit event, x {2 * runs}"] = (store.redis.memory_usage(store.keys.events("longrun"), samples=0)
                                               / store.redis.xlen(store.keys.events("longrun")))

    per = 100  # chunks a backfill: 100 days of one job
    made = 0
    filled = used_memory(client)
    day = datetime(2023, 1, 1, tzinfo=UTC)
    for i in range(max(1, chunks // per)):
        wf = names[i % workflows]
        backfills.create(wf, day, day + timedelta(days=per), jobs=["s_extract"], batch_size="day")
        made += per
    row["bytes/backfill chunk"] = (used_memory(client) - filled) / made
    return row


def show(rows: list[dict]) -> None:
    labels = [k for k in rows[0] if k != "target"]
    width = max(len(label) for label in labels)
    print(f"  {'':{width}}  " + "  ".join(f"{r['target']:>24}" for r in rows))
    for label in labels:
        print(f"  {label:{width}}  " + "  ".join(f"{r[label]:>24,.1f}" for r in rows))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workflows", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=4000, help="batches opened and closed (2 commits each)")
    parser.add_argument("--chunks", type=int, default=3000, help="backfill chunks created (100 a backfill)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: only checks the harness works")
    parser.add_argument("--no-cluster", action="store_true", help="only the single redis-server")
    args = parser.parse_args(argv)
    if args.smoke:
        args.workflows, args.batches, args.chunks = 20, 40, 200
    cfg_dir = tempfile.mkdtemp(prefix="batchy-capacity-cfg-")
    with open(os.path.join(cfg_dir, "template.yaml"), "w") as fh:
        fh.write(THREE_STEPS)
    print(f"capacity: {args.workflows} workflows of 3 jobs, {args.batches} batches "
          f"({2 * args.batches} commits), {args.chunks} backfill chunks", flush=True)
    rows = []
    server = RedisServer().start()
    try:
        rows.append(measure(server.client(), False, cfg_dir, args.workflows, args.batches, args.chunks))
    finally:
        server.cleanup()
    if not args.no_cluster:
        nodes = RedisCluster(masters=3, replicas=0).start()
        try:
            rows.append(measure(nodes.client(), True, cfg_dir, args.workflows, args.batches, args.chunks))
        finally:
            nodes.cleanup()
    shutil.rmtree(cfg_dir, ignore_errors=True)
    show(rows)
    single = rows[0]
    print(f"one Redis core: about {1e6 / single['redis cpu us/commit']:,.0f} commits/s "
          f"(redis cpu per commit, single redis-server)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
