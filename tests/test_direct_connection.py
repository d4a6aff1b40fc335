"""Each thread's own Redis connection for the commit and read scripts (connections.Transport).

State changes skip redis-py's pool checkout: a thread holds one connection. What that
must never cost: a reply read as the answer to another command, a socket shared by two
processes after a fork, or connections piling up as threads come and go. These tests run
on a redis-server of their own, so the clients it lists are only theirs.
"""
from __future__ import annotations

import gc
import json
import multiprocessing
import threading

import pytest
import redis

from batchy import create_app
from batchy.testing import RedisServer
from batchy.web.db import services_of


@pytest.fixture(scope="module")
def server():
    srv = RedisServer().start()
    yield srv
    srv.cleanup()


@pytest.fixture
def app(server, cfg_dir):
    client = server.client()
    client.flushdb()
    app = create_app({"BATCHY_REDIS_URL": server.url, "BATCHY_CFG_DIR": str(cfg_dir)})
    assert app.test_client().post("/load_cfg/wf1").status_code == 200
    yield app
    client.close()


def store(app):
    return services_of(app).store


def script_clients(server) -> list[dict]:
    """The connections whose last command was a script: the ones Transport.run uses."""
    gc.collect()  # connections of finished threads close when they are collected
    with server.client() as probe:
        return [c for c in probe.client_list() if c["cmd"] == "evalsha"]


def test_a_thread_makes_every_change_on_one_connection(app, server):
    store(app).open("wf1")  # the scripts loaded, this thread's connection made
    before = {c["id"] for c in script_clients(server)}
    for _ in range(20):
        store(app).close("wf1", "success")
        store(app).open("wf1")
    assert {c["id"] for c in script_clients(server)} == before


def test_a_finished_thread_closes_its_connection(app, server):
    before = len(script_clients(server))

    def work():
        store(app).open("wf1")
        store(app).close("wf1", "success")

    workers = [threading.Thread(target=work) for _ in range(4)]
    for t in workers:
        t.start()
        t.join()  # one at a time: each on its own connection
    assert len(script_clients(server)) == before


def test_an_interrupted_call_leaves_no_reply_for_the_next_one(app, server, monkeypatch):
    st = store(app)
    st.open("wf1")
    conn = st.transport.connection()
    original = type(conn).read_response

    def interrupted(self, *args, **kwargs):
        monkeypatch.setattr(type(conn), "read_response", original)  # once
        raise KeyboardInterrupt  # as a signal arriving between the command and its reply

    monkeypatch.setattr(type(conn), "read_response", interrupted)
    with pytest.raises(KeyboardInterrupt):
        st.close("wf1", "success")  # sent, so applied; its reply was never read
    state = st.read("wf1")  # must read its own reply, not the close's
    with server.client() as probe:
        assert state.raw == probe.hgetall("wf1")
        assert state.version == probe.hget("batchy:wf:wf1", "version")
    assert state.jobs["s_extract"]["status"] == "success"


def _child_changes(app_holder: list, done) -> None:
    try:
        st = services_of(app_holder[0]).store
        for _ in range(30):
            st.open("wf2")
            st.close("wf2", "success")
        done.put("ok")
    except BaseException as exc:  # reported to the parent, which asserts on it
        done.put(repr(exc))


def test_a_forked_child_does_not_share_the_parent_connection(app, server, write_cfg):
    write_cfg("wf2", "a:\n  from_date: 2024-01-01\n")
    st = store(app)
    assert app.test_client().post("/load_cfg/wf2").status_code == 200
    st.open("wf1")  # the parent thread's connection exists before the fork
    ctx = multiprocessing.get_context("fork")
    done = ctx.Queue()
    child = ctx.Process(target=_child_changes, args=([app], done))
    child.start()
    for _ in range(30):  # both processes talk to Redis at the same time
        st.close("wf1", "success")
        st.open("wf1")
    assert done.get(timeout=60) == "ok"
    child.join(timeout=30)
    assert child.exitcode == 0
    with server.client() as probe:
        assert json.loads(probe.hget("wf2", "a"))["status"] == "success"
        assert probe.zcard("batchy:history:wf2") == 30
        assert probe.zcard("batchy:history:wf1") == 31


def test_an_error_reply_keeps_the_connection(app):
    st = store(app)
    st.open("wf1")
    conn = st.transport.connection()
    failing = st.redis.register_script("return redis.error_reply('boom')")
    with pytest.raises(redis.exceptions.ResponseError, match="boom"):
        st.transport.run(failing, (), ())
    assert st.transport.connection() is conn  # the whole error reply was read: nothing left behind
    assert st.read("wf1").jobs["s_extract"]["status"] == "open"


@pytest.mark.parametrize("protocol", [2, 3])
def test_status_and_changes_read_either_protocol(server, cfg_dir, protocol):
    server.client().flushdb()
    app = create_app({"BATCHY_REDIS_URL": f"{server.url}?protocol={protocol}", "BATCHY_CFG_DIR": str(cfg_dir)})
    client = app.test_client()
    assert client.post("/load_cfg/wf1").status_code == 200
    assert store(app).transport.connection().protocol == protocol
    opened = client.post("/open_batch/wf1").json
    status = client.get("/get_status/wf1")
    assert status.status_code == 200
    assert status.json == opened
    assert list(status.json) == sorted(status.json)


def test_close_lets_go_of_every_connection_and_a_later_call_reconnects(app, server):
    st = store(app)
    st.open("wf1")
    before = len(server.client().client_list())
    st.transport.close()
    assert len(server.client().client_list()) < before
    assert st.read("wf1").jobs["s_extract"]["status"] == "open"  # reconnects by itself
