"""Atomicity on a real redis-server: concurrent clients never share a batch id or lose a write."""
import json
import threading
import time

import pytest

from batchy import create_app
from batchy.storage import keys


@pytest.mark.slow  # real processes or waits: the CI run, not the everyday loop
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


def _queued(lock, waiters: int, timeout: float = 10.0) -> None:
    """Wait until `waiters` threads are blocked in lock.__enter__."""
    deadline = time.monotonic() + timeout
    while lock.waiting < waiters:
        assert time.monotonic() < deadline, f"{waiters} waiters never queued"
        time.sleep(0.001)


def test_write_lock_hands_over_in_arrival_order():
    """Writers to one workflow in a process take their turn in the order they came."""
    from batchy.storage.locks import FairLock, LockTable

    table = LockTable()
    assert type(table("wf1")) is FairLock  # what Committer.mutate queues on

    lock, order = FairLock(), []

    def writer(n):
        with lock:
            order.append(n)

    lock.__enter__()
    threads = []
    for n in range(8):
        threads.append(threading.Thread(target=writer, args=(n,)))
        threads[-1].start()
        _queued(lock, n + 1)
    lock.__exit__(None, None, None)
    for t in threads:
        t.join(10)
    assert order == list(range(8))
    assert not lock.held and not lock.waiting  # free again once the queue ran dry


def test_write_lock_release_then_take_again_queues_behind_a_waiter():
    """The thread that just released it cannot barge back in ahead of one already waiting.

    threading.Lock allows exactly that (the releaser still runs and finds it free), which
    let some writers on a hot workflow wait 2 s while others went straight through.
    """
    from batchy.storage.locks import FairLock

    lock, got = FairLock(), []
    waiter = threading.Thread(target=lambda: (lock.__enter__(), got.append("waiter"), lock.__exit__(None, None, None)))
    lock.__enter__()
    waiter.start()
    _queued(lock, 1)
    lock.__exit__(None, None, None)
    with lock:  # at once, in the releasing thread
        got.append("releaser")
    waiter.join(10)
    assert got == ["waiter", "releaser"]


def test_write_lock_is_released_when_the_change_raises():
    from batchy.storage.locks import FairLock

    lock = FairLock()
    with pytest.raises(ValueError):
        with lock:
            raise ValueError("plan refused")
    done = threading.Event()
    t = threading.Thread(target=lambda: (lock.__enter__(), done.set(), lock.__exit__(None, None, None)))
    t.start()
    assert done.wait(10), "the lock stayed held after an exception"


def test_write_lock_waiter_interrupted_by_a_signal_leaves_the_lock_usable():
    """A wait cut short by an exception leaves the queue; the lock is never held by nobody."""
    import signal

    from batchy.storage.locks import FairLock

    class Interrupted(Exception):
        pass

    def interrupt(signum, frame):
        raise Interrupted

    lock, got = FairLock(), []
    holder_in, holder_out = threading.Event(), threading.Event()

    def holder():
        with lock:
            holder_in.set()
            holder_out.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    assert holder_in.wait(10)
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(Interrupted):
            with lock:  # the main thread waits; the signal's exception ends the wait
                got.append("main")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not lock.waiting and got == []
    holder_out.set()
    t.join(10)
    done = threading.Event()
    other = threading.Thread(target=lambda: (lock.__enter__(), done.set(), lock.__exit__(None, None, None)))
    other.start()
    assert done.wait(10), "the lock was left held after an interrupted wait"
    assert not lock.held


def test_each_workflow_has_its_own_queue():
    """A writer stuck on one workflow never delays writers to another."""
    from batchy.storage.locks import LockTable

    table = LockTable()
    held = table("slow")
    assert table("slow") is held  # the same lock while somebody holds it
    with held:
        other = table("fast")
        assert other is not held
        assert other.acquire(timeout=0.1), "a lock of another workflow waited"
        other.release()
        assert not table("slow").acquire(timeout=0.05)  # the held one does wait
    small = LockTable(size=2)
    kept = small("a")
    with kept:
        small("b")
        small("c")  # past the size: the locks nobody holds go, the held one stays
        assert small("a") is kept and len(small) <= 2


def test_a_timed_out_waiter_leaves_the_queue():
    from batchy.storage.locks import FairLock

    lock = FairLock()
    lock.acquire()
    started = time.monotonic()
    assert lock.acquire(timeout=0.2) is False
    assert 0.15 < time.monotonic() - started < 2
    assert lock.waiting == 0
    lock.release()
    assert not lock.held
