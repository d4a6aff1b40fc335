"""Connecting to Redis (a URL, Sentinel, or the embedded store) and one-round-trip calls.

Transport.run is the hot path of every state change and status read: one EVALSHA or
HGETALL packed by hiredis and sent on a connection the calling thread holds.
"""
from __future__ import annotations

import os
import threading
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

try:  # redis-py's own C packer; without it every call goes through redis-py's command layer
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover - hiredis is a dependency
    _pack = None


def is_cluster(client) -> bool:
    """Return whether client is redis-py's RedisCluster (keys are then routed by slot)."""
    return isinstance(client, redis.RedisCluster)


def connect(url: str, timeout: float = 2.0, cluster: bool = False) -> redis.Redis:
    """Return a Redis client for url; an empty url gives an embedded in-memory store.

    cluster: url names any node of a Redis Cluster; the client learns the others and routes
    each command to the primary of its key's slot (redis-py's RedisCluster).
    """
    options = dict(
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # One quick retry on a fresh connection covers pooled sockets that died with a
        # Redis restart; more would hold a request well past the 503 it should get.
        # Only connection errors: a timed-out command may have run, and a silent Redis
        # would otherwise hold the request for several timeouts.
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        health_check_interval=30,
    )
    if not url:
        import fakeredis

        return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    if cluster:
        if url.startswith("redis+sentinel://"):
            raise SystemExit("batchy: BATCHY_REDIS_CLUSTER=true needs a redis:// URL of a cluster node, not Sentinel")
        return redis.RedisCluster.from_url(
            url, decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout,
            health_check_interval=30)
    if url.startswith("redis+sentinel://"):
        return _sentinel(url, options)
    return redis.Redis.from_url(url, **options)


def _sentinel(url: str, options: dict) -> redis.Redis:
    """Connect through Sentinel: redis+sentinel://[:password@]h1:p1,h2:p2/<primary>/<db>."""
    from redis.sentinel import Sentinel

    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    password = unquote(netloc[0].split(":", 1)[-1]) if len(netloc) == 2 else None
    hosts = []
    for host in netloc[-1].split(","):
        name, _, port = host.rpartition(":")
        hosts.append((name or port, int(port) if name else 26379))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise SystemExit("batchy: a sentinel URL needs the primary's name: redis+sentinel://host:26379/<name>/<db>")
    service = path[0]
    db = int(path[1]) if len(path) > 1 else 0
    sentinel = Sentinel(
        hosts,
        socket_timeout=options["socket_timeout"],
        socket_connect_timeout=options["socket_connect_timeout"],
    )
    return sentinel.master_for(service, db=db, password=password, **options)


class Transport:
    """Send scripts and reads to Redis in one round trip each, on this thread's connection."""

    def __init__(self, client: redis.Redis):
        self.redis = client
        # The direct path needs hiredis and a plain redis-py client and pool; the
        # embedded fakeredis takes redis-py's normal path.
        self.direct = (_pack is not None and type(client) is redis.Redis
                       and isinstance(client.connection_pool, redis.ConnectionPool))
        self._local = threading.local()

    def hgetall(self, key: str) -> dict[str, str]:
        """Return HGETALL key as a dict."""
        if not self.direct:
            return self.redis.hgetall(key)
        raw = self.execute(("HGETALL", key))
        if isinstance(raw, list):  # RESP2 answers a flat list, RESP3 a map
            raw = dict(zip(raw[::2], raw[1::2]))
        return raw

    def run(self, script, script_keys, args) -> list:
        """Run script in one round trip: the hot path of every state change (see execute).

        Clients without a plain redis-py pool (the embedded fakeredis) take the normal path.
        """
        if not self.direct:
            return script(keys=script_keys, args=args)
        try:
            return self.execute(("EVALSHA", script.sha, len(script_keys), *script_keys, *args))
        except redis.exceptions.NoScriptError:  # Redis lost its scripts (restart, SCRIPT FLUSH)
            self.redis.script_load(script.script)
            return script(keys=script_keys, args=args)  # loaded just now: let redis-py finish

    def execute(self, command: tuple):
        """Send one command on this thread's own connection and return the reply as parsed.

        redis-py's command layer (argument checks, retry wrapper, observability hooks) and
        its pool's checkout (a lock, a poll of the socket, metrics) cost more than the
        round trip's own Python work: measured, 62,000 instructions for a checkout and
        return, 65,000 for packing a commit. So the command is packed by hiredis and sent
        on a connection this thread holds (connection), with redis-py's semantics: one
        retry on a fresh connection after a connection error, none after a timeout.
        """
        packed = [_pack(command)]
        for attempt in (1, 2):
            conn = self.connection()
            try:
                conn.send_packed_command(packed)
                return conn.read_response()
            except redis.ConnectionError:  # redis-py has closed the connection already
                if attempt == 2:
                    raise
            except redis.exceptions.ResponseError:
                raise  # an error reply: the connection read all of it and stays usable
            except BaseException:
                # A timeout, or anything that stopped us between the command and its
                # reply: a reply may still come, and must never be read as the answer
                # to the next command on this connection.
                conn.disconnect()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def connection(self) -> redis.connection.AbstractConnection:
        """Return this thread's own connection to Redis, made like the pool's.

        Held by the thread, not checked out of the pool per call: a thread runs one
        request at a time, so the connection is never shared. It reconnects by itself
        after an error (send_packed_command connects a closed connection); it is made
        again in a forked child; it is closed when its thread ends (the thread-local is
        dropped, and the connection with it).
        """
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.pid != os.getpid():
            pool = self.redis.connection_pool
            conn = self._local.conn = pool.connection_class(**pool.connection_kwargs)
        return conn

    def close(self) -> None:
        """Close this thread's connection and the client's pool (the app is being shut down)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.disconnect()
            self._local.conn = None
        self.redis.close()
        if not is_cluster(self.redis):  # a cluster client closes each node's pool itself
            self.redis.connection_pool.disconnect()
