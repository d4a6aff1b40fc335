"""Instructions per call of the whole served path: a `batchy serve` worker under callgrind.

    .venv/bin/python -m bench.tools.instructions --served                  # every scenario, about 3 minutes
    .venv/bin/python -m bench.tools.instructions --served --root /tmp/before --only json infa
    .venv/bin/python -m bench.tools.instructions --served --cache --only json   # I1/D1 misses too (slower)

The in-process count (bench.tools.instructions) runs the WSGI app alone. A served call also
runs gunicorn's gthread worker: its poller, the hand-over to a pool thread, the HTTP parser,
the access log, the socket writes. Here `batchy serve --workers 1` (the baseline: bench.baseline,
the same `serve`) runs under `valgrind --tool=callgrind --trace-children=yes`; this process
makes the calls of a scenario over one keep-alive connection, and the worker's counters are
zeroed before and dumped after a short and a long window of calls (callgrind_control). The
difference over the difference of their calls is one call's count, without start-up, the
warm-up, or what zeroing and dumping cost. What the kernel does for the worker (its system
calls) is not counted: `strace -c -f -p <worker>` shows those. The worker's timers (gunicorn's
1 s poll, its heartbeat, the GIL's 5 ms switch) run during the counted windows too, so a count
holds for one window size: runs with the same --many agree within 0.6 %, different ones
within 1-2 %. Compare two checkouts with the same --many. The worker runs no auto_backfill
repairer, with one hash seed.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
import time

from ..procs import BaselineProcess, Http, ServiceProcess, cleanup
from .instructions import SCENARIOS, scenario


def count(modes: list[str], iterations: int, root: str | None, cache: bool) -> dict[str, dict[str, float]]:
    """Return {mode: {event: per call}} for each mode, events Ir (and with cache I1mr, D1mr, ...)."""
    from batchy.testing import RedisServer

    from ..procs import write_workflows

    server = RedisServer().start()
    cfg = tempfile.mkdtemp(prefix="batchy-served-cfg-")
    write_workflows(cfg, 32, [1])
    out = {}
    try:
        batchy_modes = [m for m in modes if m != "base"]
        if "base" in modes:
            with Served(_under_callgrind(BaselineProcess, server.url, cfg, None, cache)) as base:
                out["base"] = base.measure("base", iterations)
        if batchy_modes:
            with Served(_under_callgrind(ServiceProcess, server.url, cfg, root, cache)) as svc:
                for wf in sorted({wf for m in batchy_modes for wf in scenario(m)[0]}):
                    svc.http.ok("POST", f"/load_cfg/{wf}")
                for mode in batchy_modes:
                    out[mode] = svc.measure(mode, iterations)
    finally:
        server.cleanup()
        shutil.rmtree(cfg, ignore_errors=True)
    return out


def _under_callgrind(kind, redis_url: str, cfg: str, root: str | None, cache: bool) -> ServiceProcess:
    """Return a ServiceProcess (or BaselineProcess) with one worker whose command runs under callgrind."""

    class UnderCallgrind(kind):
        def command(self) -> list[str]:
            return ["valgrind", "--tool=callgrind", "--trace-children=yes", *(["--cache-sim=yes"] if cache else []),
                    f"--callgrind-out-file={self.folder}/cg.%p", *super().command()]

    # `python -m` imports from its working folder first: root's batchy (the baseline: this checkout's)
    proc = UnderCallgrind(redis_url, cfg, workers=1, **({"cwd": root} if root and kind is ServiceProcess else {}),
                          env={"BATCHY_AUTO_BACKFILL_INTERVAL": "0", "PYTHONHASHSEED": "0"})
    proc.folder = os.path.dirname(proc.log_path)  # the callgrind dumps beside the service's log
    return proc


class Served:
    """A service under callgrind (_under_callgrind), started, with a connection to it and its one worker."""

    def __init__(self, proc: ServiceProcess):
        self.proc, self.folder, self.http = proc, proc.folder, None

    def __enter__(self) -> "Served":
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        self.proc.start(wait=False)
        deadline = time.monotonic() + 600  # start-up under valgrind: half a minute, more on a busy machine
        while not self._healthy():
            if self.proc.proc.poll() is not None:
                with open(self.proc.log_path, errors="replace") as log:
                    raise RuntimeError(f"the service under callgrind exited:\n{log.read()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError("the service under callgrind did not answer /healthz within 600 s")
            time.sleep(0.5)
        self.http = Http(self.proc.url)
        master = str(self.proc.proc.pid)
        workers = subprocess.run(["pgrep", "-P", master], capture_output=True, text=True).stdout.split()
        if len(workers) != 1:
            raise RuntimeError(f"expected one worker under the master {master}, found {workers}")
        self.worker = workers[0]

    def __exit__(self, *exc) -> None:
        if self.http:
            self.http.close()
        cleanup(self.proc)  # stops it (SIGTERM, SIGKILL after 15 s) and removes its folder, dumps included

    def _healthy(self) -> bool:
        try:
            return self.proc.healthy()
        except OSError:
            return False

    def measure(self, mode: str, iterations: int) -> dict[str, float]:
        """Return mode's events per call: a warm-up, then a short and a long counted window.

        The difference of the two windows over the difference of their calls leaves out what
        zeroing and dumping the counters cost the worker, as the in-process count does with
        its few and many runs.
        """
        wfs, one = scenario(mode)
        warm = max(len(wfs), 32)  # every workflow called once: its first call's costs are no call's cost
        self._calls(one, range(warm))
        # The first window after start-up costs some twenty million instructions more, whatever
        # its calls (valgrind's gdbserver starting, say): one is run and thrown away.
        self._window(one, range(warm, warm + 4))
        warm += 4
        few = max(1, iterations // 4)
        if iterations <= few:
            raise ValueError(f"--served needs at least 2 iterations (--many), not {iterations}")
        short = self._window(one, range(warm, warm + few))
        long = self._window(one, range(warm + few, warm + few + iterations))
        calls = (iterations - few) * SCENARIOS[mode][1]
        return {event: (long[event] - short[event]) / calls for event in long}

    def _calls(self, one, iterations) -> None:
        for i in iterations:
            for _target, method, path in one(i):
                self.http.ok(method, path)

    def _window(self, one, iterations) -> dict[str, int]:
        """Return the worker's event totals over the calls of these iterations (zeroed, run, dumped)."""
        before = set(glob.glob(f"{self.folder}/cg.{self.worker}.*"))
        self._control("-z")
        self._calls(one, iterations)
        self._control("-d")
        deadline = time.monotonic() + 120
        while not (dumps := set(glob.glob(f"{self.folder}/cg.{self.worker}.*")) - before):
            if time.monotonic() > deadline:
                raise RuntimeError(f"callgrind wrote no dump for worker {self.worker}")
            time.sleep(0.2)
        time.sleep(0.5)  # the dump is written by the worker itself: let it finish
        events, totals = _totals(dumps.pop())
        return dict(zip(events, totals))

    def _control(self, flag: str) -> None:
        done = subprocess.run(["callgrind_control", flag, self.worker], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"callgrind_control {flag} {self.worker}: {done.stdout}{done.stderr}")


