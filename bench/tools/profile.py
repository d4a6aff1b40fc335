"""Profile `batchy serve` and the baseline under load with py-spy: where does a call's CPU go?

    .venv/bin/pip install py-spy
    .venv/bin/python -m bench.tools.profile [--duration 8] [--out /tmp/batchy-profile] [--only get_status]
    .venv/bin/python -m bench.tools.profile --root /tmp/before --only open_close_json   # another checkout's service

For each scenario it drives 32 connections (as bench.run does) while `py-spy record`
samples the gunicorn master and its workers (on-CPU samples only), then prints CPU
milliseconds per call split by package (innermost frame) and the heaviest functions,
inclusive. The raw collapsed stacks are kept (feed them to flamegraph.pl for a picture).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

from .. import drive, plans
from ..procs import BaselineProcess, Http, RedisServer, ServiceProcess, cleanup, spread_names, write_workflows

RATE = 250
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
PACKAGES = ("batchy", "redis", "flask", "werkzeug", "gunicorn", "jinja2", "click", "json", "logging", "yaml",
            "zoneinfo", "datetime", "re", "socket", "selectors", "threading", "http", "email", "urllib")


def package(path: str) -> str:
    """Return a short owner for a source file: batchy, redis, werkzeug, stdlib json..."""
    parts = path.replace("\\", "/").split("/")
    for name in PACKAGES:
        if name in parts or f"{name}.py" in parts:
            return name
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1]
    return "other (stdlib/C)"


def parse(raw_path: str):
    """Yield (frames, count) from py-spy's raw (collapsed) output; frames outermost first."""
    with open(raw_path) as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if stack:
                yield stack.split(";"), int(count)


def summarise(raw_path: str, calls: int, top: int = 18) -> str:
    by_package: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for frames, count in parse(raw_path):
        total += count
        parsed = [FRAME.match(f) for f in frames]
        innermost = next((m for m in reversed(parsed) if m), None)
        by_package[package(innermost["file"]) if innermost else "?"] += count
        seen = set()
        for m in parsed:
            if not m:
                continue
            key = f"{m['func']} ({_short(m['file'])})"
            if key not in seen:  # recursion counts once
                seen.add(key)
                inclusive[key] += count
    per_call = lambda n: n / RATE / max(calls, 1) * 1000  # noqa: E731 - ms of CPU per call
    lines = [f"  {total} samples, {calls} calls: {per_call(total):.2f} ms CPU per call (all processes)",
             "  by package (innermost frame), ms CPU per call:"]
    for name, n in by_package.most_common(10):
        lines.append(f"    {name:22}{per_call(n):7.3f}  {n / total:5.1%}")
    lines.append("  heaviest functions (inclusive), ms CPU per call:")
    for name, n in inclusive.most_common(60):
        if any(skip in name for skip in ("<module>", "run (gunicorn", "_bootstrap", "run (threading", "worker (")):
            continue
        lines.append(f"    {per_call(n):7.3f}  {n / total:5.1%}  {name[:110]}")
        top -= 1
        if not top:
            break
    return "\n".join(lines)


def _short(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    for anchor in ("site-packages", "main", "python3.11", "lib"):
        if anchor in parts:
            return "/".join(parts[parts.index(anchor) + 1:])
    return path


def profile(name: str, proc, url: str, connections, duration: float, out_dir: str) -> str:
    raw = os.path.join(out_dir, f"{name}.txt")
    pyspy = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    args = [pyspy, "record", "--pid", str(proc.proc.pid), "--subprocesses", "--rate", str(RATE),
            "--duration", str(int(duration)), "--nonblocking"]
    spy = subprocess.Popen(args + ["--format", "raw", "--output", raw],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    result = drive.run(url, connections, duration)
    _out, err = spy.communicate(timeout=duration + 60)
    if spy.returncode:
        raise RuntimeError(f"py-spy failed: {err}")
    calls = sum(len(t["lat_us"]) for t in result["tags"].values())
    rps = calls / result["duration"]
    return f"{name}: {rps:.0f} calls/s\n" + summarise(raw, calls) + f"\n  raw stacks: {raw}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--out", default=None, help="folder for the raw stacks (default: a temp folder)")
    parser.add_argument("--only", help="comma-separated scenario names")
    parser.add_argument("--root", metavar="CHECKOUT",
                        help="profile the batchy serve of another checkout (round 5's, say), the same way")
    args = parser.parse_args(argv)
    out_dir = args.out or tempfile.mkdtemp(prefix="batchy-profile-")
    os.makedirs(out_dir, exist_ok=True)
    conns = args.connections
    cfg_dir = tempfile.mkdtemp(prefix="batchy-bench-cfg-")
    write_workflows(cfg_dir, conns, (1000,))
    server = RedisServer().start()
    svc = ServiceProcess(server.url, cfg_dir, cwd=args.root).start()
    base = BaselineProcess(server.url, cfg_dir).start()
    try:
        http = Http(svc.url)
        for name in sorted(os.listdir(cfg_dir)):
            http.ok("POST", f"/load_cfg/{name[:-5]}")
        http.close()
        wfs = spread_names()
        scenarios = {
            "baseline": (base, plans.get_status(wfs, conns)),
            "get_status": (svc, plans.get_status(wfs, conns)),
            "open_close_json": (svc, plans.open_close(wfs, conns, "json")),
            "open_close_infa": (svc, plans.open_close(wfs, conns, "infa")),
            "get_status_1000_steps": (svc, plans.get_status(["steps1000"], conns)),
        }
        only = set(args.only.split(",")) if args.only else set(scenarios)
        drive.run(svc.url, plans.get_status(wfs, conns), 1)  # warm both
        drive.run(base.url, plans.get_status(wfs, conns), 1)
        for name, (proc, plan) in scenarios.items():
            if name in only:
                print(profile(name, proc, proc.url, plan, args.duration, out_dir), flush=True)
    finally:
        cleanup(svc)
        cleanup(base)
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
