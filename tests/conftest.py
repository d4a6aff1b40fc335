"""Fixtures: app -> client on fakeredis; a real redis-server of our own; config folders."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import fakeredis
import pytest

from batchy import create_app
from batchy.testing import RedisServer, ServiceProcess
from batchy.web.db import services_of

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


# Tests read the fleet fresh on every request (a change shows on the next page at once);
# the figures kept per interval are tested on their own (test_fleet.py).
FRESH = {"BATCHY_FLEET_INTERVAL": 0,
         # no background repairer in the session's apps (it would read the fleet on its own
         # clock); tests of it build a Repairer and call round() (test_auto_backfill.py)
         "BATCHY_AUTO_BACKFILL_INTERVAL": 0}


# Nor in any other app or service process a test starts (their environment is this one): a
# repairer thread outlives the test and its redis-server, and would only say so in the log.
os.environ.setdefault("BATCHY_AUTO_BACKFILL_INTERVAL", "0")


def make_app(client, cfg_dir, **config):
    return create_app({"REDIS_CLIENT": client, "BATCHY_CFG_DIR": str(cfg_dir), **FRESH, **config})


def point(link: Path, folder: Path) -> None:
    """Make the symlink link lead to folder, atomically (a reader never finds no folder)."""
    new = link.with_name(link.name + ".next")
    if new.is_symlink():
        new.unlink()
    new.symlink_to(folder)
    os.replace(new, link)


@pytest.fixture(scope="session")
def _fake_world(tmp_path_factory):
    """One fakeredis server and one app on it for the session: creating an app costs 40 ms
    (Werkzeug compiles every URL rule), and a thousand tests use one. Its BATCHY_CFG_DIR is
    a symlink each test points at its own cfg_dir."""
    redis = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    link = tmp_path_factory.mktemp("shared-app") / "cfg"
    link.symlink_to(tmp_path_factory.mktemp("shared-app-empty"))
    return redis, make_app(redis, link), link


@pytest.fixture
def fake_redis(_fake_world):
    """The session's fakeredis, empty at the start of the test (nothing else uses its server)."""
    redis = _fake_world[0]
    redis.flushdb()  # an in-process FakeServer of this session's own, database 0 only
    return redis


@pytest.fixture
def app(_fake_world, fake_redis, cfg_dir):
    """The app on fakeredis, reading this test's cfg_dir, as if just started: its per-process
    state cache is emptied (a test may count what it holds)."""
    _redis, app, link = _fake_world
    point(link, cfg_dir)
    services_of(app).store.cache.clear()
    return app


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
    return create_app({"BATCHY_REDIS_URL": redis_server.url, "BATCHY_CFG_DIR": str(cfg_dir), **FRESH})


@pytest.fixture
def real_client(real_app):
    return real_app.test_client()


@pytest.fixture(scope="session")
def shared_service(redis_server, tmp_path_factory):
    """One `batchy serve` (gunicorn, 2 workers) for every test that only calls it: starting
    one costs a second. Its BATCHY_CFG_DIR is a symlink each test points at its own cfg_dir;
    its per-process cache is safe across tests, as across Redis restarts: every commit
    checks the stored version, whose random token is never reused."""
    link = tmp_path_factory.mktemp("shared-service") / "cfg"
    link.symlink_to(tmp_path_factory.mktemp("shared-service-empty"))
    svc = ServiceProcess(redis_server.url, str(link), env={k: str(v) for k, v in FRESH.items()})
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture
def service(shared_service, real_redis, cfg_dir):
    """`batchy serve` under gunicorn on our redis-server, reading this test's cfg_dir; Redis is
    emptied after the test (real_redis). A test may stop it (the next test starts it again);
    a test that reconfigures a service starts a ServiceProcess of its own."""
    point(Path(shared_service.cfg_dir), cfg_dir)
    if shared_service.proc is None or shared_service.proc.poll() is not None:
        shared_service.start()  # an earlier test stopped it (an outage it played)
    yield shared_service