def _totals(path: str) -> tuple[list[str], list[int]]:
    """Return the event names and the totals of a callgrind dump."""
    text = open(path, errors="replace").read()
    events = re.search(r"^events:\s+(.*)$", text, re.M).group(1).split()
    found = re.findall(r"^(?:summary|totals):\s+(.*)$", text, re.M)
    if not found:
        raise RuntimeError(f"no totals in {path}")
    return events, [int(x) for x in found[-1].split()]


def render(rows: dict[str, dict[str, float]], cache: bool) -> str:
    extra = ["I1mr", "D1mr", "D1mw"] if cache else []
    head = f"{'served, gunicorn gthread, 1 worker':40}{'instructions per call':>24}{'base / this':>14}"
    out = [head + "".join(f"{e + ' per call':>16}" for e in extra)]
    base = rows.get("base", {}).get("Ir")
    for mode, (label, _calls) in SCENARIOS.items():
        if mode not in rows:
            continue
        ratio = "-" if mode == "base" or not base else f"{base / rows[mode]['Ir']:.2f}"
        out.append(f"  {label:38}{rows[mode]['Ir']:>24,.0f}{ratio:>14}"
                   + "".join(f"{rows[mode].get(e, 0):>16,.0f}" for e in extra))
    out.append("  (user-space instructions of the worker over one keep-alive connection; the kernel's\n"
               "   share is not counted; open + close rows: the mean of the two calls)")
    return "\n".join(out)
