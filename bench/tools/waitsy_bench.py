"""Waitsy and /wait figures: reaction latency push vs poll, open/close p99 under 200 waiters.

    .venv/bin/python -m bench.tools.waitsy_bench              # `batchy serve` as shipped
    .venv/bin/python -m bench.tools.waitsy_bench --compare    # also gunicorn worker models side by side

Starts its own redis-server and service (batchy.testing), never a shared one, and
prints a table. Figures depend on the machine; run it on an idle one.
"""
from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import date, timedelta

from batchy.client import Batchy
from batchy.testing import RedisServer, ServiceProcess, free_port, wait_for
from waitsy.cli import main as waitsy

# The repo root, on the gunicorn processes' PYTHONPATH (for --compare).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORKFLOWS = {
    "up": "a: {}\nb: {}\n",  # what waitsy waits for in the reaction runs
    "busy": "a: {}\nb: {}\n",  # opened and closed while 200 waiters wait on it
    "big": "".join(f"job{i}:\n  src: table_{i}\n" for i in range(10)),  # get_status payload
}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def ms(value: float) -> str:
    return f"{value * 1000:8.1f}"


# -- reaction latency ----------------------------------------------------------------


def reaction(url: str, runs: int, extra: list[str], jitter: float) -> list[float]:
    """Return seconds from the close call to waitsy's exit, over runs.

    The close comes 0.3 s plus a random share of jitter (the poll interval) after the
    start, so polls see it at every phase of their cycle.
    """
    client = Batchy(url)
    times = []
    for _ in range(runs):
        client.open("up")
        done = threading.Event()
        code = []
        thread = threading.Thread(
            target=lambda: (code.append(waitsy(["-wf", "up", "--url", url, "--quiet", "--timeout", "30", *extra])),
                            done.set()),
            daemon=True,
        )
        thread.start()
        time.sleep(0.3 + random.uniform(0, jitter))  # it is in its blocking /wait (or poll sleep)
        started = time.monotonic()
        client.close("up")
        done.wait(30)
        times.append(time.monotonic() - started)
        if code != [0]:
            raise SystemExit(f"waitsy exited {code} instead of 0")
    return times


# -- open/close under waiters ----------------------------------------------------------


