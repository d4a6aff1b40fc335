"""Shared tools of the reliability tests: a virtual clock, Redis snapshots, error checks."""
from __future__ import annotations

import contextlib
import json
import time
from datetime import datetime, timedelta, timezone

import redis

from batchy import store

UTC = timezone.utc


class VirtualClock:
    """Shift the time Batchy reads from Redis (TIME) to a simulated, monotonic clock.

    Only the reading of the clock changes: every rule and every Redis write stays real.
    One clock serves every app instance in the process, as one Redis serves them all.
    """

    def __init__(self, start: datetime):
        self.virtual = start
        self.real_at = time.time()

    def advance(self, seconds: float) -> None:
        self.virtual = self.now() + timedelta(seconds=seconds)
        self.real_at = time.time()

    def now(self) -> datetime:
        return self.virtual + timedelta(seconds=time.time() - self.real_at)

    @contextlib.contextmanager
    def installed(self):
        clock = self

        class ShiftedDatetime(datetime):
            @classmethod
            def fromtimestamp(cls, ts, tz=None):
                # Keep the real clock's progress so batch ids stay monotonic.
                return datetime.fromtimestamp(int(clock.now().timestamp()), tz)

        saved = store.datetime, store._utc_second
        store.datetime = ShiftedDatetime
        store._utc_second = lambda seconds: ShiftedDatetime.fromtimestamp(seconds, timezone.utc)
        try:
            yield self
        finally:
            store.datetime, store._utc_second = saved


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
