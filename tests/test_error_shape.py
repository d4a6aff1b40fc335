"""Every error path answers with the one JSON error body (Datasette's test_error_shape habit)."""
import json
import re

import pytest

from batchy import create_app
from batchy.web.db import get_store
from batchy.testing import free_port

from .conftest import make_app


def assert_error_shape(response, status=None):
    assert response.mimetype == "application/json", response.data[:200]
    body = response.json
    assert isinstance(body, dict) and {"error", "message", "status"} <= set(body), body
    assert isinstance(body["error"], str) and re.fullmatch(r"[a-z_]+", body["error"])
    assert isinstance(body["message"], str) and body["message"]
    assert body["status"] == response.status_code
    assert "Traceback" not in body["message"] and "<html" not in response.get_data(as_text=True).lower()
    if status is not None:
        assert response.status_code == status


def rules(app):
    return [r for r in app.url_map.iter_rules() if r.endpoint != "static"]


def fill(rule, value):
    return re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "json" if m.group(1) == "fmt" else value, rule.rule)


@pytest.mark.parametrize("value", ["bad name", "nope", "..", "x" * 200])
def test_every_route_with_a_bad_or_unknown_name(app, client, value):
    checked = 0
    for rule in rules(app):
        if "<" not in rule.rule:
            continue
        r = client.get(fill(rule, value))
        if r.status_code >= 400:
            assert_error_shape(r)
            assert r.status_code < 500
            checked += 1
    assert checked >= 10


def test_unexpected_exceptions_become_a_json_500(app, client, monkeypatch):
    client.get("/load_cfg/wf1")

    def boom(*args, **kwargs):
        raise RuntimeError("secret internals")

    with app.app_context():
        monkeypatch.setattr(type(get_store()), "raw_status", boom)
    r = client.get("/get_status/wf1")
    assert_error_shape(r, 500)
    assert "secret" not in r.get_data(as_text=True)


def test_redis_down_is_a_json_503_on_every_route(cfg_dir):
    app = create_app({"BATCHY_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "BATCHY_CFG_DIR": str(cfg_dir),
                      "BATCHY_REDIS_TIMEOUT": 0.5})
    client = app.test_client()
    seen = 0
    for rule in rules(app):
        if rule.rule in ("/healthz", "/", "/dashboard", "/metrics"):
            continue
        path = fill(rule, "wf1").replace("/json", "")
        # the parameters a route requires, and only those it takes (unknown ones are a 400)
        query = {"/rewind/<wf>": "?batch_id=1", "/set_from_date/<wf>": "?from_date=2024-01-01",
                 "/wait/<wf>": "?timeout=1"}.get(rule.rule, "")
        r = client.get(path + query)
        if r.status_code == 503:
            assert_error_shape(r, 503)
            assert r.json["error"] == "redis_unavailable"
            seen += 1
    assert seen >= 10
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "config, method, url, status",
    [
        ({"BATCHY_API_TOKEN": "t"}, "POST", "/open_batch/wf1", 401),
        ({"BATCHY_ALLOW_GET_MUTATIONS": False}, "GET", "/open_batch/wf1", 405),
        ({"BATCHY_MAX_BODY_BYTES": 10}, "POST", "/close_batch/wf1", 413),
        ({}, "PUT", "/get_status/wf1", 405),
        ({}, "GET", "/nowhere", 404),
    ],
)
def test_framework_errors_have_the_shape_too(fake_redis, cfg_dir, config, method, url, status):
    client = make_app(fake_redis, cfg_dir, **config).test_client()
    r = client.open(url, method=method, data="x" * 50, content_type="text/plain")
    assert_error_shape(r, status)


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /get_status/" + b"%F2%97%A6%8C" * 1000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),  # line > 8190 bytes
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n", 400),  # a header without a colon
])
def test_requests_gunicorn_refuses_itself_have_the_shape_too(service, request_bytes, status):
    """These never reach Flask: gunicorn answers them from the worker (found by fuzzing)."""
    import socket

    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
        sock.sendall(request_bytes)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
    assert b"Content-Type: application/json" in head
    error = json.loads(body)
    assert error["status"] == status and error["error"] and error["message"], error
