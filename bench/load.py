"""Python load generator: closed-loop keep-alive HTTP/1.1 connections on one asyncio loop.

Used by bench.run when `wrk` is not installed, and run as its own process so its CPU
never counts against the server's. Each connection owns a plan (a list of
[method, path, tag]) that it cycles through, one request at a time, so a connection's
close never overtakes its own open.

    .venv/bin/python -m bench.load PLAN.json --duration 10     # prints a JSON result
    .venv/bin/python -m bench.load --ceiling --duration 3      # this generator's own limit

PLAN.json: {"host": "127.0.0.1", "port": 5000, "connections": [[[method, path, tag], ...], ...]}
Result: {"duration": s, "tags": {tag: {"lat_us": [...], "status": {"200": n}}}, "errors": n, "cpu_s": s}
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time


def build_request(method: str, path: str, host: str) -> bytes:
    """Return the raw bytes of one keep-alive request with an empty body."""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: batchy-bench\r\n"
    if method != "GET":
        head += "Content-Length: 0\r\n"
    return (head + "\r\n").encode()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Read one response; return its status and body. Bodies are sized by Content-Length (gunicorn sends it)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    lower = head.lower()
    at = lower.find(b"\r\ncontent-length:")
    if at >= 0:
        end = lower.index(b"\r\n", at + 2)
        length = int(lower[at + 17:end])
    elif b"transfer-encoding: chunked" in lower:
        raise ValueError("chunked responses are not supported by this generator")
    return status, await reader.readexactly(length) if length else b""


async def _connection(host, port, steps, deadline, tags, errors, failures):
    requests = [(build_request(m, p, host), tag) for m, p, tag in steps]
    pos = 0
    reader = writer = None
    now = time.perf_counter
    while now() < deadline:
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection(host, port, limit=1 << 22)
            except OSError:
                errors[0] += 1
                await asyncio.sleep(0.05)
                continue
        raw, tag = requests[pos]
        pos = (pos + 1) % len(requests)
        started = now()
        try:
            writer.write(raw)
            status, body = await _read_response(reader)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors[0] += 1
            writer.close()
            writer = None
            continue
        if status >= 300 and len(failures) < 100:
            failures.append(f"{steps[(pos - 1) % len(steps)][1]} {status} {body[:300].decode(errors='replace')}")
        entry = tags[tag]
        entry["lat_us"].append(int((now() - started) * 1e6))
        key = str(status)
        entry["status"][key] = entry["status"].get(key, 0) + 1
    if writer is not None:
        writer.close()


async def _run(plan: dict, duration: float) -> dict:
    tags: dict[str, dict] = {}
    for steps in plan["connections"]:
        for _m, _p, tag in steps:
            tags.setdefault(tag, {"lat_us": [], "status": {}})
    errors = [0]
    failures: list[str] = []
    started = time.perf_counter()
    deadline = started + duration
    await asyncio.gather(*(
        _connection(plan["host"], plan["port"], steps, deadline, tags, errors, failures) for steps in plan["connections"]
    ))
    return {"duration": time.perf_counter() - started, "tags": tags, "errors": errors[0], "failures": failures}


def run(plan: dict, duration: float) -> dict:
    """Drive plan for duration seconds in this process; return the result dict."""
    cpu = time.process_time()
    result = asyncio.run(_run(plan, duration))
    result["cpu_s"] = time.process_time() - cpu
    return result


# -- ceiling: the generator against a server that answers instantly ---------------------

CANNED = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class _Canned(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data):
        self.buffer += data
        count = self.buffer.count(b"\r\n\r\n")
        if count:
            self.buffer = self.buffer[self.buffer.rfind(b"\r\n\r\n") + 4:]
            self.transport.write(CANNED * count)


def _serve_canned(port: int, ready) -> None:
    async def main():
        server = await asyncio.get_running_loop().create_server(_Canned, "127.0.0.1", port)
        ready.set()
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def ceiling(duration: float, connections: int = 32) -> dict:
    """Return requests/s this generator reaches against an instant server in another process."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ready = multiprocessing.Event()
    server = multiprocessing.Process(target=_serve_canned, args=(port, ready), daemon=True)
    server.start()
    try:
        ready.wait(10)
        plan = {"host": "127.0.0.1", "port": port, "connections": [[["GET", "/x", "x"]]] * connections}
        result = run(plan, duration)
    finally:
        server.terminate()
        server.join(5)
    done = len(result["tags"]["x"]["lat_us"])
    return {"rps": done / result["duration"], "cpu_share": result["cpu_s"] / result["duration"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("plan", nargs="?", help="JSON plan file")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--ceiling", action="store_true", help="measure this generator's own limit")
    args = parser.parse_args(argv)
    if args.ceiling:
        json.dump(ceiling(args.duration), sys.stdout)
        return 0
    if not args.plan:
        parser.error("a plan file is required")
    with open(args.plan) as fh:
        plan = json.load(fh)
    json.dump(run(plan, args.duration), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
