"""Locks for writers in one process: first come, first served, one per workflow."""
from __future__ import annotations

import collections
import threading


class FairLock:
    """A lock handed to its waiters in the order they came.

    threading.Lock lets a thread arriving just as it is released take it before the
    thread woken for it, so with 16 writers queued on one workflow some waited 2 s
    while others barged through. Here a release hands the lock straight to the oldest
    waiter.
    """

    __slots__ = ("_mutex", "_waiters", "_held", "__weakref__")

    def __init__(self):
        self._mutex = threading.Lock()  # guards _held and _waiters only, never held long
        self._waiters: collections.deque = collections.deque()
        self._held = False

    @property
    def held(self) -> bool:
        return self._held

    @property
    def waiting(self) -> int:
        """Return how many threads wait for the lock."""
        return len(self._waiters)

    def acquire(self, timeout: float | None = None) -> bool:
        """Take the lock, waiting at most timeout seconds (None: for ever); return whether taken."""
        with self._mutex:
            if not self._held:
                self._held = True
                return True
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        try:
            # released by the holder that hands over
            got = turn.acquire(timeout=-1 if timeout is None else max(timeout, 0.0))
        except BaseException:
            # Interrupted while waiting (a signal handler raising in the main thread):
            # leave the queue, or, if the lock was handed over meanwhile, pass it on,
            # so that it is never left held by nobody.
            with self._mutex:
                if turn in self._waiters:
                    self._waiters.remove(turn)
                else:
                    self._hand_over()
            raise
        if not got:
            with self._mutex:
                if turn in self._waiters:
                    self._waiters.remove(turn)
                    return False
            # handed over between the timeout and the mutex: it is ours now
        return True

    def release(self) -> None:
        with self._mutex:
            self._hand_over()

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()

    def _hand_over(self) -> None:
        """Give the held lock to the oldest waiter, or free it (called under _mutex)."""
        if self._waiters:
            self._waiters.popleft().release()  # still held: now by that waiter
        else:
            self._held = False


class LockTable:
    """One FairLock per workflow. Workflows never share a queue: a slow change to one never
    delays another.

    Locks are kept (a dict lookup per change, nothing allocated), and past `size` the ones
    nobody holds are dropped, so a flood of workflow names cannot grow it without bound.
    """

    def __init__(self, size: int = 4096):
        self.size = size
        self._locks: dict[str, FairLock] = {}
        self._mutex = threading.Lock()

    def __call__(self, wf: str) -> FairLock:
        lock = self._locks.get(wf)  # a dict read is atomic: the common case takes no mutex
        if lock is not None:
            return lock
        with self._mutex:
            lock = self._locks.get(wf)
            if lock is None:
                if len(self._locks) >= self.size:
                    self._prune()
                lock = self._locks[wf] = FairLock()
            return lock

    def _prune(self) -> None:
        """Drop the locks nobody holds or waits for (called under _mutex).

        A thread that fetched a lock just before it is dropped may hold it beside the new
        one for a moment: only the first-come order suffers, never the state (the commit
        script's version check guards every change).
        """
        for name in [name for name, lock in self._locks.items() if not lock.held and not lock.waiting]:
            del self._locks[name]

    def __len__(self) -> int:
        return len(self._locks)
