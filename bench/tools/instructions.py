"""Instructions per API call, Batchy against the baseline: a figure a noisy machine cannot move.

    .venv/bin/python -m bench.tools.instructions          # ~4 minutes, needs valgrind
    .venv/bin/python -m bench.tools.instructions --cpu    # CPU microseconds instead (no valgrind; noisy)
    .venv/bin/python -m bench.tools.instructions --root /tmp/before --only json reopen   # another checkout, two rows
    .venv/bin/python -m bench.tools.instructions --redis  # redis-server's instructions per call instead (the Lua)
    .venv/bin/python -m bench.tools.instructions --cprofile reopen   # where one scenario's calls spend (cProfile)
    .venv/bin/python -m bench.tools.instructions --opcodes json --many 50 --top 60   # bytecodes per function (diffable)
    .venv/bin/python -m bench.tools.instructions --served --many 50   # the served path: a gunicorn worker under callgrind

Each scenario runs the two apps in one Python process, straight through WSGI (no gunicorn,
no sockets to the client), on a redis-server of its own, and counts the user-space
instructions of that process with `valgrind --tool=callgrind`. Each scenario runs twice, with
few and with many calls; the difference divided by the extra calls is the cost of one call,
free of start-up and imports. Both runs use one hash seed, and the app runs no background
repairer. Scenario hot is bench.run's one-workflow load from one caller: each open opens
all 32 steps of workflow hot (superseding the batch still open), each close ends one.
`--root` imports `batchy` from another checkout (round 5's, say) under this
checkout's driver and baseline, so two checkouts are measured the same way. `--redis` runs
the redis-server under callgrind instead (hz 1) and the driver at full speed: what the
scripts and commands of a call cost Redis. `--cprofile` profiles one scenario in-process by
this thread's CPU time (waiting on Redis counts for nothing); `--opcodes` counts the bytecodes
each function executes (the same on any machine: run it with and without --root and diff).
`--served` counts what a `batchy serve` worker executes per call, gunicorn included, with the
calls made over a socket (bench.tools.served); `--cache` adds callgrind's simulated cache misses.

A count repeats within about 1 % on one checkout whatever else the machine runs, so it
shows what a change to the code did; across two checkouts the baseline's own count (the
same code) moves by up to 5 % with what else the process holds. The load runs of bench.run
show what a change does to throughput (gunicorn, the kernel and Redis add to both sides).
"""
from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

# Where `python -m bench.tools.instructions` finds the bench package under valgrind.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# scenario: (label, calls per iteration)
SCENARIOS = {
    "base": ("baseline (1 HGETALL)", 1),
    "get": ("get_status", 1),
    "json": ("open_batch json + close_batch", 2),
    "infa": ("open_batch infa + close_batch", 2),
    "reopen": ("open_batch re-open (batch open)", 1),
    "policy": ("open_batch + close_batch, window policy", 2),
    "hot": ("open_batch + close_batch job=, 32 steps", 2),
}


def drive(mode: str, iterations: int, redis_url: str, profiler=None) -> float:
    """Run iterations of mode in this process; return CPU seconds per iteration."""
    cfg = tempfile.mkdtemp(prefix="batchy-instr-")
    try:
        return _drive(mode, iterations, redis_url, cfg, profiler)
    finally:
        shutil.rmtree(cfg, ignore_errors=True)


def _drive(mode: str, iterations: int, redis_url: str, cfg: str, profiler=None) -> float:
    from batchy import create_app

    from ..baseline import create_baseline_app
    from ..procs import write_workflows

    write_workflows(cfg, 32, [1])
    os.environ["BATCHY_REDIS_URL"] = redis_url
    # No auto_backfill repairer: its rounds (every 48-60 s, a read of the whole fleet) would
    # land in a long run under valgrind and not in a short one, and are no call's cost.
    app = create_app({"BATCHY_REDIS_URL": redis_url, "BATCHY_CFG_DIR": cfg, "BATCHY_AUTO_BACKFILL_INTERVAL": 0})
    base = create_baseline_app()

    def call(target, method: str, path: str) -> None:
        path, _, query = path.partition("?")
        environ = {
            "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "5000", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr, "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "127.0.0.1:5000", "CONTENT_LENGTH": "0" if method == "POST" else "",
            "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
        }
        statuses = []
        body = target(environ, lambda status, headers, exc_info=None: statuses.append(status))
        b"".join(body)
        body.close()
        if not statuses[0].startswith("2"):
            raise RuntimeError(f"{method} {path} answered {statuses[0]}")

    wfs, one_calls = scenario(mode)
    for wf in wfs:
        call(app, "POST", f"/load_cfg/{wf}")
    apps = {"app": app, "base": base}

    def one(i: int) -> None:
        for target, method, path in one_calls(i):
            call(apps[target], method, path)

    for i in range(max(len(wfs), 32)):  # every cache and connection warm before counting
        one(i)
    if profiler is not None:
        profiler.enable()
    started = time.process_time()
    for i in range(iterations):
        one(i)
    if profiler is not None:
        profiler.disable()
    return (time.process_time() - started) / max(iterations, 1)


