"""Atomicity on a real redis-server: concurrent clients never share a batch id or lose a write."""
import json
import threading

from batchy import create_app, keys


def test_concurrent_open_close_cycles(redis_server, real_redis, cfg_dir, capsys):
    clients, cycles = 12, 25
    apps = [create_app({"BATCHY_REDIS_URL": redis_server.url, "BATCHY_CFG_DIR": str(cfg_dir)}) for _ in range(3)]
    assert apps[0].test_client().get("/load_cfg/wf1").status_code == 200
    opened: list[int] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def run(n: int):
        client = apps[n % len(apps)].test_client()  # three app instances, as three gunicorn workers
        for _ in range(cycles):
            r = client.get("/open_batch/wf1")
            with lock:
                statuses.append(r.status_code)
                if r.status_code == 200:
                    opened.append(r.json["s_extract"]["batch_id"])
            r = client.get("/close_batch/wf1" if n % 3 else "/fail_batch/wf1")
            with lock:
                statuses.append(r.status_code)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    assert len(opened) == clients * cycles, set(statuses)
    assert len(set(opened)) == len(opened), "two opens shared a batch id"
    assert set(statuses) <= {200, 409}  # a close may find the batch already closed by another client
    for batch_id in opened:
        snapshot = real_redis.hgetall(keys.batch("wf1", batch_id))
        assert set(snapshot) == {"s_extract", "s_load"}, f"history key wf1-{batch_id} is missing"
        assert json.loads(snapshot["s_extract"])["status"] in ("open", "success", "failed", "abandoned")
    history = [int(x) for x in real_redis.zrange(keys.history("wf1"), 0, -1)]
    assert history == sorted(opened)
    meta = real_redis.hgetall(keys.meta("wf1"))
    assert int(meta["count:open"]) == len(opened)
    assert int(meta["last_batch_id"]) == max(opened)
    current = json.loads(real_redis.hget("wf1", "s_extract"))
    assert current["batch_id"] == max(opened)
    with capsys.disabled():
        print(f"\n  concurrency: {clients} clients x {cycles} open/close cycles on 3 app instances: "
              f"{len(opened)} opens, {len(set(opened))} unique ids, "
              f"{statuses.count(409)} close 409s, 0 lost history keys")
