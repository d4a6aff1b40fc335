"""The per-process state cache: each workflow as this process last committed it."""
from __future__ import annotations

import threading


class StateCache:
    """Each workflow as this process last committed it, least recently written first.

    Nothing in it is trusted: COMMIT refuses a change planned on a state that moved,
    and the refusal carries the real state. Entries are (jobs as JSON text, meta,
    jobs decoded or None).
    """

    def __init__(self, size: int = 1024):
        self.size = size
        self._entries: dict[str, tuple[dict[str, str], dict[str, str], dict[str, dict] | None]] = {}
        self._lock = threading.Lock()

    def get(self, wf: str):
        return self._entries.get(wf)

    def put(self, wf: str, entry) -> None:
        if not self.size:
            return
        with self._lock:
            self._entries.pop(wf, None)
            self._entries[wf] = entry
            while len(self._entries) > self.size:
                del self._entries[next(iter(self._entries))]

    def forget(self, wf: str) -> None:
        with self._lock:
            self._entries.pop(wf, None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def names(self) -> list[str]:
        """Return the remembered workflows, least recently written first."""
        return list(self._entries)

    def __contains__(self, wf: str) -> bool:
        return wf in self._entries

    def __len__(self) -> int:
        return len(self._entries)


class DerivedCache:
    """Values derived from a workflow, each kept until the workflow's fingerprint changes.

    A fingerprint is whatever names the state a value was derived from (the workflow's
    version, say). However many threads ask for the same workflow and fingerprint at once,
    the value is computed once: the others wait for it. `computed` counts the computations.
    """

    def __init__(self, size: int = 256):
        self.size = size
        self.computed = 0
        self._entries: dict[str, tuple] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, wf: str, fingerprint, compute):
        """Return compute() for wf at fingerprint, computed once per fingerprint."""
        entry = self._entries.get(wf)
        if entry is not None and entry[0] == fingerprint:
            return entry[1]
        with self._lock:
            lock = self._locks.setdefault(wf, threading.Lock())
        with lock:  # the waiters of one workflow compute one after the other: the first one for all
            entry = self._entries.get(wf)
            if entry is not None and entry[0] == fingerprint:
                return entry[1]
            value = compute()
            with self._lock:
                self.computed += 1
                self._entries.pop(wf, None)
                self._entries[wf] = (fingerprint, value)
                while len(self._entries) > self.size:
                    oldest = next(iter(self._entries))
                    del self._entries[oldest]
                    self._locks.pop(oldest, None)
            return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
