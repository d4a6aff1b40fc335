"""Drive a load plan from a separate process (wrk, else bench.load) and summarise it.

A plan is one list of [method, path, tag] per connection; each connection cycles its
list one request at a time. With wrk, every connection gets a thread of its own
(-t N -c N) so its Lua state sees its requests strictly in order, and a LuaJIT FFI
monotonic clock times each request by tag (wrk's own histogram cannot split by tag).
"""
from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile

# Where `python -m bench.load` finds the bench package, whatever the caller's working folder.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WRK_LUA = r"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

local PLANS = %(plans)s
local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
  thread:set("id", #threads)
end

function init(args)
  plan = PLANS[id]
  reqs = {}
  for i, step in ipairs(plan) do
    local headers = {}
    if step[1] ~= "GET" then headers["Content-Length"] = "0" end
    reqs[i] = wrk.format(step[1], step[2], headers)
  end
  pos = 0
  started = 0
  out = {}
  failures = {}
end

-- Only a response moves a connection to its next step: wrk calls request() once more
-- than it sends (to verify the script), and a request lost to a broken connection is resent.
function request()
  started = now_us()
  return reqs[pos %% #plan + 1]
end

function response(status, headers, body)
  local step = plan[pos %% #plan + 1]
  pos = pos + 1
  out[#out + 1] = step[3] .. " " .. status .. " " .. (now_us() - started)
  if status >= 300 then
    -- keep what went wrong, one line per failure (the body is the JSON error)
    failures[#failures + 1] = step[2] .. " " .. status .. " " .. string.gsub(string.sub(body or "", 1, 300), "\n", " ")
  end
end

function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    local lines = thread:get("out")
    for _, line in ipairs(lines) do io.write("S ", line, "\n") end
    for _, line in ipairs(thread:get("failures")) do io.write("F ", line, "\n") end
  end
end
"""


def _lua(value) -> str:
    if isinstance(value, (list, tuple)):
        return "{" + ",".join(_lua(v) for v in value) + "}"
    return json.dumps(str(value))  # a JSON string literal is a valid Lua string literal here


def engine() -> str:
    """Return "wrk" when wrk is installed, else "python"; BENCH_ENGINE overrides."""
    chosen = os.environ.get("BENCH_ENGINE") or ("wrk" if shutil.which("wrk") else "python")
    if chosen not in ("wrk", "python"):
        raise SystemExit(f"BENCH_ENGINE must be wrk or python, not {chosen!r}")
    return chosen


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(base_url: str, connections: list[list[list[str]]], duration: float, kind: str | None = None) -> dict:
    """Drive the plan against base_url for duration seconds; return the raw result."""
    kind = kind or engine()
    host, port = base_url.split("://", 1)[1].rsplit(":", 1)
    cpu = _children_cpu()
    with tempfile.TemporaryDirectory(prefix="batchy-bench-") as tmp:
        if kind == "wrk":
            script = os.path.join(tmp, "plan.lua")
            with open(script, "w") as fh:
                fh.write(WRK_LUA % {"plans": _lua(connections)})
            n = len(connections)
            proc = subprocess.run(
                ["wrk", "-t", str(n), "-c", str(n), "-d", f"{max(1, round(duration))}s",  # wrk takes whole seconds
                 # wrk's default 2 s timeout would drop the slowest calls from the figures
                 "--timeout", "10s", "-s", script, base_url],
                capture_output=True, text=True, timeout=duration + 60,
            )
            if proc.returncode:
                raise RuntimeError(f"wrk failed: {proc.stderr or proc.stdout}")
            result = _parse_wrk(proc.stdout, connections)
        else:
            plan = os.path.join(tmp, "plan.json")
            with open(plan, "w") as fh:
                json.dump({"host": host, "port": int(port), "connections": connections}, fh)
            proc = subprocess.run(
                [sys.executable, "-m", "bench.load", plan, "--duration", str(duration)],
                capture_output=True, text=True, timeout=duration + 60, cwd=ROOT,
            )
            if proc.returncode:
                raise RuntimeError(f"bench.load failed: {proc.stderr}")
            result = json.loads(proc.stdout)
    result["engine"] = kind
    result["loadgen_cpu_share"] = (_children_cpu() - cpu) / result["duration"]
    return result


def _parse_wrk(stdout: str, connections) -> dict:
    tags: dict[str, dict] = {}
    for steps in connections:
        for _m, _p, tag in steps:
            tags.setdefault(tag, {"lat_us": [], "status": {}})
    for line in stdout.splitlines():
        if line.startswith("S "):
            _s, tag, status, lat = line.split(" ")
            entry = tags[tag]
            entry["lat_us"].append(int(float(lat)))
            entry["status"][status] = entry["status"].get(status, 0) + 1
    failures = [line[2:] for line in stdout.splitlines() if line.startswith("F ")]
    duration = re.search(r"requests in ([\d.]+)(ms|s|m)", stdout)
    seconds = float(duration.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[duration.group(2)]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", stdout)
    return {"duration": seconds, "tags": tags, "errors": sum(map(int, errors.groups())) if errors else 0,
            "failures": failures}


def percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def summarise(result: dict, tag: str, connections: int) -> dict:
    """Return rps, p50/p99 (ms), non-2xx and the Little's-law rate for one tag of a run.

    `rate` = connections / mean latency: the calls per second the service sustains at this
    concurrency if every call cost what this tag cost. For a run of one tag it equals the
    measured rps; in an alternating open/close run it gives each call type its own figure.
    """
    entry = result["tags"][tag]
    lat = sorted(entry["lat_us"])
    count = len(lat)
    non2xx = sum(n for status, n in entry["status"].items() if not status.startswith("2"))
    mean = sum(lat) / count if count else float("nan")
    return {
        "count": count,
        "rps": count / result["duration"],
        "rate": connections / (mean / 1e6) if count else 0.0,
        "p50": percentile(lat, 0.50) / 1000,
        "p99": percentile(lat, 0.99) / 1000,
        "non2xx": non2xx,
        "statuses": entry["status"],
    }


def tree_cpu(pid: int) -> float:
    """Return CPU seconds used so far by pid and all its descendants (from /proc)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += cpu.get(current, 0.0)
        todo += [child for child, parent in parents.items() if parent == current]
    return total
