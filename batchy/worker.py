"""The gunicorn worker `batchy serve` runs: gthread, with new connections spread evenly.

gunicorn's workers race to accept from one listening socket, and a keep-alive connection
stays with the worker that accepted it. When clients open many connections at once, one
worker often wins most of them (20 or 25 of 32 in bench/run.py; 32 of 32 opened one after
the other), and since each worker serves about the same calls per second, the calls of
the crowded worker wait longer.

So each worker posts its connection count on a board in memory shared by all of them (an
anonymous shared mapping made when the gunicorn master imports this module, before it
forks the workers). A worker holding more connections than a live sibling leaves a new
connection to that sibling, which the kernel wakes for it too, for at most PATIENCE; then
it takes the connection itself, so no client ever waits longer than that for a sibling
that is slow or has stopped.
"""
from __future__ import annotations

import ctypes
import mmap
import select
import time

from gunicorn.workers.gthread import ThreadWorker

SLOTS = 64  # workers alive at once, counting those a reload is replacing
FRESH = 3.0  # s: a sibling whose loop has not come round for this long is left out (it idles 1 s)
PATIENCE = 0.005  # s: the longest a new connection is left to a sibling
NAP = 0.0002  # s: between two looks at whether the sibling took it

# Per slot: pid, open connections, time.monotonic() of the worker's last turn (one clock
# for every process on the host). A read may see a slot half written: the board only
# steers which worker accepts a connection, never whether one does.
_SHARED = mmap.mmap(-1, 3 * SLOTS * ctypes.sizeof(ctypes.c_double))  # MAP_SHARED: kept across fork
_BOARD = (ctypes.c_double * (3 * SLOTS)).from_buffer(_SHARED)


def busier_than_a_sibling(board, slot: int, pid: int, connections: int, now: float) -> bool:
    """True when another live worker on the board holds fewer connections than `connections`."""
    for i in range(0, len(board), 3):
        if i != slot and board[i] and board[i] != pid and now - board[i + 2] < FRESH and board[i + 1] < connections:
            return True
    return False


def _pending(listener) -> bool:
    """True while a connection waits in the listener's queue to be accepted."""
    poll = select.poll()
    poll.register(listener, select.POLLIN)
    return bool(poll.poll(0))


class BalancedThreadWorker(ThreadWorker):
    """gunicorn's gthread worker that leaves a new connection to a less busy sibling."""

    def init_process(self):
        self._slot = 3 * (self.age % SLOTS)  # ages are unique within one master
        super().init_process()

    def notify(self):  # once per turn of the worker's loop, at least every second
        super().notify()
        self._post()

    def _post(self) -> None:
        i = self._slot
        if self.alive:
            _BOARD[i], _BOARD[i + 1], _BOARD[i + 2] = self.pid, self.nr_conns, time.monotonic()
        else:
            _BOARD[i] = 0  # stopping: it accepts no more, so no sibling should wait for it

    def accept(self, listener):
        now = time.monotonic()
        deadline = now + PATIENCE
        while now < deadline and busier_than_a_sibling(_BOARD, self._slot, self.pid, self.nr_conns, now):
            time.sleep(NAP)  # the sibling was woken for this connection too
            if not _pending(listener):
                return  # it took it
            now = time.monotonic()
        super().accept(listener)
        self._post()
