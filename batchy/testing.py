"""Real redis-server and Batchy service processes on free ports, for tests and benchmarks.

Never touches a server it did not start: each one gets a free port and, by default, a temp folder of its own.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import redis


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, what: str = "condition"):
    """Call predicate until it returns true; raise TimeoutError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(interval)
    raise TimeoutError(f"timed out waiting for {what}")


class RedisServer:
    """A redis-server of our own: free port, own temp dir, stoppable and restartable."""

    def __init__(self, *extra_args: str, port: int | None = None, directory: str | None = None):
        self.binary = shutil.which("redis-server")
        if not self.binary:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = port or free_port()
        self.dir = directory or tempfile.mkdtemp(prefix="batchy-redis-")
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self, **kwargs) -> redis.Redis:
        """Return a client of this server (decoded replies, its --requirepass if any)."""
        password = self.extra_args[self.extra_args.index("--requirepass") + 1] if "--requirepass" in self.extra_args else None
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, password=password, **kwargs)

    def start(self) -> "RedisServer":
        """Start redis-server (no persistence unless extra_args ask) and wait until it answers PING."""
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.dir,
            "--save", "",
            "--appendonly", "no",
            "--logfile", os.path.join(self.dir, "redis.log"),
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.client().ping(), what=f"redis-server on port {self.port}")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Send sig and wait for the process to end; keep the folder, so start() can restart it."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def kill(self) -> None:
        """Stop with SIGKILL, as a crash would."""
        self.stop(signal.SIGKILL)

    def cleanup(self) -> None:
        """Stop the server and remove its folder."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class ServiceProcess:
    """`batchy serve` (gunicorn, as in production) in its own process on a free port."""

    def __init__(self, redis_url: str, cfg_dir: str, *, env: dict | None = None, workers: int = 2,
                 host: str | None = "127.0.0.1"):
        self.port = free_port()
        self.host = host  # None: no --host, batchy serve's own choice
        self.redis_url = redis_url
        self.cfg_dir = cfg_dir
        self.env = dict(env or {})
        self.workers = workers
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(tempfile.mkdtemp(prefix="batchy-svc-"), "service.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> "ServiceProcess":
        """Spawn `batchy serve` in a session of its own; with wait, until /healthz answers 200."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHY_") and k != "REDIS_URL"}
        env.update(BATCHY_REDIS_URL=self.redis_url, BATCHY_CFG_DIR=self.cfg_dir, **self.env)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "batchy.cli", "serve", *(["--host", self.host] if self.host else []),
             "--port", str(self.port), "--workers", str(self.workers)],
            env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if wait:
            wait_for(self.healthy, timeout=30, what=f"batchy on port {self.port}")
        return self

    def healthy(self) -> bool:
        """Return whether /healthz answers 200 (raise while nothing listens)."""
        with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:
            return resp.status == 200

    def stop(self) -> None:
        """Stop gunicorn and its workers (the whole process group), SIGKILL after 15 s."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def log(self) -> str:
        """Return what the service wrote to stdout and stderr so far."""
        with open(self.log_path, errors="replace") as fh:
            return fh.read()