def scenario(mode: str):
    """Return (the workflows to load, one(i)): the calls (target, method, path) of iteration i of mode.

    target "app" is Batchy, "base" the baseline. The in-process driver and --served
    (bench.tools.served) make the same calls.
    """
    from ..procs import policy_names, spread_names

    wfs = policy_names() if mode == "policy" else ["hot"] if mode == "hot" else spread_names()
    suffix = "/infa" if mode == "infa" else ""

    def one(i: int) -> list[tuple[str, str, str]]:
        wf = wfs[i % len(wfs)]
        if mode == "base":
            return [("base", "GET", f"/get_status/{wf}")]
        if mode == "get":
            return [("app", "GET", f"/get_status/{wf}")]
        if mode == "reopen":  # the workflow's batch is still open: it is abandoned for a new one
            return [("app", "POST", f"/open_batch/{wf}")]
        if mode == "hot":  # bench.run's one-workflow load, one caller: open all 32 steps, close one
            return [("app", "POST", f"/open_batch/{wf}"), ("app", "POST", f"/close_batch/{wf}?job=s{i % 32:02d}")]
        return [("app", "POST", f"/open_batch/{wf}{suffix}"), ("app", "POST", f"/close_batch/{wf}")]

    return wfs, one


def _env() -> dict[str, str]:
    """The environment of a driver process: BENCH_BATCHY_ROOT names the checkout it imports batchy from;
    one hash seed, so the few and the many runs lay out their dicts and sets alike."""
    return {**os.environ, "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0")}


def _use_root(root: str | None) -> None:
    """Import `batchy` from root (another checkout) in this process; before any batchy import."""
    if not root:
        return
    root = os.path.abspath(root)
    if not os.path.isdir(os.path.join(root, "batchy")):
        raise SystemExit(f"{root} holds no batchy package")
    if "batchy" in sys.modules:
        raise RuntimeError("batchy was imported before --root took effect")
    sys.path.insert(0, root)
    os.environ["BENCH_BATCHY_ROOT"] = root


def opcodes(mode: str, iterations: int, redis_url: str, top: int) -> None:
    """Print the bytecodes one scenario's calls execute per iteration, in all and per function.

    Counted with sys.settrace's opcode events, so the same code gives the same figures on any
    machine: two checkouts' listings (--root) diff function by function. A bytecode is not a
    fixed cost (a call into C counts one), so it tells where Python work moved, and
    callgrind how much it weighs.
    """
    import collections

    counts: collections.Counter = collections.Counter()

    def local(frame, event, arg):
        if event == "opcode":
            code = frame.f_code
            counts[(code.co_filename, code.co_name)] += 1
        return local

    def tracer(frame, event, arg):
        frame.f_trace_opcodes, frame.f_trace_lines = True, False
        return local

    class Tracing:  # drive() turns its profiler on and off around the counted calls
        def enable(self):
            sys.settrace(tracer)

        def disable(self):
            sys.settrace(None)

    drive(mode, iterations, redis_url, profiler=Tracing())
    root = os.path.dirname(os.path.dirname(os.path.abspath(sys.modules["batchy"].__file__)))
    print(f"{sum(counts.values()) / iterations:,.1f} bytecodes per iteration of {mode} "
          f"({SCENARIOS[mode][1]} call(s)), batchy from {root}")
    for (filename, name), count in counts.most_common(top):
        where = filename.replace(root + os.sep, "").split("site-packages" + os.sep)[-1]
        print(f"  {count / iterations:10,.1f}  {where}:{name}")


def cprofile(mode: str, iterations: int, redis_url: str, top: int) -> None:
    """Print the functions one scenario's calls spend most in (cProfile, after a warm-up)."""
    import cProfile
    import pstats

    # This thread's CPU time: waiting on Redis and other processes' turns on the CPU count for nothing.
    profiler = cProfile.Profile(time.thread_time_ns, 1e-9)
    drive(mode, iterations, redis_url, profiler=profiler)
    stats = pstats.Stats(profiler, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def callgrind(mode: str, iterations: int, redis_url: str) -> int:
    """Return the instructions a process running `iterations` of mode executes in all."""
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, "-m", "bench.tools.instructions", "--drive", mode, str(iterations), redis_url],
        capture_output=True, text=True, cwd=ROOT, env=_env(),
    )
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"callgrind run of {mode} failed:\n{proc.stderr[-2000:]}")
    return int(found.group(1))


