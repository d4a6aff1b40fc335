"""Benchmark Batchy against the floor of its own stack, in one run, and print a table.

    .venv/bin/python -m bench.run            # full run, about 4 minutes (5 rounds)
    .venv/bin/python -m bench.run --quick    # about a minute
    .venv/bin/python -m bench.run --smoke    # seconds: only checks the harness works
    .venv/bin/python -m bench.run --json out.json
    .venv/bin/python -m bench.run --against /tmp/before   # another checkout's Batchy in the same rounds

Run from the repo root. Starts its own redis-server, `batchy serve` (gunicorn, as
production runs it) and the baseline (bench.baseline under the same `serve`), loads
synthetic workflows through /load_cfg, drives 32 keep-alive connections from a separate
process (wrk when installed, bench.load otherwise; BENCH_ENGINE=python forces the latter)
and reports every figure next to the baseline measured in the same run. With --against, a
second `batchy serve` from another checkout (round 5's, say; its own redis-server) runs each
of Batchy's loads next to this one's in every round (first in every other round), against
the same baseline: the two checkouts side by side in one run, each round's noise
shared by both.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from . import drive, load, plans
from .procs import (
    BaselineProcess, Http, RedisServer, ServiceProcess, cleanup, policy_names, spread_names, start_timed,
    write_workflows,
)

MODES = {
    # rounds of every load run (each round measures the baseline next to Batchy), seconds per
    # load run, warm-up, step counts, sequential samples, history batches
    "full": dict(rounds=5, duration=4.0, warmup=2.0, steps=(1, 10, 100, 1000), samples=200, big_samples=40,
                 history=10000),
    "quick": dict(rounds=2, duration=2.0, warmup=1.0, steps=(1, 10, 100, 1000), samples=60, big_samples=15,
                  history=1000),
    "smoke": dict(rounds=1, duration=1.0, warmup=0.0, steps=(1, 10), samples=5, big_samples=3, history=20),
}
WORKERS = 2  # BATCHY_WORKERS' default: what `batchy serve` runs with
HISTORY_KEEP = 20000


def commandstats(client) -> dict[str, int]:
    info = client.info("commandstats")
    return {name[len("cmdstat_"):] if name.startswith("cmdstat_") else name: int(v["calls"])
            for name, v in info.items()}


def commands_per_call(client, fn, calls: int) -> tuple[float, dict[str, float]]:
    """Run fn() calls times; return Redis commands per call (from INFO commandstats) and the mix."""
    before = commandstats(client)
    for _ in range(calls):
        fn()
    after = commandstats(client)
    delta = {k: (after.get(k, 0) - before.get(k, 0)) / calls for k in after}
    delta = {k: v for k, v in delta.items() if v and k not in ("info",)}
    return sum(delta.values()), delta


class RoundTrips:
    """Count Redis round trips per API call in-process: each packed send is one round trip."""

    def __init__(self, redis_url: str, cfg_dir: str):
        import redis.connection

        from batchy import create_app

        self.count = 0
        cls = redis.connection.AbstractConnection
        original = cls.send_packed_command
        outer = self

        def counting(conn, command, check_health=True):
            outer.count += 1
            return original(conn, command, check_health)

        cls.send_packed_command = counting
        self.client = create_app({"BATCHY_REDIS_URL": redis_url, "BATCHY_CFG_DIR": cfg_dir}).test_client()

    def per_call(self, method: str, path: str, calls: int = 3, warm: bool = True) -> float:
        if warm:
            self.client.open(path, method=method)  # warm: connection, SCRIPT LOAD, health check
        self.count = 0
        for _ in range(calls):
            resp = self.client.open(path, method=method)
            if not 200 <= resp.status_code < 300:
                raise RuntimeError(f"{method} {path} answered {resp.status_code}: {resp.data[:200]!r}")
        return self.count / calls


def load_run(url: str, connections, duration: float, redis_client=None) -> dict:
    result = drive.run(url, connections, duration)
    if redis_client is not None:
        quiesce(redis_client)
    return result


def quiesce(client, quiet: float = 0.3, timeout: float = 60) -> None:
    """Wait until Redis sees no commands for `quiet` s: calls still queued when the load stopped finish first."""
    deadline = time.monotonic() + timeout
    last = client.info("stats")["total_commands_processed"]
    while time.monotonic() < deadline:
        time.sleep(quiet)
        now = client.info("stats")["total_commands_processed"]
        if now - last <= 1:  # our own INFO
            return
        last = now


def median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000 if values else float("nan")


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    from importlib.metadata import version

    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()[2]
    return {
        "nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
        "redis": redis_version.removeprefix("v="), "gunicorn": version("gunicorn"), "flask": version("flask"),
        "redis_py": version("redis"), "kernel": platform.release(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (about a minute)")
    parser.add_argument("--smoke", action="store_true", help="tiny runs that only check the harness works")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=float, help="seconds per load run (overrides the mode)")
    parser.add_argument("--rounds", type=int, help="rounds of load runs (overrides the mode)")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--against", metavar="CHECKOUT",
                        help="also measure the Batchy of this other checkout in the same rounds (every load)")
    args = parser.parse_args(argv)
    against = os.path.abspath(args.against) if args.against else None
    if against and not os.path.isdir(os.path.join(against, "batchy")):
        parser.error(f"{against} holds no batchy package")
    mode = dict(MODES["smoke" if args.smoke else "quick" if args.quick else "full"])
    if args.duration:
        mode["duration"] = args.duration
    if args.rounds:
        mode["rounds"] = args.rounds
    conns = args.connections
    started = time.perf_counter()
    report: dict = {"mode": "smoke" if args.smoke else "quick" if args.quick else "full",
                    "connections": conns, "duration": mode["duration"], "rounds": mode["rounds"],
                    "engine": drive.engine(),
                    "machine": machine(), "load": {}, "redis": {}, "steps": {}, "against": against}

    cfg_dir = tempfile.mkdtemp(prefix="batchy-bench-cfg-")
    write_workflows(cfg_dir, conns, mode["steps"])
    server = RedisServer().start()
    svc = ServiceProcess(server.url, cfg_dir, workers=WORKERS)
    base = BaselineProcess(server.url, cfg_dir, workers=WORKERS)
    hist_svc = None
    # The other checkout's service, on a redis-server of its own: neither sees the other's state.
    other_server = RedisServer().start() if against else None
    other = ServiceProcess(other_server.url, cfg_dir, workers=WORKERS, cwd=against) if against else None
    try:
        report["start_s"] = {"batchy": start_timed(svc), "baseline": start_timed(base)}
        http = Http(svc.url)
        for name in sorted(os.listdir(cfg_dir)):
            http.ok("POST", f"/load_cfg/{name[:-5]}")
        other_http = other_r = None
        if other:
            other_r = other_server.client()
            report["start_s"]["batchy (against)"] = start_timed(other)
            other_http = Http(other.url)
            for name in sorted(os.listdir(cfg_dir)):
                other_http.ok("POST", f"/load_cfg/{name[:-5]}")
        wfs = spread_names()
        r = server.client()
        quiesce(r)

        # -- load at 32 connections -------------------------------------------------------
        # Rounds: every round runs the baseline and then Batchy's calls back to back, and
        # each ratio is Batchy's rate over the baseline's of the same round, so a shared
        # machine's slow minute moves both sides; the table shows the median over rounds.
        def phase(label, url, connections, warmup=0.0):
            proc, redis_proc = {base.url: (base, server), svc.url: (svc, server)}.get(url, (other, other_server))
            client = r if redis_proc is server else other_r
            if warmup:
                load_run(url, connections, warmup, client)
            cpu = drive.tree_cpu(proc.proc.pid), drive.tree_cpu(redis_proc.proc.pid)
            result = load_run(url, connections, mode["duration"], client)
            calls = sum(len(t["lat_us"]) for t in result["tags"].values())
            entry = {
                # CPU per call, to split a call's cost between the Python service and redis-server
                "service_cpu_ms": (drive.tree_cpu(proc.proc.pid) - cpu[0]) / calls * 1000,
                "redis_cpu_ms": (drive.tree_cpu(redis_proc.proc.pid) - cpu[1]) / calls * 1000,
                "socket_errors": result.get("errors", 0),
                "failures": result.get("failures", [])[:20],
                "tags": {tag: drive.summarise(result, tag, conns) for tag in result["tags"]},
                "total_rps": calls / result["duration"],
                "loadgen_cpu_share": result["loadgen_cpu_share"],
            }
            report["load"].setdefault(label, {"rounds": []})["rounds"].append(entry)
            print(f"  {label}: {entry['total_rps']:.0f} req/s", file=sys.stderr, flush=True)

        runs = [
            ("baseline spread", base.url, plans.get_status(wfs, conns)),
            ("get_status spread", svc.url, plans.get_status(wfs, conns)),
            ("open/close json spread", svc.url, plans.open_close(wfs, conns, "json")),
            ("open/close infa spread", svc.url, plans.open_close(wfs, conns, "infa")),
            ("re-open spread", svc.url, plans.reopen(wfs, conns)),
            ("open/close policy spread", svc.url, plans.open_close(policy_names(), conns, "json")),
            ("baseline one wf", base.url, plans.get_status(["hot"], conns)),
            ("get_status one wf", svc.url, plans.get_status(["hot"], conns)),
            ("open/close one wf", svc.url, plans.hot_open_close("hot", conns)),
        ]
        # Each of Batchy's spread loads and the same load on the other checkout, back to back; which
        # of the two goes first alternates with the rounds, so neither always finds the machine warmer.
        groups = [[run, (run[0] + AGAINST, other.url, run[2])] if other and run[0] in AGAINST_PHASES else [run]
                  for run in runs]
        for n in range(mode["rounds"]):
            print(f"load runs, round {n + 1} of {mode['rounds']}:", file=sys.stderr)
            for label, url, plan in (run for group in groups for run in (group[::-1] if n % 2 else group)):
                if label.startswith("re-open spread"):
                    for wf in wfs:  # so that the run's first opens are re-opens too
                        (other_http if label.endswith(AGAINST) else http).ok("POST", f"/open_batch/{wf}")
                phase(label, url, plan, warmup=mode["warmup"] if n == 0 else 0.0)
        for entry in report["load"].values():
            entry.update(aggregate(entry["rounds"]))
        if other_http:
            other_http.close()

        # -- Redis commands and round trips per call ---------------------------------------
        print("redis per call, job steps:", file=sys.stderr, flush=True)
        trips = RoundTrips(server.url, cfg_dir)
        calls = max(3, mode["samples"] // 10)
        wf = wfs[0]
        seq = {
            "get_status": [("GET", f"/get_status/{wf}")],
            "open_batch json": [("POST", f"/open_batch/{wf}")],
            "close_batch": [("POST", f"/close_batch/{wf}")],
            "open_batch infa": [("POST", f"/open_batch/{wf}/infa")],
        }
        for label, ((method, path),) in seq.items():
            if label == "close_batch":
                cmds, mix = _paired(r, http, calls, ("POST", f"/open_batch/{wf}"), (method, path))
                rt = _paired_trips(trips, ("POST", f"/open_batch/{wf}"), (method, path))
            else:
                cmds, mix = commands_per_call(r, lambda: http.ok(method, path), calls)
                rt = trips.per_call(method, path)
            report["redis"][label] = {"commands": cmds, "mix": mix, "round_trips": rt}
        reopen = ("POST", f"/open_batch/{wf}")
        cmds, mix = _paired(r, http, calls, reopen, reopen)
        report["redis"]["open_batch re-open"] = {"commands": cmds, "mix": mix,
                                                 "round_trips": _paired_trips(trips, reopen, reopen)}
        http.ok("POST", f"/close_batch/{wf}")

        # -- job steps: latency, commands, round trips ---------------------------------------
        for n in mode["steps"]:
            swf = f"steps{n}"
            samples = mode["big_samples"] if n >= 1000 else mode["samples"]
            get_t = [http.call("GET", f"/get_status/{swf}")[2] for _ in range(samples)]
            base_http = Http(base.url)
            base_t = [base_http.call("GET", f"/get_status/{swf}")[2] for _ in range(samples)]
            base_http.close()
            open_t, close_t = [], []
            for _ in range(samples):
                status, body, t = http.call("POST", f"/open_batch/{swf}")
                _check(status, body)
                open_t.append(t)
                status, body, t = http.call("POST", f"/close_batch/{swf}")
                _check(status, body)
                close_t.append(t)
            get_cmds, _ = commands_per_call(r, lambda: http.ok("GET", f"/get_status/{swf}"), 3)
            oc_cmds, _ = _paired(r, http, 3, ("POST", f"/open_batch/{swf}"), ("POST", f"/close_batch/{swf}"))
            report["steps"][n] = {
                "get_p50_ms": median_ms(get_t), "baseline_p50_ms": median_ms(base_t),
                "open_p50_ms": median_ms(open_t), "close_p50_ms": median_ms(close_t),
                "get_commands": get_cmds, "close_commands": oc_cmds,
                "get_round_trips": trips.per_call("GET", f"/get_status/{swf}"),
                "open_round_trips": _paired_trips(trips, None, ("POST", f"/open_batch/{swf}")),
                "close_round_trips": _paired_trips(trips, ("POST", f"/open_batch/{swf}"),
                                                   ("POST", f"/close_batch/{swf}")),
                "snapshot_bytes": _snapshot_bytes(r, swf),
            }

        # -- history: snapshot memory, listing with many batches kept ---------------------------
        print("history:", file=sys.stderr, flush=True)
        report["history"] = _history(r, svc, server, cfg_dir, mode, http, report)
        http.close()
        report["loadgen_ceiling_rps"] = _ceiling(mode)
    finally:
        for proc in (svc, base, hist_svc, other):
            if proc:
                cleanup(proc)
        server.cleanup()
        if other_server:
            other_server.cleanup()
    report["elapsed_s"] = time.perf_counter() - started
    report["targets"] = targets(report)
    if against:
        report["versus"] = versus(report)
    print(render(report))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2, default=str)
    return 0


def _check(status: int, body: bytes) -> None:
    if not 200 <= status < 300:
        raise RuntimeError(f"answered {status}: {body[:300]!r}")


def _paired(r, http, calls, first, second) -> tuple[float, dict]:
    """Commands per `second` call, each preceded by an uncounted `first` (e.g. close after open)."""
    total: dict[str, float] = {}
    for _ in range(calls):
        if first:
            http.ok(*first)
        _cmds, mix = commands_per_call(r, lambda: http.ok(*second), 1)
        for k, v in mix.items():
            total[k] = total.get(k, 0) + v / calls
    return sum(total.values()), total


def _paired_trips(trips: RoundTrips, first, second, calls: int = 3) -> float:
    """Round trips per `second` call, each preceded by an uncounted `first` call."""
    counted = 0.0
    for i in range(calls + 1):
        if first:
            trips.client.open(first[1], method=first[0])
        trips_now = trips.per_call(second[0], second[1], calls=1, warm=False)
        if i:  # the first pair only warms the connection and the script cache
            counted += trips_now
    return counted / calls


def _snapshot_bytes(r, wf: str) -> dict:
    """MEMORY USAGE of wf's latest batch snapshot <wf>-<batch_id> (closed), and its encoding."""
    state = r.hgetall(wf)
    batch_id = max(json.loads(v).get("batch_id") or 0 for v in state.values())
    key = f"{wf}-{batch_id}"
    if not r.exists(key):
        return {"key": key, "bytes": None}
    payload = sum(len(k) + len(v) for k, v in r.hgetall(key).items())
    return {"key": key, "bytes": r.memory_usage(key, samples=0), "encoding": r.object("encoding", key),
            "payload_bytes": payload}


