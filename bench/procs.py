"""Synthetic workflows and the processes a benchmark run needs (redis-server, services)."""
from __future__ import annotations

import http.client
import os
import shutil
import sys
import time

from batchy.testing import RedisServer, ServiceProcess, wait_for

# Where `python -m bench...` finds the bench package, whatever the caller's working folder.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SPREAD = 64
THREE_STEPS = """\
s_extract:
  from_date: 2024-01-01
  reprocess_hours: 2
  src_schema: CRM
s_transform:
  reprocess_hours: 1
s_load:
  reprocess_hours: 0.5
  trunc_start: true
  timezone: Europe/Paris
"""


# The same three steps with a window policy on every job: hour-aligned windows of at most
# a day, 5 minutes of settle lag. From 2024-01-01 every open is a catch-up piece (a whole
# day, computed DST-correct in each job's zone), never an empty window.
POLICY_STEPS = """\
.batchy:
  batch_size: hour
  max_window_hours: 24
  settle_minutes: 5
""" + THREE_STEPS


def spread_names(n: int = SPREAD) -> list[str]:
    return [f"bw{i:02d}" for i in range(n)]


def policy_names(n: int = SPREAD) -> list[str]:
    return [f"pw{i:02d}" for i in range(n)]


def steps_yaml(n: int, prefix: str = "step") -> str:
    """Return a workflow file with n job steps, each with a watermark and a parameter."""
    width = len(str(n - 1))
    return "".join(
        f"{prefix}{i:0{width}d}:\n  from_date: 2024-01-01\n  reprocess_hours: 1\n  src_schema: CRM\n"
        for i in range(n)
    )


def write_workflows(cfg_dir: str, connections: int, step_counts) -> dict[str, str]:
    """Write every benchmark workflow file into cfg_dir; return {wf: purpose}."""
    files = {wf: THREE_STEPS for wf in spread_names()}
    files.update({wf: POLICY_STEPS for wf in policy_names()})
    files["hot"] = steps_yaml(connections, prefix="s")  # one step per connection: see plans.hot_open_close
    files["hist"] = THREE_STEPS
    for n in step_counts:
        files[f"steps{n}"] = steps_yaml(n)
    for wf, text in files.items():
        with open(os.path.join(cfg_dir, f"{wf}.yaml"), "w") as fh:
            fh.write(text)
    return files


class BaselineProcess(ServiceProcess):
    """bench.baseline (the minimal app under `batchy serve`) in its own process."""

    def __init__(self, redis_url: str, cfg_dir: str, **kwargs):
        super().__init__(redis_url, cfg_dir, **{"cwd": ROOT, **kwargs})  # this checkout's bench and batchy

    def command(self) -> list[str]:
        return [sys.executable, "-m", "bench.baseline", "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", str(self.workers)]

    def start(self, wait: bool = True) -> "BaselineProcess":
        super().start(wait=False)
        if wait:
            wait_for(self.healthy, timeout=30, what=f"baseline on port {self.port}")
        return self


def start_timed(proc: ServiceProcess) -> float:
    """Start proc and return the seconds from spawning it until /healthz answers 200."""
    started = time.perf_counter()
    proc.start()
    return time.perf_counter() - started


def cleanup(proc: ServiceProcess) -> None:
    proc.stop()
    shutil.rmtree(os.path.dirname(proc.log_path), ignore_errors=True)


class Http:
    """One keep-alive connection for sequential calls: returns (status, body, seconds)."""

    def __init__(self, base_url: str):
        host, port = base_url.split("://", 1)[1].rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def call(self, method: str, path: str, extra: dict | None = None) -> tuple[int, bytes, float]:
        headers = {"Content-Length": "0"} if method != "GET" else {}
        headers.update(extra or {})
        for attempt in (1, 2):
            started = time.perf_counter()
            try:
                self.conn.request(method, path, headers=headers)
                resp = self.conn.getresponse()
                body = resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # gunicorn closes a keep-alive connection idle for 5 s: reconnect once.
                self.conn.close()
                if attempt == 2:
                    raise
                continue
            return resp.status, body, time.perf_counter() - started

    def ok(self, method: str, path: str) -> bytes:
        status, body, _ = self.call(method, path)
        if not 200 <= status < 300:
            raise RuntimeError(f"{method} {path} answered {status}: {body[:300]!r}")
        return body

    def close(self) -> None:
        self.conn.close()


__all__ = ["RedisServer", "ServiceProcess", "BaselineProcess", "Http", "start_timed", "cleanup"]
