"""batchy/worker.py: new connections go to the worker holding fewest, never waiting long."""
import http.client
import os
import socket
import threading

import pytest
from gunicorn.workers.gthread import ThreadWorker

from batchy import worker
from tests.servers import ServiceProcess, wait_for

SIBLING = 3  # the board slot of a pretend sibling


@pytest.fixture
def board():
    """The module's shared board, empty, and emptied again after the test."""
    for i in range(len(worker._BOARD)):
        worker._BOARD[i] = 0
    yield worker._BOARD
    for i in range(len(worker._BOARD)):
        worker._BOARD[i] = 0


@pytest.fixture
def clock(monkeypatch):
    """A clock that only moves when the worker naps; naps are recorded."""
    state = {"now": 1000.0, "naps": 0}

    def nap(seconds):
        state["naps"] += 1
        state["now"] += seconds

    monkeypatch.setattr(worker.time, "monotonic", lambda: state["now"])
    monkeypatch.setattr(worker.time, "sleep", nap)
    return state


@pytest.fixture
def accepted(monkeypatch):
    """Record calls to gthread's own accept instead of making them."""
    calls = []
    monkeypatch.setattr(ThreadWorker, "accept", lambda self, listener: calls.append(listener))
    return calls


@pytest.fixture
def listener():
    """A listening socket with one connection waiting to be accepted."""
    sock = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(sock.getsockname())
    yield sock
    client.close()
    sock.close()


def a_worker(connections: int) -> worker.BalancedThreadWorker:
    w = object.__new__(worker.BalancedThreadWorker)  # no master, no sockets: just the state accept reads
    w._slot, w.pid, w.nr_conns, w.alive = 0, os.getpid(), connections, True
    return w


def post_sibling(board, connections: int, age: float, now: float, pid: int = 999_999) -> None:
    board[SIBLING], board[SIBLING + 1], board[SIBLING + 2] = pid, connections, now - age


def test_a_live_sibling_with_fewer_connections_counts():
    board = [0.0] * 9
    board[3:6] = [4242, 2, 99.0]
    assert worker.busier_than_a_sibling(board, 0, 1, 3, now=100.0)
    assert not worker.busier_than_a_sibling(board, 0, 1, 2, now=100.0)  # as many: no sibling is less busy
    assert not worker.busier_than_a_sibling(board, 0, 1, 3, now=100.0 + worker.FRESH)  # gone quiet: left out
    assert not worker.busier_than_a_sibling(board, 3, 1, 3, now=100.0)  # that slot is our own
    assert not worker.busier_than_a_sibling(board, 0, 4242, 3, now=100.0)  # our own pid in another slot
    board[3] = 0
    assert not worker.busier_than_a_sibling(board, 0, 1, 3, now=100.0)  # vacated


def test_a_busier_worker_waits_for_the_sibling_at_most_patience(board, clock, accepted, listener):
    post_sibling(board, connections=1, age=0.5, now=clock["now"])
    started = clock["now"]
    a_worker(connections=5).accept(listener)
    assert accepted == [listener]  # nobody took it: it took it itself
    assert worker.PATIENCE <= clock["now"] - started <= worker.PATIENCE + worker.NAP


def test_a_busier_worker_leaves_the_connection_a_sibling_took(board, clock, accepted, listener):
    post_sibling(board, connections=1, age=0.5, now=clock["now"])
    conn, _ = listener.accept()  # the sibling was quicker
    conn.close()
    a_worker(connections=5).accept(listener)
    assert accepted == [] and clock["naps"] == 1


@pytest.mark.parametrize("sibling_connections", [5, 9])
def test_a_worker_no_busier_than_its_siblings_accepts_at_once(board, clock, accepted, listener, sibling_connections):
    post_sibling(board, connections=sibling_connections, age=0.5, now=clock["now"])
    a_worker(connections=5).accept(listener)
    assert accepted == [listener] and clock["naps"] == 0


def test_a_silent_sibling_is_not_waited_for(board, clock, accepted, listener):
    post_sibling(board, connections=0, age=worker.FRESH + 1, now=clock["now"])  # killed, or hung
    a_worker(connections=5).accept(listener)
    assert accepted == [listener] and clock["naps"] == 0


def test_a_stopping_worker_leaves_the_board(board, clock):
    w = a_worker(connections=3)
    w._post()
    assert list(board[0:3]) == [os.getpid(), 3, clock["now"]]
    w.alive = False
    w._post()
    assert board[0] == 0
    assert not worker.busier_than_a_sibling(board, SIBLING, 1, 9, clock["now"])


def _connections_per_worker(service: ServiceProcess) -> list[int]:
    """Established connections to the service's port, per gunicorn worker (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == service.port:
                    inodes.add(fields[9])
    counts = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as fh:
                if not entry.isdigit() or int(fh.read().rsplit(")", 1)[1].split()[1]) != service.proc.pid:
                    continue
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        held = 0
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{entry}/fd/{fd}")
            except OSError:
                continue
            held += target.startswith("socket:[") and target[8:-1] in inodes
        counts.append(held)
    return sorted(counts)


def test_batchy_serve_spreads_keep_alive_connections_over_its_workers(redis_server, cfg_dir):
    """32 connections opened one after the other: stock gthread put 32, 20 or 19 on one worker."""
    service = ServiceProcess(redis_server.url, str(cfg_dir), workers=2).start()
    conns = []
    try:
        wait_for(lambda: len(_connections_per_worker(service)) == 2, timeout=30, what="two workers")
        # both workers on the board: each has been round its loop (at least once a second)
        threading.Event().wait(1.5)
        for _ in range(32):
            conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
            conn.request("GET", "/healthz")
            assert conn.getresponse().read() == b'{"status":"ok"}'
            conns.append(conn)
        counts = _connections_per_worker(service)
        assert sum(counts) == 32 and counts[1] - counts[0] <= 2, counts
        assert "Using worker: batchy.worker.BalancedThreadWorker" in open(service.log_path).read()
    finally:
        for conn in conns:
            conn.close()
        service.stop()