def redis_callgrind(mode: str, iterations: int) -> int:
    """Return the instructions a redis-server of its own executes while a driver runs `iterations` of mode.

    The server runs under callgrind (hz 1, so its timer adds little); the driver runs at full speed.
    """
    from batchy.testing import free_port, wait_for

    # BENCH_REDIS_CALLGRIND_OUT=<file> keeps the profile for callgrind_annotate.
    folder = tempfile.mkdtemp(prefix="batchy-instr-redis-")
    port = free_port()
    with open(os.path.join(folder, "valgrind.err"), "w+") as err:
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + os.environ.get("BENCH_REDIS_CALLGRIND_OUT", "/dev/null"),
             shutil.which("redis-server"),
             "--port", str(port), "--bind", "127.0.0.1", "--dir", folder, "--save", "", "--appendonly", "no",
             "--hz", "1", "--logfile", os.path.join(folder, "redis.log")],
            stdout=subprocess.DEVNULL, stderr=err)
        try:
            import redis

            wait_for(lambda: redis.Redis(port=port).ping(), timeout=60, what="redis-server under callgrind")
            url = f"redis://127.0.0.1:{port}/0"
            subprocess.run([sys.executable, "-m", "bench.tools.instructions", "--drive", mode, str(iterations), url],
                           check=True, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL)
        finally:
            server.terminate()
            server.wait(60)
        err.seek(0)
        text = err.read()
    shutil.rmtree(folder, ignore_errors=True)
    found = re.search(r"Collected : (\d+)", text)
    if not found:
        raise RuntimeError(f"callgrind run of redis-server ({mode}) failed:\n{text[-2000:]}")
    return int(found.group(1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="CPU time per call instead of instructions")
    parser.add_argument("--few", type=int, default=20, help="iterations of the short run")
    parser.add_argument("--many", type=int, default=220, help="iterations of the long run")
    parser.add_argument("--root", help="the checkout to import batchy from (default: this one)")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, help="these scenarios only (the baseline is always run)")
    parser.add_argument("--cprofile", choices=SCENARIOS, metavar="MODE",
                        help="profile MODE's calls with cProfile instead (--many iterations; no valgrind)")
    parser.add_argument("--opcodes", choices=SCENARIOS, metavar="MODE",
                        help="count MODE's bytecodes per function instead (--many iterations; no valgrind)")
    parser.add_argument("--redis", action="store_true",
                        help="count redis-server's instructions per call instead of Python's (the Lua, the commands)")
    parser.add_argument("--served", action="store_true",
                        help="count a `batchy serve` worker's instructions per call over a socket instead "
                             "(gunicorn included; bench.tools.served)")
    parser.add_argument("--cache", action="store_true", help="with --served: simulate the caches too (I1, D1 misses)")
    parser.add_argument("--top", type=int, default=30, help="rows of the --cprofile listings")
    parser.add_argument("--drive", nargs=3, metavar=("MODE", "N", "REDIS_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    root = args.root or os.environ.get("BENCH_BATCHY_ROOT")
    if args.served:  # only the service runs root's batchy: this process drives it with this checkout's
        if not shutil.which("valgrind"):
            print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
            return 2
        if root and not os.path.isdir(os.path.join(root, "batchy")):
            raise SystemExit(f"{root} holds no batchy package")
        from . import served

        modes = [m for m in SCENARIOS if not args.only or m == "base" or m in args.only]
        print(served.render(served.count(modes, args.many, root and os.path.abspath(root), args.cache), args.cache))
        return 0
    _use_root(root)
    from batchy.testing import RedisServer

    if args.drive:
        mode, n, url = args.drive
        drive(mode, int(n), url)
        return 0
    if args.cprofile or args.opcodes:
        server = RedisServer().start()
        try:
            if args.cprofile:
                cprofile(args.cprofile, args.many, server.url, args.top)
            else:
                opcodes(args.opcodes, args.many, server.url, args.top)
        finally:
            server.cleanup()
        return 0
    if not args.cpu and not shutil.which("valgrind"):
        print("valgrind is not installed (apt-get install valgrind), or use --cpu", file=sys.stderr)
        return 2

    server = RedisServer().start()
    rows = {}
    scenarios = {m: v for m, v in SCENARIOS.items() if not args.only or m == "base" or m in args.only}
    import batchy

    print(f"batchy from {os.path.dirname(os.path.dirname(os.path.abspath(batchy.__file__)))}", file=sys.stderr)
    try:
        for mode, (label, calls) in scenarios.items():
            if args.cpu:
                per_call = drive(mode, args.many, server.url) / calls * 1e6
            elif args.redis:
                few, many = redis_callgrind(mode, args.few), redis_callgrind(mode, args.many)
                per_call = (many - few) / (args.many - args.few) / calls
            else:
                few, many = callgrind(mode, args.few, server.url), callgrind(mode, args.many, server.url)
                per_call = (many - few) / (args.many - args.few) / calls
            rows[mode] = per_call
            print(f"  {label}: {per_call:,.0f}", file=sys.stderr, flush=True)
    finally:
        server.cleanup()
    unit = "CPU us per call" if args.cpu else "redis-server instr. per call" if args.redis else "instructions per call"
    print(f"\n{'in-process, one thread, WSGI':40}{unit:>24}{'base / this':>14}")
    for mode, (label, _calls) in scenarios.items():
        ratio = "-" if mode == "base" else f"{rows['base'] / rows[mode]:.2f}"
        print(f"  {label:38}{rows[mode]:>24,.{1 if args.cpu else 0}f}{ratio:>14}")
    print("  (open + close rows: the mean of the two calls; base / this is the throughput ratio one\n"
          "   core would give if nothing but this Python work counted)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
