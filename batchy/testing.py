"""Real redis-server and Batchy service processes on free ports, for tests and benchmarks.

Never touches a server it did not start: each one gets a free port and, by default, a temp folder of its own.
"""
from __future__ import annotations

import atexit
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


class RedisCluster:
    """A Redis Cluster of our own: masters x (1 + replicas) redis-servers on free ports, torn down.

    `redis-server --cluster-enabled yes` per node, each in a temp folder of its own, joined
    by `redis-cli --cluster create ... --cluster-replicas N --cluster-yes`.
    """

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000):
        if not shutil.which("redis-cli"):
            raise RuntimeError("redis-cli is not installed (apt-get install redis-tools)")
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[RedisServer] = []

    @property
    def url(self) -> str:
        """A URL naming one live node: BATCHY_REDIS_URL with BATCHY_REDIS_CLUSTER=true."""
        live = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        return (live or self.nodes)[0].url

    def start(self) -> "RedisCluster":
        for _ in range(self.masters * (1 + self.replicas)):
            # The cluster bus port is free too (the default, port + 10000, may be taken or past 65535).
            node = RedisServer("--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                               "--cluster-node-timeout", str(self.node_timeout_ms),
                               "--cluster-config-file", "nodes.conf", "--cluster-replica-validity-factor", "0")
            self.nodes.append(node.start())
        try:
            subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
            wait_for(self.healthy, timeout=30, what="the cluster to agree (cluster_state:ok, every slot served)")
        except BaseException:
            self.cleanup()
            raise
        return self

    def healthy(self) -> bool:
        """Return whether every live node reports cluster_state:ok with every slot assigned."""
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            info = node.client().execute_command("CLUSTER", "INFO")
            if isinstance(info, (bytes, str)):
                info = dict(line.split(":", 1) for line in str(info).splitlines() if ":" in line)
            if info.get("cluster_state") != "ok" or str(info.get("cluster_slots_ok")) != "16384":
                return False
            replication = node.client().info("replication")
            if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                return False  # a replica still syncing: WAIT could not count it yet
        return True

    def client(self):
        """Return a redis-py RedisCluster client of this cluster (decoded replies)."""
        return redis.RedisCluster(host="127.0.0.1", port=int(self.url.rsplit(":", 1)[1].split("/")[0]),
                                  decode_responses=True)

    def primary_of(self, key: str) -> RedisServer:
        """Return the node that serves key's slot now."""
        from redis.crc import key_slot

        slot = key_slot(key.encode())
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            for start, end, master, *_ in node.client().execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end and int(master[1]) == node.port:
                    return node
        raise LookupError(f"no live primary serves the slot of {key!r}")

    def fail_over(self, key: str) -> RedisServer:
        """Kill the primary of key's slot (SIGKILL, a crash); return it once its replica took over."""
        victim = self.primary_of(key)
        victim.kill()

        def promoted() -> bool:
            try:
                return self.primary_of(key) is not victim and self.healthy()
            except LookupError:
                return False

        wait_for(promoted, timeout=30, interval=0.1, what="a replica to take over the killed primary's slots")
        return victim

    def cleanup(self) -> None:
        """Stop every node and remove their folders."""
        for node in self.nodes:
            node.cleanup()
        self.nodes = []


class ServiceProcess:
    """`batchy serve` (gunicorn, as in production) in its own process on a free port."""

    def __init__(self, redis_url: str, cfg_dir: str, *, env: dict | None = None, workers: int = 2,
                 host: str | None = "127.0.0.1", cwd: str | None = None):
        self.port = free_port()
        self.cwd = cwd  # another checkout's folder: `python -m` imports the batchy found there first
        self.host = host  # None: no --host, batchy serve's own choice
        self.redis_url = redis_url
        self.cfg_dir = cfg_dir
        self.env = dict(env or {})
        self.workers = workers
        self.proc: subprocess.Popen | None = None
        log_dir = tempfile.mkdtemp(prefix="batchy-svc-")
        atexit.register(shutil.rmtree, log_dir, True)  # log() still reads it after stop(); gone at exit
        self.log_path = os.path.join(log_dir, "service.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The command line start() runs (a benchmark's subclass runs another app, or a wrapper)."""
        return [sys.executable, "-m", "batchy.cli", "serve", *(["--host", self.host] if self.host else []),
                "--port", str(self.port), "--workers", str(self.workers)]

    def start(self, wait: bool = True) -> "ServiceProcess":
        """Spawn `batchy serve` in a session of its own; with wait, until /healthz answers 200."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHY_") and k != "REDIS_URL"}
        env.update(BATCHY_REDIS_URL=self.redis_url, BATCHY_CFG_DIR=self.cfg_dir, **self.env)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd,
                                     start_new_session=True)
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
