"""The pages that show the whole fleet, at 1,000 and 10,000 workflows: time and size of each.

    .venv/bin/python -m bench.fleet                     # 1,000 and 10,000 workflows (about 3 minutes)
    .venv/bin/python -m bench.fleet --sizes 100 1000    # other fleet sizes
    .venv/bin/python -m bench.fleet --smoke             # seconds: only checks the harness works

Run from the repo root. For each size it starts its own redis-server and `batchy serve`
(gunicorn, 2 workers, every setting at its default), loads the fleet through the API
(3 jobs a workflow; a third with a window policy and `expected_by`; half of them opened
and closed once), then restarts the service and asks for each page: its first answer from
the fresh processes ("cold": they read the fleet before answering), then one call a
second for 25 s, past two BATCHY_FLEET_INTERVALs, so the figures include answers given
while a process reads the fleet again in the background ("warm": the median and the
slowest). A second service on the same Redis gives /metrics with BATCHY_METRICS_DETAIL=workflow.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

from .procs import THREE_STEPS, Http, RedisServer, ServiceProcess, cleanup

# A third of the fleet: a window policy (whole hours, at most a day a run) and a daily due time.
WINDOWED = """\
.batchy:
  batch_size: hour
  max_window_hours: 24
  expected_by: "06:00"
""" + THREE_STEPS

PAGES = (
    ("dashboard /", "/"),
    ("dashboard /?page=2", "/?page=2"),
    ("dashboard /?state=late", "/?state=late"),
    ("dashboard /?q=wf00012", "/?q=wf00012"),
    ("/metrics (job)", "/metrics"),
    ("/metrics (job, gzip)", "/metrics#gzip"),
    ("/late", "/late"),
    ("/workflows", "/workflows"),
    ("/workflows?limit=100", "/workflows?limit=100"),
)
WORKFLOW_DETAIL = ("/metrics (workflow)", "/metrics")
# What issue 23 measured on the code before (10,000 workflows), for the report.
BEFORE = {"dashboard /": (5.0, 28e6), "/metrics (job)": (3.9, 17e6), "/late": (0.94, None),
          "/workflows": (0.3, 0.7e6)}


def names(size: int) -> list[str]:
    return [f"wf{i:05d}" for i in range(size)]


def build(service: ServiceProcess, cfg_dir: str, size: int, threads: int = 8) -> float:
    """Write and load size workflows, open and close half of them once; return the seconds taken."""
    for i, wf in enumerate(names(size)):
        with open(os.path.join(cfg_dir, f"{wf}.yaml"), "w") as fh:
            fh.write(WINDOWED if i % 3 == 0 else THREE_STEPS)
    started = time.perf_counter()

    def work(chunk):
        http = Http(service.url)
        try:
            for i, wf in chunk:
                http.ok("POST", f"/load_cfg/{wf}")
                if i % 2 == 0:
                    http.ok("POST", f"/open_batch/{wf}")
                    http.ok("POST", f"/close_batch/{wf}?records_processed={i}")
        finally:
            http.close()

    items = list(enumerate(names(size)))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, [items[k::threads] for k in range(threads)]))
    return time.perf_counter() - started


def request_of(page: str) -> tuple[str, dict]:
    """Return a page's path and headers ("#gzip": a scrape accepting gzip, as Prometheus sends)."""
    path, _, how = page.partition("#")
    return path, {"Accept-Encoding": "gzip"} if how == "gzip" else {}


