"""The one pub/sub listener per process that wakes the requests waiting on a workflow.

Every state change PUBLISHes on keys.channel(wf). One listener thread per process
PSUBSCRIBEs keys.CHANNEL_PATTERN; when a workflow somebody waits on changes, it reads
the workflow once and wakes that workflow's waiters through a Condition, so N waiters
cost one Redis connection and one read per change, not N of each.

On a Redis Cluster changes go out on sharded pub/sub (SPUBLISH on the workflow's channel,
in its slot), which has no pattern subscription: the listener SSUBSCRIBEs the channels of
the workflows somebody waits on, and reads each once when its subscription is confirmed,
so a change made before it cannot be missed.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time
from contextlib import contextmanager

import redis

from . import keys
from ..errors import BatchyError, TooManyWaiters, Unavailable

log = logging.getLogger("batchy")

SLICE = 0.5  # seconds the listener blocks on pub/sub before checking for shutdown
SHARDED_SLICE = 0.05  # on a cluster it also picks up new workflows to SSUBSCRIBE this often


class _Watch:
    """The waiters of one workflow: how many, the change count, the last state read."""

    def __init__(self, lock: threading.Lock):
        self.waiters = 0
        self.generation = 0
        self.jobs: dict | None = None
        self.changed = threading.Condition(lock)


class Notifier:
    """One pub/sub listener per process that wakes the requests waiting on a workflow."""

    def __init__(self, store, subscribe_timeout: float, max_waiters: int):
        self.store = store
        self.subscribe_timeout = subscribe_timeout
        self.max_waiters = max_waiters
        self.waiters = 0
        self.closing = False
        self._lock = threading.Lock()
        self._watches: dict[str, _Watch] = {}
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._worker = None

    def start(self) -> None:
        """Start the listener thread in this process unless it runs already."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._subscribed.clear()
            self._worker = _gunicorn_worker()
            self._thread = threading.Thread(target=self._run, name="batchy-wait-listener", daemon=True)
            self._thread.start()

    def subscribe(self) -> None:
        """Make sure changes reach us from now on, else raise Unavailable."""
        self.start()
        if not self._subscribed.wait(self.subscribe_timeout):
            raise Unavailable("Redis pub/sub is not reachable; try again shortly.")

    @contextmanager
    def watch(self, wf: str):
        """Register a waiter on wf for the duration of the block, or raise TooManyWaiters."""
        with self._lock:
            if self.waiters >= self.max_waiters:
                # Each waiter holds a worker thread: past the cap it would take one that
                # open/close needs. Waitsy retries a 503 after a pause.
                raise TooManyWaiters(
                    f"this service process already holds {self.max_waiters} /wait requests "
                    "(BATCHY_WAIT_MAX_WAITERS); retry shortly"
                )
            self.waiters += 1
            watch = self._watches.get(wf)
            if watch is None:
                watch = self._watches[wf] = _Watch(self._lock)
            watch.waiters += 1
        try:
            yield watch
        finally:
            with self._lock:
                self.waiters -= 1
                watch.waiters -= 1
                if watch.waiters == 0 and self._watches.get(wf) is watch:
                    del self._watches[wf]

    def wait(self, watch: _Watch, seen: int, timeout: float) -> tuple[int, dict | None]:
        """Block until the workflow changed after generation seen (or timeout); return (generation, jobs)."""
        with self._lock:
            if watch.generation == seen and not self.closing:
                watch.changed.wait(timeout)
            return watch.generation, watch.jobs

    # -- the listener thread ---------------------------------------------------

    def _run(self) -> None:
        """Listen until stopped, reconnecting with a backoff: pattern pub/sub, or sharded on a cluster."""
        listen, what = (self._listen_sharded, "sharded pub/sub") if self.store.keys.cluster \
            else (self._listen_pattern, "pub/sub")
        self._backoff, self._lost = 0.1, False
        while not self._stopping():
            pubsub = None
            try:
                pubsub = self.store.redis.pubsub()
                listen(pubsub, what)
            except (redis.RedisError, OSError, ValueError) as exc:
                if not self._lost:
                    log.warning("wait listener lost Redis %s (%s); reconnecting", what, exc)
                    self._lost = True
                self._subscribed.clear()
                self._refresh(None, read=False)
                self._sleep(self._backoff)
                self._backoff = min(self._backoff * 2, 2.0)
            except Exception:  # noqa: BLE001 - the listener must outlive any surprise
                log.exception("wait listener failed; restarting it")
                self._subscribed.clear()
                self._sleep(1.0)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001 - closing a dead connection
                        pass
        self._subscribed.clear()
        with self._lock:
            self.closing = True
            for watch in self._watches.values():
                watch.changed.notify_all()

    def _connected(self, what: str) -> None:
        """Listening again: waiters may count on it; say so if it had been lost."""
        self._subscribed.set()
        self._backoff = 0.1
        if self._lost:
            log.warning("wait listener: %s is back", what)
            self._lost = False

    def _listen_pattern(self, pubsub, what: str) -> None:
        """One connection's listening: PSUBSCRIBE every workflow's channel."""
        pubsub.psubscribe(keys.CHANNEL_PATTERN)
        while not self._stopping():
            message = pubsub.get_message(timeout=SLICE)
            if message is None:
                continue
            if message["type"] == "psubscribe":
                self._connected(what)
                # Changes published while we were not subscribed were missed.
                self._refresh(None)
            elif message["type"] == "pmessage":
                changed = {keys.workflow_from_channel(message["channel"])}
                # Drain a burst first: one read per workflow, however many changes.
                while (more := pubsub.get_message(timeout=0)) is not None:
                    if more["type"] == "pmessage":
                        changed.add(keys.workflow_from_channel(more["channel"]))
                self._refresh(changed)

    def _listen_sharded(self, pubsub, what: str) -> None:
        """One connection's listening on a cluster: SSUBSCRIBE the channels of the watched workflows."""
        style = self.store.keys
        subscribed: set[str] = set()
        self.store.redis.ping()  # reachable: waiters may count on the subscriptions that follow
        self._connected(what)
        while not self._stopping():
            with self._lock:
                wanted = set(self._watches)
            for wf in sorted(wanted - subscribed):
                pubsub.ssubscribe(style.channel(wf))
                subscribed.add(wf)
            gone = subscribed - wanted
            if gone:
                pubsub.sunsubscribe(*(style.channel(wf) for wf in gone))
                subscribed -= gone
            message = pubsub.get_sharded_message(timeout=SHARDED_SLICE) if subscribed else None
            if message is None:
                if not subscribed:
                    time.sleep(SHARDED_SLICE)
                continue
            changed = set()
            while message is not None:
                if message["type"] in ("ssubscribe", "smessage"):
                    # A confirmed subscription reads the workflow once: a change made
                    # before it is seen there.
                    changed.add(style.workflow_from_channel(message["channel"]))
                message = pubsub.get_sharded_message(timeout=0)
            self._refresh(changed)

    def _stopping(self) -> bool:
        # gunicorn's graceful stop waits for in-flight requests: answer waiters at once
        # so a restart takes a moment, not graceful_timeout.
        return self.closing or (self._worker is not None and not getattr(self._worker, "alive", True))

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping() and time.monotonic() < deadline:
            time.sleep(min(SLICE, max(0.0, deadline - time.monotonic())))

    def _refresh(self, changed: set[str] | None, read: bool = True) -> None:
        """Read each changed workflow somebody waits on once, then wake its waiters."""
        with self._lock:
            wanted = [wf for wf in self._watches if changed is None or wf in changed]
        for wf in wanted:
            jobs = None
            if read:
                try:
                    jobs = self.store.status(wf)
                except (BatchyError, redis.RedisError, OSError, ValueError):
                    jobs = None  # each waiter reads for itself and answers the error
            with self._lock:
                watch = self._watches.get(wf)
                if watch is not None:
                    watch.generation += 1
                    watch.jobs = jobs
                    watch.changed.notify_all()


def _gunicorn_worker():
    """Return the gunicorn worker running this process, if any (its SIGTERM handler's owner)."""
    owner = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    if owner is not None and type(owner).__module__.startswith("gunicorn.workers") and hasattr(owner, "alive"):
        return owner
    return None
