"""Two checkouts' `batchy serve` side by side: CPU per call and calls/s of each, round by round.

    .venv/bin/python -m bench.tools.pair --against /tmp/before                 # json, infa, re-open, policy
    .venv/bin/python -m bench.tools.pair --against /tmp/before --only reopen --rounds 10
    .venv/bin/python -m bench.tools.pair --against /tmp/before --only infa --perf   # and where the CPU goes (perf)

Each checkout runs its own `batchy serve` (gunicorn, as in production) on its own
redis-server, with the same workflows loaded. Every round runs one short load of each
scenario (bench.plans, 32 connections, spread over 64 workflows) against one service,
then the other, the order swapped every round, so both share the machine's noise. It
prints, per scenario and checkout, the service's CPU per call (all its processes, from
/proc), Redis' CPU per call (the same) and calls/s: the best round and the median. On a
shared machine a load run's figures swing by 30 % between rounds; the best round of
several is the figure least moved by what else ran, and the same estimator on both sides.
No baseline here: `python -m bench.run --against` gives the ratios to the floor. With
--perf, `perf record` samples the service's workers during each measured run, and the table
adds the share of the samples in the interpreter, the kernel and libc (the medians).
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

from .. import drive, plans
from ..procs import Http, RedisServer, ServiceProcess, cleanup, policy_names, spread_names, write_workflows

SCENARIOS = {
    "json": ("open_batch json + close_batch", lambda c: plans.open_close(spread_names(), c, "json")),
    "infa": ("open_batch infa + close_batch", lambda c: plans.open_close(spread_names(), c, "infa")),
    "reopen": ("open_batch re-open (batch open)", lambda c: plans.reopen(spread_names(), c)),
    "policy": ("open + close, window policy", lambda c: plans.open_close(policy_names(), c, "json")),
    "get": ("get_status", lambda c: plans.get_status(spread_names(), c)),
}


def one_run(svc: ServiceProcess, server: RedisServer, plan, duration: float, warmup: float,
            perf: bool = False) -> tuple[float, float, float, dict[str, float]]:
    """Return (service CPU ms per call, Redis CPU ms per call, calls/s, {where: share of the
    perf samples}) of one load run."""
    if warmup:
        drive.run(svc.url, plan, warmup)
    recorder = record(svc, duration) if perf else None
    cpu, rcpu = drive.tree_cpu(svc.proc.pid), drive.tree_cpu(server.proc.pid)  # as bench.run measures a load
    result = drive.run(svc.url, plan, duration)
    cpu, rcpu = drive.tree_cpu(svc.proc.pid) - cpu, drive.tree_cpu(server.proc.pid) - rcpu
    calls = sum(len(tag["lat_us"]) for tag in result["tags"].values())
    if not calls:
        raise RuntimeError(f"no call answered in {duration} s by {svc.url}")
    return cpu / calls * 1000, rcpu / calls * 1000, calls / result["duration"], shares(*recorder) if perf else {}


def record(svc: ServiceProcess, duration: float) -> tuple[subprocess.Popen, str]:
    """Start `perf record` on the service's workers for duration seconds; return it and its data file."""
    workers = subprocess.run(["pgrep", "-P", str(svc.proc.pid)], capture_output=True, text=True).stdout.split()
    data = tempfile.mktemp(prefix="batchy-pair-", suffix=".perf")
    return subprocess.Popen(["perf", "record", "-q", "-F", "499", "-o", data, "-p", ",".join(workers), "--",
                             "sleep", f"{duration:g}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True), data


def shares(recorder: subprocess.Popen, data: str) -> dict[str, float]:
    """Return the share of a recording's samples in the interpreter, the kernel, libc and the rest."""
    _out, err = recorder.communicate(timeout=120)
    try:
        report = subprocess.run(["perf", "report", "-i", data, "--stdio", "--sort", "dso", "--show-nr-samples", "-q"],
                                capture_output=True, text=True, timeout=120).stdout
    finally:
        if os.path.exists(data):
            os.unlink(data)
    counts: collections.Counter = collections.Counter()
    for line in report.splitlines():
        words = line.split()
        if len(words) >= 3 and words[1].isdigit():
            dso = words[2]
            where = ("python" if dso.startswith("libpython") or dso.startswith("python") else
                     "kernel" if dso.startswith("[kernel") else "libc" if dso.startswith("libc.") else "other")
            counts[where] += int(words[1])
    total = sum(counts.values())
    if not total:
        raise RuntimeError(f"perf recorded no sample: {err[-500:]}")
    return {where: counts[where] / total for where in ("python", "kernel", "libc", "other")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", metavar="CHECKOUT", required=True,
                        help="the other checkout's folder (git worktree add /tmp/before <rev>)")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), default=["json", "infa", "reopen", "policy"])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per load run")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds of load before each measured run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--perf", action="store_true", help="also sample the workers with perf record")
    args = parser.parse_args(argv)
    if args.perf and not shutil.which("perf"):
        parser.error("--perf needs perf (apt-get install linux-perf)")
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sides = {"this": here, "other": os.path.abspath(args.against)}
    running = {}
    try:
        for side, root in sides.items():
            cfg = tempfile.mkdtemp(prefix="batchy-pair-cfg-")
            write_workflows(cfg, args.connections, ())
            server = RedisServer().start()
            running[side] = (ServiceProcess(server.url, cfg, cwd=root).start(), server, cfg)
            http = Http(running[side][0].url)
            for wf in [*spread_names(), *policy_names()]:
                http.ok("POST", f"/load_cfg/{wf}")
            http.close()
        figures: dict[tuple[str, str], list[tuple[float, float, float, dict[str, float]]]] = {}
        for i in range(args.rounds):
            order = list(sides) if i % 2 == 0 else list(sides)[::-1]
            for name in args.only:
                plan = SCENARIOS[name][1](args.connections)
                for side in order:
                    svc, server, _cfg = running[side]
                    figures.setdefault((name, side), []).append(one_run(svc, server, plan, args.duration, args.warmup,
                                                                        args.perf))
            print(f"round {i + 1} of {args.rounds} done", file=sys.stderr, flush=True)
    finally:
        for svc, server, cfg in running.values():
            cleanup(svc)
            server.cleanup()
            shutil.rmtree(cfg, ignore_errors=True)
    print(f"{args.rounds} rounds of {args.duration:g} s, {args.connections} connections; this = {sides['this']}, "
          f"other = {sides['other']}")
    print(f"{'':40}{'svc CPU ms/call':>20}{'redis CPU ms/call':>20}{'calls/s':>16}")
    print(f"{'':40}{'best   median':>20}{'best   median':>20}{'best  median':>16}")
    for name in args.only:
        for side in sides:
            runs = figures[(name, side)]
            cpu, rcpu, rate = ([run[k] for run in runs] for k in range(3))
            label = f"  {SCENARIOS[name][0]} ({side})"
            print(f"{label:40}{min(cpu):>11.3f}{statistics.median(cpu):>9.3f}"
                  f"{min(rcpu):>11.3f}{statistics.median(rcpu):>9.3f}{max(rate):>9.0f}{statistics.median(rate):>7.0f}"
                  + ("   perf: " + ", ".join(f"{where} {statistics.median(run[3][where] for run in runs):.0%}"
                                             for where in ("python", "kernel", "libc", "other")) if args.perf else ""))
    print("  best = the round with the least CPU per call (the most calls/s); median over all rounds"
          + ("; perf = the median share of the workers' samples" if args.perf else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