def _history(r, svc, server, cfg_dir, mode, http, report) -> dict:
    result: dict = {"snapshot_3_steps": _snapshot_bytes(r, spread_names()[0])}
    status, _body, _t = http.call("GET", "/history/hist")
    if status != 200:
        result["listing"] = None
        result["listing_note"] = f"GET /history/<wf> answered {status}: endpoint not available"
        return result
    hist = ServiceProcess(server.url, cfg_dir, workers=WORKERS, env={"BATCHY_HISTORY_KEEP": str(HISTORY_KEEP)})
    try:
        report["start_s"]["batchy (2nd)"] = start_timed(hist)
        h = Http(hist.url)
        for _ in range(mode["history"]):
            h.ok("POST", "/open_batch/hist")
        kept = r.zcard("batchy:history:hist")
        times = [h.call("GET", "/history/hist")[2] for _ in range(max(5, mode["samples"] // 4))]
        status, body, _t = h.call("GET", "/history/hist")
        h.close()
        result["listing"] = {"batches_kept": kept, "p50_ms": median_ms(times),
                             "p99_ms": sorted(times)[int(0.99 * (len(times) - 1))] * 1000,
                             "status": status, "bytes": len(body)}
    finally:
        cleanup(hist)
    return result


def _ceiling(mode) -> float | None:
    """The Python generator's own limit, so a reader can see it is not the bottleneck."""
    if drive.engine() != "python" or mode["duration"] < 1:
        return None
    return load.ceiling(min(3.0, mode["duration"]))["rps"]


# -- verdicts and the table -------------------------------------------------------------

ROWS = [
    # (section, label, phase, tag, baseline phase)
    ("spread over 64 workflows", "baseline (1 HGETALL)", "baseline spread", "get", None),
    ("spread over 64 workflows", "get_status", "get_status spread", "get", "baseline spread"),
    ("spread over 64 workflows", "open_batch json", "open/close json spread", "open", "baseline spread"),
    ("spread over 64 workflows", "close_batch", "open/close json spread", "close", "baseline spread"),
    ("spread over 64 workflows", "open_batch infa", "open/close infa spread", "open", "baseline spread"),
    ("spread over 64 workflows", "re-open (batch still open)", "re-open spread", "open", "baseline spread"),
    ("spread over 64 workflows", "open_batch, window policy", "open/close policy spread", "open", "baseline spread"),
    ("spread over 64 workflows", "close_batch, window policy", "open/close policy spread", "close",
     "baseline spread"),
    ("all on one workflow", "baseline (1 HGETALL)", "baseline one wf", "get", None),
    ("all on one workflow", "get_status", "get_status one wf", "get", "baseline one wf"),
    ("all on one workflow", "open_batch json", "open/close one wf", "open", "baseline one wf"),
    ("all on one workflow", "close_batch job=", "open/close one wf", "close", "baseline one wf"),
]


def aggregate(rounds: list[dict]) -> dict:
    """Return one load run's figures over its rounds: medians, and the sums of failures."""
    med = statistics.median
    tags = {}
    for tag in rounds[0]["tags"]:
        figs = [r["tags"][tag] for r in rounds]
        tags[tag] = {"rate": med(f["rate"] for f in figs), "p50": med(f["p50"] for f in figs),
                     "p99": med(f["p99"] for f in figs), "non2xx": sum(f["non2xx"] for f in figs),
                     "count": sum(f["count"] for f in figs)}
    return {
        "tags": tags,
        "total_rps": med(r["total_rps"] for r in rounds),
        "service_cpu_ms": med(r["service_cpu_ms"] for r in rounds),
        "redis_cpu_ms": med(r["redis_cpu_ms"] for r in rounds),
        "socket_errors": sum(r["socket_errors"] for r in rounds),
        "failures": [line for r in rounds for line in r["failures"]][:20],
        "loadgen_cpu_share": max(r["loadgen_cpu_share"] for r in rounds),
    }


def round_ratios(report, phase: str, tag: str, base: str) -> list[float]:
    """Batchy's rate over the baseline's, round by round."""
    pairs = zip(report["load"][phase]["rounds"], report["load"][base]["rounds"])
    return [mine["tags"][tag]["rate"] / theirs["tags"]["get"]["rate"] for mine, theirs in pairs]


# --against: the other checkout's twin of each of Batchy's loads, and of its rows in the table.
AGAINST = " (other)"
# Every Batchy load has its twin, the one-workflow loads too: the two checkouts' services and
# redis-servers then hold the same state and serve the same calls (only the baseline reads
# this checkout's redis-server).
AGAINST_PHASES = ("get_status spread", "open/close json spread", "open/close infa spread", "re-open spread",
                  "open/close policy spread", "get_status one wf", "open/close one wf")


def table_rows(report) -> list[tuple]:
    """ROWS, and with --against each of Batchy's rows again for the other checkout, after it."""
    if not report.get("against"):
        return ROWS
    rows = []
    for row in ROWS:
        rows.append(row)
        section, label, phase, tag, base = row
        if phase in AGAINST_PHASES:
            rows.append((section, label + AGAINST, phase + AGAINST, tag, base))
    return rows


def row_figures(report):
    """Yield (section, label, figures, ratio, ratios per round) for every row of the table."""
    for section, label, phase, tag, base in table_rows(report):
        fig = report["load"][phase]["tags"][tag]
        ratios = round_ratios(report, phase, tag, base) if base else []
        yield section, label, fig, (statistics.median(ratios) if ratios else None), ratios


def versus(report) -> list[dict]:
    """With --against: each row's rate over the other checkout's twin row, round by round.

    Both load runs of a pair ran back to back in the same round, so this ratio shares the
    round's machine noise; a checkout measured against itself reads about 1.00 here.
    """
    out = []
    for section, label, phase, tag, _base in ROWS:
        if phase not in AGAINST_PHASES:
            continue
        pairs = zip(report["load"][phase]["rounds"], report["load"][phase + AGAINST]["rounds"])
        ratios = [mine["tags"][tag]["rate"] / theirs["tags"][tag]["rate"] for mine, theirs in pairs]
        out.append({"section": section, "label": label, "median": statistics.median(ratios), "rounds": ratios,
                    "ahead": sum(r > 1 for r in ratios)})
    return out


def targets(report) -> list[dict]:
    verdicts = []

    def add(name, measured, met):
        verdicts.append({"target": name, "measured": measured, "met": bool(met)})

    # The verdicts judge this checkout; the other checkout's rows (--against) are only shown.
    rows = [row for row in row_figures(report) if not row[1].endswith(AGAINST)]
    ratios = {(s, label): ratio for s, label, _f, ratio, _r in rows}
    spread = "spread over 64 workflows"
    add("get_status >= 0.9x baseline", f"{ratios[(spread, 'get_status')]:.2f}x", ratios[(spread, "get_status")] >= 0.9)
    for label in ("open_batch json", "open_batch infa", "close_batch", "re-open (batch still open)",
                  "open_batch, window policy"):
        add(f"{label} >= 0.7x baseline", f"{ratios[(spread, label)]:.2f}x", ratios[(spread, label)] >= 0.7)
    for section in (spread, "all on one workflow"):
        worst = max((f["p99"], label) for s, label, f, _r, _rs in rows if s == section and "baseline" not in label)
        # No service on this stack beats the floor's own latency: at a fixed number of
        # connections the mean is connections / rate (Little's law), and p99 >= mean.
        base = next(f for s, label, f, _r, _rs in rows if s == section and "baseline" in label)
        add(f"p99 < 25 ms at {report['connections']} connections ({section})",
            f"{worst[0]:.1f} ms ({worst[1]}); baseline's own p99 {base['p99']:.1f} ms, "
            f"mean {1000 * report['connections'] / base['rate']:.1f} ms", worst[0] < 25)
    bad = sum(f["non2xx"] for _s, _l, f, _r, _rs in rows)
    bad += sum(v["socket_errors"] for k, v in report["load"].items() if "baseline" not in k and AGAINST not in k)
    add("zero non-2xx responses under load", f"{bad}", bad == 0)
    reads = [report["redis"]["get_status"]["round_trips"]] + [s["get_round_trips"] for s in report["steps"].values()]
    add("<= 1 Redis round trip per read (any job count)", f"max {max(reads):g}", max(reads) <= 1)
    writes = [report["redis"][k]["round_trips"]
              for k in ("open_batch json", "open_batch infa", "close_batch", "open_batch re-open")]
    writes += [s[k] for s in report["steps"].values() for k in ("open_round_trips", "close_round_trips")]
    add("<= 3 Redis round trips per state change (any job count)", f"max {max(writes):g}", max(writes) <= 3)
    big = report["steps"].get(1000) or report["steps"].get("1000")
    if big:
        add("1000-step get_status < 20 ms median", f"{big['get_p50_ms']:.1f} ms", big["get_p50_ms"] < 20)
    snap = report["history"]["snapshot_3_steps"]["bytes"]
    add("3-step history snapshot <= 1 KB", f"{snap} bytes", snap is not None and snap <= 1024)
    return verdicts


def render(report) -> str:
    m = report["machine"]
    out = [
        f"Batchy benchmark ({report['mode']}): {report['connections']} connections, {report['rounds']} rounds of "
        f"{report['duration']:g} s per run, "
        f"load from {report['engine']}; {m['nproc']} x {m['cpu']}, Python {m['python']}, Redis {m['redis']}, "
        f"gunicorn {m['gunicorn']} (gthread, {WORKERS} workers)",
        "",
        f"{'':36}{'calls/s':>9}{'x base':>8}{'rounds':>12}{'p50 ms':>8}{'p99 ms':>8}{'non-2xx':>9}",
    ]
    section = None
    for sec, label, fig, ratio, ratios in row_figures(report):
        if sec != section:
            out.append(sec)
            section = sec
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}" if len(ratios) > 1 else ""
        out.append(f"  {label:34}{fig['rate']:9.0f}{(f'{ratio:.2f}' if ratio else '-'):>8}{spread:>12}"
                   f"{fig['p50']:8.2f}{fig['p99']:8.2f}{fig['non2xx']:9d}")
    out.append("  calls/s = connections / mean latency (per call type; open and close alternate per connection);")
    out.append("  x base = median over rounds of (Batchy / baseline of the same round), rounds = lowest-highest;")
    out.append("  calls/s, p50 and p99 = medians over rounds; non-2xx = all rounds")
    if report.get("against"):
        out.append(f"  (other) = the Batchy of {report['against']}, its load run next to this one's in every round")
    load = report["load"]
    out += ["", f"{'load run':36}{'req/s':>9}{'svc CPU ms/call':>17}{'redis CPU ms/call':>19}{'socket errs':>13}"]
    for label, fig in load.items():
        out.append(f"  {label:34}{fig['total_rps']:9.0f}{fig['service_cpu_ms']:17.3f}{fig['redis_cpu_ms']:19.3f}"
                   f"{fig['socket_errors']:13d}")
    bases = [f"{r['tags']['get']['rate']:.0f}" for r in load["baseline spread"]["rounds"]]
    share = max(v["loadgen_cpu_share"] for v in load.values())
    out.append(f"  baseline spread, round by round: {' / '.join(bases)} calls/s; "
               f"load generator used at most {share:.0%} of one core")
    for label, fig in load.items():
        for line in fig["failures"][:3]:
            out.append(f"  non-2xx in {label}: {line[:160]}")
    if report.get("loadgen_ceiling_rps"):
        out.append(f"  Python load generator ceiling (instant server): {report['loadgen_ceiling_rps']:.0f} req/s")
    if report.get("versus"):
        out += ["", f"{'this checkout / the other, same round':48}{'median':>8}{'rounds':>12}{'ahead in':>10}"]
        for v in report["versus"]:
            rounds = v["rounds"]
            out.append(f"  {v['label'] + (' (one wf)' if v['section'] != ROWS[0][0] else ''):46}{v['median']:8.2f}"
                       f"{min(rounds):6.2f}-{max(rounds):.2f}{v['ahead']:>6} of {len(rounds)}")
    out += ["", f"{'Redis per API call':36}{'commands':>9}{'round trips':>13}   command mix"]
    for label, fig in report["redis"].items():
        mix = " ".join(f"{k}:{v:.3g}" for k, v in sorted(fig["mix"].items(), key=lambda kv: -kv[1]))
        out.append(f"  {label:34}{fig['commands']:9.1f}{fig['round_trips']:13g}   {mix}")
    out += ["", f"{'job steps (sequential, 1 connection)':36}{'get p50':>9}{'base p50':>9}{'open p50':>9}"
                f"{'close p50':>10}{'cmds get/open+close':>21}{'trips get/open/close':>22}{'snapshot B':>11}"]
    for n, s in report["steps"].items():
        out.append(f"  {str(n) + ' steps':34}{s['get_p50_ms']:9.2f}{s['baseline_p50_ms']:9.2f}{s['open_p50_ms']:9.2f}"
                   f"{s['close_p50_ms']:10.2f}{s['get_commands']:>10.0f} / {s['close_commands']:<8.0f}"
                   f"{s['get_round_trips']:>10g}/{s['open_round_trips']:g}/{s['close_round_trips']:g}"
                   f"{(s['snapshot_bytes'].get('bytes') or 0):>13}")
    hist = report["history"]
    snap = hist["snapshot_3_steps"]
    out += ["", f"history snapshot of a 3-step workflow ({snap['key']}): {snap['bytes']} bytes MEMORY USAGE, "
                f"encoding {snap.get('encoding')}, {snap.get('payload_bytes')} bytes of fields and values"]
    if hist["listing"]:
        li = hist["listing"]
        out.append(f"GET /history/<wf> with {li['batches_kept']} batches kept: p50 {li['p50_ms']:.2f} ms, "
                   f"p99 {li['p99_ms']:.2f} ms ({li['bytes']} bytes)")
    else:
        out.append(f"GET /history/<wf> with 10000 batches kept: n/a ({hist['listing_note']})")
    starts = ", ".join(f"{k} {v:.2f} s" for k, v in report["start_s"].items())
    out += [f"start until /healthz answers: {starts}", "", "targets"]
    for v in report["targets"]:
        out.append(f"  {'met   ' if v['met'] else 'MISSED'}  {v['target']:58} {v['measured']}")
    out.append(f"\n(run took {report['elapsed_s']:.0f} s)")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
