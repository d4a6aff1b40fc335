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