def attach_waiters(url: str, count: int, stop: threading.Event) -> list[threading.Thread]:
    """Start count /wait requests on 'busy' for tomorrow (never ready), re-issued until stop."""
    tomorrow = (date.today() + timedelta(days=2)).isoformat()

    def wait_forever():
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"{url}/wait/busy?date={tomorrow}&timeout=30", timeout=40) as resp:
                    resp.read()
            except OSError:
                time.sleep(0.1)

    threads = [threading.Thread(target=wait_forever, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def open_close(url: str, cycles: int, budget: float = 30.0) -> list[float]:
    """Return the latency of each open and close call; a call over 5 s counts as 5 s."""
    client = Batchy(url, timeout=5)
    times = []
    give_up = time.monotonic() + budget  # a starved server would take hours otherwise
    for _ in range(cycles):
        for call in (client.open, client.close):
            started = time.monotonic()
            try:
                call("busy")
            except Exception:  # noqa: BLE001 - a timeout or a close after a lost open
                pass
            times.append(min(time.monotonic() - started, 5.0))
        if time.monotonic() > give_up:
            break
    return times


def waiting_count(redis_client) -> int:
    """Return how many clients hold a pattern subscription (one per service process)."""
    return sum(1 for c in redis_client.client_list() if int(c.get("psub", 0)) > 0)


# -- get_status throughput ---------------------------------------------------------------


def _hammer(url: str, seconds: float, counter) -> None:
    deadline = time.monotonic() + seconds
    done = 0
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                resp.read()
        except OSError:
            continue  # a starved server: the count shows it
        done += 1
    with counter.get_lock():
        counter.value += done


def throughput(url: str, seconds: float, clients: int) -> float:
    """Return get_status requests/s with clients processes, a new connection per request."""
    counter = multiprocessing.Value("i", 0)
    procs = [multiprocessing.Process(target=_hammer, args=(f"{url}/get_status/big", seconds, counter))
             for _ in range(clients)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    return counter.value / seconds


# -- servers ----------------------------------------------------------------------------


class Gunicorn:
    """gunicorn on the Batchy app with a given worker model (for --compare)."""

    def __init__(self, redis_url: str, cfg_dir: str, worker_class: str, workers: int, threads: int):
        self.port = free_port()
        self.args = [sys.executable, "-m", "gunicorn", "-k", worker_class, "-w", str(workers),
                     "--threads", str(threads), "--worker-connections", "1000", "--access-logfile", "-",
                     "-b", f"127.0.0.1:{self.port}", "batchy:create_app()"]
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("BATCHY_")},
                    "BATCHY_REDIS_URL": redis_url, "BATCHY_CFG_DIR": cfg_dir, "PYTHONPATH": ROOT}
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        wait_for(lambda: urllib.request.urlopen(self.url + "/healthz", timeout=1).status == 200, timeout=30)
        return self

    def stop(self):
        os.killpg(self.proc.pid, 15)
        self.proc.wait(30)


def measure(name: str, url: str, redis_client, args) -> dict:
    client = Batchy(url)
    for wf in WORKFLOWS:
        client.load(wf, reset=True)
    row = {"name": name}
    row["rps"] = throughput(url, args.duration, args.clients)
    row["idle"] = open_close(url, args.cycles)
    stop = threading.Event()
    attach_waiters(url, args.waiters, stop)
    time.sleep(3)  # all waiters connected and blocked
    row["loaded"] = open_close(url, args.cycles)
    row["rps_loaded"] = throughput(url, args.duration, args.clients)
    row["subscribers"] = waiting_count(redis_client)
    stop.set()
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="reaction runs each for push and poll")
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--waiters", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=100, help="open+close pairs per measurement")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per throughput run")
    parser.add_argument("--clients", type=int, default=4, help="client processes for throughput")
    parser.add_argument("--compare", action="store_true", help="also run sync / gthread / gevent side by side")
    args = parser.parse_args(argv)

    cfg = tempfile.mkdtemp(prefix="waitsy-bench-")
    for wf, text in WORKFLOWS.items():
        with open(os.path.join(cfg, f"{wf}.yaml"), "w") as fh:
            fh.write(text)
    redis_server = RedisServer().start()
    rows = []
    try:
        service = ServiceProcess(redis_server.url, cfg).start()
        try:
            client = Batchy(service.url)
            for wf in WORKFLOWS:
                client.load(wf, reset=True)
            push = reaction(service.url, args.runs, [], 0.2)
            # The same waitsy against the same service, made to poll (as on a service without /wait).
            import waitsy.cli as wcli

            original = wcli.Watcher._push
            wcli.Watcher._push = lambda self: (_ for _ in ()).throw(wcli.NoWaitRoute())
            try:
                poll = reaction(service.url, args.runs, ["--interval", str(args.poll_interval)], args.poll_interval)
            finally:
                wcli.Watcher._push = original
            served = measure("batchy serve", service.url, redis_server.client(), args)
        finally:
            service.stop()
        if args.compare:
            models = [("sync -w2", "sync", 2, 1), ("gthread -w2 --threads 32", "gthread", 2, 32),
                      ("gthread -w2 --threads 256", "gthread", 2, 256), ("gevent -w2", "gevent", 2, 1)]
            for name, cls, workers, threads in models:
                if cls == "gevent" and not importlib.util.find_spec("gevent"):
                    print(f"{name}: skipped, gevent is not installed (pip install gevent)", file=sys.stderr)
                    continue
                server = Gunicorn(redis_server.url, cfg, cls, workers, threads).start()
                try:
                    if cls == "sync":  # a sync worker holds one request: no waiters possible
                        client = Batchy(server.url)
                        for wf in WORKFLOWS:
                            client.load(wf, reset=True)
                        rows.append({"name": name, "rps": throughput(server.url, args.duration, args.clients),
                                     "idle": open_close(server.url, args.cycles)})
                    else:
                        rows.append(measure(name, server.url, redis_server.client(), args))
                finally:
                    server.stop()
    finally:
        redis_server.cleanup()

    print(f"\nReaction latency, close -> waitsy exit, {args.runs} runs each (ms)")
    print(f"{'mode':<28}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}")
    for label, values in (("push (/wait)", push), (f"poll (--interval {args.poll_interval:g})", poll)):
        print(f"{label:<28}{ms(statistics.median(values))}{ms(pct(values, 90))}{ms(pct(values, 99))}{ms(max(values))}")
    print(f"\nopen/close latency ({args.cycles} open+close pairs) and get_status throughput "
          f"({args.clients} client processes, {args.duration:g}s)")
    print(f"{'server':<28}{'p50 idle':>9}{'p99 idle':>9}{'p50 ' + str(args.waiters) + 'w':>9}"
          f"{'p99 ' + str(args.waiters) + 'w':>9}{'req/s':>8}{'req/s ' + str(args.waiters) + 'w':>11}{'psub':>6}")
    for row in [served] + rows:
        loaded = row.get("loaded")
        print(f"{row['name']:<28}{ms(statistics.median(row['idle'])):>9}{ms(pct(row['idle'], 99)):>9}"
              f"{(ms(statistics.median(loaded)) if loaded else '     n/a'):>9}{(ms(pct(loaded, 99)) if loaded else '     n/a'):>9}"
              f"{row['rps']:8.0f}{(format(row['rps_loaded'], '11.0f') if 'rps_loaded' in row else '        n/a')}"
              f"{row.get('subscribers', '-'):>6}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