def sample(service: ServiceProcess, pages, seconds: float) -> dict[str, dict]:
    """Ask for each page: first answers of fresh processes, then once a second for seconds."""
    http = Http(service.url)
    figures = {}
    for label, path in pages:  # both workers are fresh: the first two calls likely reach both
        cold = []
        for _ in range(2):
            status, body, took = http.call("GET", *request_of(path))
            assert status == 200, (path, status, body[:200])
            cold.append(took)
            http.close()
            http = Http(service.url)  # a new connection: gunicorn may hand it to the other worker
        figures[label] = {"cold": max(cold), "bytes": len(body), "warm": []}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        tick = time.monotonic()
        for label, path in pages:
            status, body, took = http.call("GET", *request_of(path))
            assert status == 200, (path, status)
            figures[label]["warm"].append(took)
            figures[label]["bytes"] = len(body)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - tick)))
    http.close()
    for entry in figures.values():
        warm = entry.pop("warm")
        entry["median"] = statistics.median(warm)
        entry["max"] = max(warm)
        entry["calls"] = len(warm)
    return figures


def series(service: ServiceProcess) -> int:
    http = Http(service.url)
    try:
        text = http.ok("GET", "/metrics").decode()
    finally:
        http.close()
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def measure(size: int, seconds: float) -> dict:
    """Build a fleet of size workflows on a redis-server of its own and measure every page."""
    redis_server = RedisServer().start()
    cfg_dir = tempfile.mkdtemp(prefix="bench-fleet-")
    service = ServiceProcess(redis_server.url, cfg_dir)
    detail = ServiceProcess(redis_server.url, cfg_dir, env={"BATCHY_METRICS_DETAIL": "workflow"})
    try:
        service.start()
        built = build(service, cfg_dir, size)
        memory = redis_server.client().info("memory")["used_memory"]
        service.stop()
        service.start()  # fresh processes: nothing read yet
        detail.start()
        figures = sample(service, PAGES, seconds)
        figures.update(sample(detail, [WORKFLOW_DETAIL], min(seconds, 12.0)))
        return {"size": size, "build_seconds": built, "redis_bytes_per_workflow": memory / size,
                "series": {"job": series(service), "workflow": series(detail)}, "pages": figures}
    finally:
        cleanup(detail)
        cleanup(service)
        redis_server.cleanup()
        shutil.rmtree(cfg_dir, ignore_errors=True)


def size_text(n: float | None) -> str:
    if n is None:
        return "-"
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.0f} kB" if n >= 1e3 else f"{n:.0f} B"


def report(results: list[dict]) -> str:
    """Return the table: one row per page, each size's warm median, slowest, cold and size side by side."""
    head = ["page"] + [f"{r['size']:,}: median / max / cold, size" for r in results]
    if results[-1]["size"] == 10000:
        head.append("10,000 before (issue 23)")
    rows = []
    for label, _path in (*PAGES, WORKFLOW_DETAIL):
        row = [label]
        for r in results:
            f = r["pages"][label]
            row.append(f"{f['median']:.3f} / {f['max']:.3f} / {f['cold']:.2f} s, {size_text(f['bytes'])}")
        if len(head) > len(row):
            before = BEFORE.get(label)
            row.append(f"{before[0]} s, {size_text(before[1])}" if before else "-")
        rows.append(row)
    widths = [max(len(str(x)) for x in column) for column in zip(head, *rows)]
    lines = ["  " + "  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.append("")
    for r in results:
        lines.append(f"  {r['size']:,} workflows: built in {r['build_seconds']:.1f} s through the API, "
                     f"Redis {r['redis_bytes_per_workflow'] / 1e3:.1f} kB per workflow, "
                     f"/metrics series: {r['series']['job']:,} (job), {r['series']['workflow']:,} (workflow), "
                     f"{r['pages']['dashboard /']['calls']} warm calls a page")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--seconds", type=float, default=25.0, help="seconds of warm calls per size")
    parser.add_argument("--smoke", action="store_true", help="tiny fleets, a few seconds: checks the harness")
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args(argv)
    sizes, seconds = ([20, 60], 2.0) if args.smoke else (args.sizes, args.seconds)
    results = []
    for size in sizes:
        print(f"building {size:,} workflows...", file=sys.stderr, flush=True)
        results.append(measure(size, seconds))
    print(f"Pages over the whole fleet (seconds; warm: one call a second for {seconds:g} s; cold: a fresh process)")
    print(report(results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
