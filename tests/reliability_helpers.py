"""Shared tools of the reliability tests: clocks, Redis snapshots and command logs, error checks, waits."""
from __future__ import annotations

import itertools
import json
import threading
import time
from datetime import date, datetime, timedelta, timezone

import redis

from batchy.storage import keys
from batchy.storage.clock import Clock

UTC = timezone.utc


class VirtualClock(Clock):
    """Shift the time Batchy reads from Redis (TIME) to a simulated, monotonic clock.

    Only the reading of the clock changes: every rule and every Redis write stays real.
    One clock serves every app instance it is given to (create_app's CLOCK), as one
    Redis serves them all.
    """

    def __init__(self, start: datetime):
        super().__init__()
        self.virtual = start
        self.real_at = time.time()

    def advance(self, seconds: float) -> None:
        self.virtual = self.now() + timedelta(seconds=seconds)
        self.real_at = time.time()

    def now(self) -> datetime:
        return self.virtual + timedelta(seconds=time.time() - self.real_at)

    def moment(self, seconds: int) -> datetime:
        # Keeps the real clock's progress, so batch ids stay monotonic.
        return datetime.fromtimestamp(int(self.now().timestamp()), UTC)


class ShiftedClock(Clock):
    """Redis' clock read later (or earlier) by a fixed delta, as if time had passed."""

    def __init__(self, delta: timedelta):
        super().__init__()
        self.delta = delta

    def moment(self, seconds: int) -> datetime:
        return super().moment(seconds) + self.delta


def raw_client(port: int) -> redis.Redis:
    """A bytes client of our own redis-server (DUMP returns bytes)."""
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=5)


def snapshot(client: redis.Redis) -> dict[bytes, tuple]:
    """Return {key: (type, content)} of every key: equal snapshots mean nothing changed.

    Not DUMP: a hash's DUMP depends on its internal field order, which a reload from the
    append-only file may change without changing a single value.
    """
    readers = {
        b"string": lambda p, k: p.get(k),
        b"hash": lambda p, k: p.hgetall(k),
        b"set": lambda p, k: p.smembers(k),
        b"zset": lambda p, k: p.zrange(k, 0, -1, withscores=True),
        b"list": lambda p, k: p.lrange(k, 0, -1),
        b"stream": lambda p, k: p.xrange(k),
    }
    names = sorted(client.scan_iter(count=1000))
    pipe = client.pipeline(transaction=False)
    for key in names:
        pipe.type(key)
    kinds = pipe.execute()
    for key, kind in zip(names, kinds):
        readers[kind](pipe, key)
    result = {}
    for key, kind, content in zip(names, kinds, pipe.execute()):
        if isinstance(content, dict):
            content = sorted(content.items())
        elif isinstance(content, set):
            content = sorted(content)
        result[key] = (kind, content)
    return result


def error_body(resp) -> dict:
    """Return the JSON error body of a Flask or urllib response, checking its shape."""
    data = resp.data if hasattr(resp, "data") else resp.read()
    body = json.loads(data)
    assert set(body) >= {"error", "message", "status"}, body
    assert body["status"] == resp.status_code if hasattr(resp, "status_code") else True
    return body


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll predicate until it returns a truthy value, which is returned."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - not there yet
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last!r})")


def redis_today(client: redis.Redis, margin: float = 30.0) -> date:
    """Return today's UTC date by Redis' clock, the one every batch time comes from.

    In the last margin seconds of a UTC day it first waits for the next day, so the
    batches a test closes right after all end on the date it returns.
    """
    seconds, micro = client.time()
    now = int(seconds) + int(micro) / 1e6
    left = 86400 - now % 86400
    if left < margin:
        time.sleep(left + 0.01)  # a test never straddles midnight
        now += left + 0.01
    return datetime.fromtimestamp(now, UTC).date()


class CommandLog:
    """Every command our own redis-server runs from now on (MONITOR), in the order it ran them.

    A service in another process shows how far it got only by what it asks Redis: a
    test waits on that instead of sleeping and hoping.
    """

    _marks = itertools.count()

    def __init__(self, client: redis.Redis):
        self.client = client
        self.commands: list[list[str]] = []  # [NAME, arg, ...] of clients; a script's calls are left out
        self.monitor = client.monitor()
        self.monitor.__enter__()
        self.reader = threading.Thread(target=self._read, name="redis-monitor", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            while True:
                command = self.monitor.next_command()
                if command["client_type"] != "lua":
                    words = command["command"].split(" ")
                    self.commands.append([words[0].upper(), *words[1:]])
        except Exception:  # noqa: BLE001 - close() cut the connection
            return

    def mark(self) -> int:
        """Return the position in the log after every command Redis has run so far."""
        token = f"batchy-test-mark-{next(self._marks)}"
        self.client.echo(token)
        return wait_until(lambda: next((i + 1 for i, c in enumerate(self.commands) if c == ["ECHO", token]), 0),
                          10, "Redis MONITOR to show our mark")

    def count(self, since: int, name: str, *args: str) -> int:
        """Return how many commands name with these first arguments ran after position since."""
        want = [name.upper(), *args]
        return sum(1 for c in self.commands[since:] if c[:len(want)] == want)

    def close(self) -> None:
        self.monitor.__exit__(None, None, None)
        self.reader.join(5)

    def __enter__(self) -> "CommandLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_for_waiters(log: CommandLog, since: int, wf: str, reads: int, timeout: float = 10) -> None:
    """Wait until /wait requests on wf made reads reads of it after position since of log.

    A /wait request subscribes to changes, then reads the workflow, then blocks: once
    its read has run, any later change wakes it. A worker's first waiter also starts
    its listener, whose PSUBSCRIBE is followed by one more read of the workflow.
    """
    key = keys.workflow(wf)
    try:
        wait_until(lambda: log.count(since, "HGETALL", key) >= reads + log.count(since, "PSUBSCRIBE"), timeout,
                   f"{reads} read(s) of {wf} by /wait requests")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; Redis ran since: {log.commands[since:][-12:]}") from None
