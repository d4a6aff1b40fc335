"""When Redis stalls or refuses writes, and when a request body is malformed: clear, bounded answers.

Each test runs on a redis-server of its own (it stops, fills or demotes it).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from batchy import create_app
from batchy.testing import RedisServer, ServiceProcess

pytestmark = pytest.mark.slow

CFG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cfg", "wf1.yaml")


@pytest.fixture
def own_redis():
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def wf_dir(tmp_path):
    shutil.copy(CFG, tmp_path / "wf1.yaml")
    (tmp_path / "other.yaml").write_text("a: {}\n")
    return tmp_path


def post(url: str, timeout: float = 30, body: bytes = b"") -> tuple[int, dict]:
    req = urllib.request.Request(url, method="POST", data=body)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_a_stalled_redis_answers_every_queued_writer_within_one_timeout(own_redis, wf_dir):
    """8 opens queued on one workflow in one worker used to get their 503 after 2, 4 ... 16 s."""
    service = ServiceProcess(own_redis.url, str(wf_dir), env={"BATCHY_REDIS_TIMEOUT": "1"}, workers=1).start()
    try:
        for wf in ("wf1", "other"):
            assert post(f"{service.url}/load_cfg/{wf}")[0] == 200
        os.kill(own_redis.proc.pid, signal.SIGSTOP)
        results: list = []

        def call(wf):
            started = time.monotonic()
            status, body = post(f"{service.url}/open_batch/{wf}")
            results.append((wf, status, body.get("error"), time.monotonic() - started))

        threads = [threading.Thread(target=call, args=("wf1",)) for _ in range(8)]
        threads.append(threading.Thread(target=call, args=("other",)))
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(results) == 9
        for wf, status, error, took in results:
            assert status == 503, results
            assert took < 3.0, f"{wf} answered after {took:.1f} s: {results}"
    finally:
        os.kill(own_redis.proc.pid, signal.SIGCONT)
        service.stop()


@pytest.mark.parametrize("refusal", ["oom", "readonly"])
def test_redis_refusing_writes_is_a_503_and_readyz_says_so(own_redis, wf_dir, refusal):
    app = create_app({"BATCHY_REDIS_URL": own_redis.url, "BATCHY_CFG_DIR": str(wf_dir)})
    client = app.test_client()
    assert client.post("/load_cfg/wf1").status_code == 200
    assert client.get("/readyz").status_code == 200
    admin = own_redis.client()
    if refusal == "oom":
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", "1")
    else:
        admin.execute_command("REPLICAOF", "127.0.0.1", "1")  # nobody there: a read-only replica
    try:
        # Out of memory, Redis refuses a script whose first write may grow memory (open's HSET);
        # a load starts with a DEL and is let through whole, as scripts are atomic.
        paths = ("/open_batch/wf1", "/pause/wf1") + (("/load_cfg/wf1",) if refusal == "readonly" else ())
        for path in paths:
            r = client.post(path)
            assert r.status_code == 503 and r.json["error"] == "redis_refuses_writes", (path, r.json)
            assert ("out of memory" if refusal == "oom" else "read-only") in r.json["message"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json["error"] == "redis_unavailable", ready.json
        metrics = client.get("/metrics").data.decode()
        assert "batchy_redis_up 1.0" in metrics and "batchy_redis_writable 0.0" in metrics
        assert client.get("/get_status/wf1").status_code == 200  # reads still answer
    finally:
        admin.config_set("maxmemory", "0")
        admin.execute_command("REPLICAOF", "NO", "ONE")
    assert client.post("/open_batch/wf1").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert "batchy_redis_writable 1.0" in client.get("/metrics").data.decode()


def raw_request(port: int, data: bytes) -> tuple[int, dict]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
            if b"\r\n\r\n" in reply:
                head, _, body = reply.partition(b"\r\n\r\n")
                length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")]
                if length and len(body) >= length[0]:
                    break
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.fixture
def live(own_redis, wf_dir):
    service = ServiceProcess(own_redis.url, str(wf_dir), env={"BATCHY_MAX_BODY_BYTES": "1048576"}).start()
    assert post(f"{service.url}/load_cfg/wf1")[0] == 200
    yield service
    service.stop()


def test_an_invalid_chunk_size_is_a_400(live):
    head = (b"POST /close_batch/wf1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    status, body = raw_request(live.port, head + b"zz\r\n{}\r\n0\r\n\r\n")
    assert status == 400 and body["status"] == 400, body


def test_a_chunked_body_past_the_limit_is_a_413(live):
    head = (b"POST /close_batch/wf1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    payload = b'{"message": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(payload[i:i + 65536]), payload[i:i + 65536])
                      for i in range(0, len(payload), 65536))
    status, body = raw_request(live.port, head + chunks + b"0\r\n\r\n")
    assert status == 413 and body["error"] == "request_entity_too_large", body
