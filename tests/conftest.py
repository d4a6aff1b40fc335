"""Fixtures: app -> client on fakeredis; a real redis-server of our own; config folders."""
from __future__ import annotations

import textwrap

import fakeredis
import pytest

from batchy import create_app
from batchy.testing import RedisServer, ServiceProcess

from .reliability_helpers import CommandLog

WF1 = """
s_extract:
  from_date: 2024-01-01
  reprocess_hours: 2
  src_schema: CRM
s_load:
  reprocess_hours: 0.5
  trunc_start: true
  timezone: Europe/Paris
"""


@pytest.fixture
def cfg_dir(tmp_path):
    """A config folder holding wf1.yaml; write_cfg(name, text) adds more."""
    (tmp_path / "wf1.yaml").write_text(WF1)
    return tmp_path


@pytest.fixture
def write_cfg(cfg_dir):
    def write(name: str, text: str | bytes):
        path = cfg_dir / f"{name}.yaml"
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(textwrap.dedent(text))
        return path

    return write


@pytest.fixture
def fake_redis():
    return fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)


def make_app(client, cfg_dir, **config):
    return create_app({"REDIS_CLIENT": client, "BATCHY_CFG_DIR": str(cfg_dir), **config})


@pytest.fixture
def app(fake_redis, cfg_dir):
    return make_app(fake_redis, cfg_dir)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="session")
def redis_server():
    """One redis-server for the session, on a free port with its own temp dir."""
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def real_redis(redis_server):
    """A client of our own redis-server, emptied after the test (it is ours alone)."""
    client = redis_server.client()
    yield client
    client.flushdb()


@pytest.fixture
def redis_commands(redis_server):
    """The commands our redis-server runs during the test (MONITOR): what a service process reached."""
    with CommandLog(redis_server.client()) as log:
        yield log


@pytest.fixture
def real_app(redis_server, real_redis, cfg_dir):
    """The app on our real redis-server, through the same connect() production uses."""
    return create_app({"BATCHY_REDIS_URL": redis_server.url, "BATCHY_CFG_DIR": str(cfg_dir)})


@pytest.fixture
def real_client(real_app):
    return real_app.test_client()


@pytest.fixture
def service(redis_server, real_redis, cfg_dir):
    """`batchy serve` under gunicorn on a free port, on our redis-server."""
    svc = ServiceProcess(redis_server.url, str(cfg_dir))
    svc.start()
    yield svc
    svc.stop()
