"""The floor of Batchy's stack: Flask + gunicorn + one Redis HGETALL, served like `batchy serve`.

    BATCHY_REDIS_URL=redis://127.0.0.1:6390/0 .venv/bin/python -m bench.baseline --port 5001 --workers 2

The app is started through `batchy serve` itself with create_app swapped for the minimal
app, so every gunicorn setting (worker class, workers, threads, keepalive, access log)
is the one production uses, and stays so when batchy/cli/serve.py changes.
"""
from __future__ import annotations

import json
import os
import sys


def create_baseline_app():
    """Create the minimal app: GET /get_status/<wf> returns the workflow hash as JSON."""
    import redis
    from flask import Flask, Response

    app = Flask("baseline")
    client = redis.Redis.from_url(os.environ["BATCHY_REDIS_URL"], decode_responses=True)

    @app.get("/get_status/<wf>")
    def get_status(wf):
        return Response(json.dumps(client.hgetall(wf)), mimetype="application/json")

    @app.get("/healthz")
    def healthz():
        return Response('{"status":"ok"}', mimetype="application/json")

    return app


def main(argv=None) -> int:
    import batchy
    from batchy import cli

    batchy.create_app = lambda config=None: create_baseline_app()  # what `serve` loads in each worker
    return cli.main(["serve", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
