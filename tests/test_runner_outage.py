"""Runners across a Redis outage (issue 21): a real redis-server under a real `batchy serve`,
stopped with SIGSTOP for seconds (a failover, a stalled host), then SIGCONT."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from batchy.cli import backfill_run as backfill_runner
from batchy.client import Batchy
from batchy.testing import RedisServer, ServiceProcess

pytestmark = pytest.mark.slow

WF = "bf:\n  from_date: 2024-01-01\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A redis-server and a `batchy serve` of this module's own: pausing them touches no other test."""
    cfg = tmp_path_factory.mktemp("outage-cfg")
    (cfg / "bf.yaml").write_text(WF)
    redis = RedisServer().start()
    service = ServiceProcess(redis.url, str(cfg)).start()
    yield redis, service
    os.kill(redis.proc.pid, signal.SIGCONT)
    service.stop()
    redis.cleanup()


@pytest.fixture
def fresh(world):
    redis, service = world
    os.kill(redis.proc.pid, signal.SIGCONT)
    redis.client().flushdb()
    client = Batchy(service.url)
    client.load("bf")
    return redis, service, client


def spawn(url: str, *argv: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHY_")}
    env["BATCHY_URL"] = url
    return subprocess.Popen([sys.executable, "-m", "batchy.cli", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def pause_when(path, redis: RedisServer, seconds: float) -> threading.Thread:
    """SIGSTOP redis once path exists, SIGCONT it seconds later (in a thread)."""
    def outage():
        deadline = time.monotonic() + 30
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(redis.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(redis.proc.pid, signal.SIGCONT)

    thread = threading.Thread(target=outage, daemon=True)
    thread.start()
    return thread


def test_batchy_run_records_its_success_across_a_redis_outage(fresh, tmp_path):
    redis, service, client = fresh
    started = tmp_path / "started"
    outage = pause_when(started, redis, 10)
    proc = spawn(service.url, "run", "bf", "--", "sh", "-c", f"touch {started}; sleep 0.5; echo 7 > "
                                                             '"$BATCHY_RECORDS_FILE"')
    proc.wait(90)
    outage.join()
    err = proc.stderr.read().decode()
    assert proc.returncode == 0, err
    assert "retrying" in err
    job = client.status("bf")["bf"]
    assert (job["status"], job["records_processed"]) == ("success", 7)


def test_a_close_repeated_after_a_lost_answer_is_answered_as_the_first(fresh):
    _, _, client = fresh
    batch_id = client.open("bf")["bf"]["batch_id"]
    first = client.close("bf", batch_id=batch_id, records_processed=3)
    again = client.close("bf", batch_id=batch_id, records_processed=3)  # what a retry sends
    assert first == again and again["bf"]["status"] == "success"


def test_batchy_run_exits_75_when_the_outage_outlasts_outage_seconds(fresh, tmp_path):
    redis, service, client = fresh
    started = tmp_path / "started"
    outage = pause_when(started, redis, 8)
    proc = spawn(service.url, "run", "bf", "--outage-seconds", "2", "--", "sh", "-c", f"touch {started}; sleep 0.5")
    proc.wait(60)
    err = proc.stderr.read().decode()
    outage.join()
    assert proc.returncode == 75, err
    assert "unreachable" in err and "--outage-seconds" in err
    assert client.status("bf")["bf"]["status"] == "open"  # said so: the batch is left as it was


def test_backfill_run_leases_and_closes_across_a_redis_outage(fresh, tmp_path):
    redis, service, _ = fresh
    api = backfill_runner.BackfillClient(Batchy(service.url))
    made = api.create("bf", "2024-02-01T00:00:00Z", "2024-02-09T00:00:00Z", batch_size="day")
    outage = pause_when(tmp_path / "started.1", redis, 10)
    proc = spawn(service.url, "backfill", "run", "bf", str(made["backfill_id"]), "--parallel", "2",
                 "--lease-seconds", "60", "--", "sh", "-c",
                 f'touch {tmp_path}/started.$BATCHY_CHUNK; sleep 0.3; echo 5 > "$BATCHY_RECORDS_FILE"')
    proc.wait(120)
    outage.join()
    err = proc.stderr.read().decode()
    shown = api.status("bf", made["backfill_id"])
    assert proc.returncode == 0, err
    assert [(c["status"], c["attempts"]) for c in shown["chunks"]] == [("success", 1)] * 8, err
    assert "retrying" in err


def test_backfill_run_exits_75_when_the_outage_outlasts_outage_seconds(fresh, tmp_path):
    redis, service, _ = fresh
    api = backfill_runner.BackfillClient(Batchy(service.url))
    made = api.create("bf", "2024-02-01T00:00:00Z", "2024-02-04T00:00:00Z", batch_size="day")
    outage = pause_when(tmp_path / "started.0", redis, 8)
    proc = spawn(service.url, "backfill", "run", "bf", str(made["backfill_id"]), "--outage-seconds", "2",
                 "--", "sh", "-c", f"touch {tmp_path}/started.$BATCHY_CHUNK; sleep 0.5")
    proc.wait(60)
    outage.join()
    err = proc.stderr.read().decode()
    assert proc.returncode == 75, err
    assert "unreachable" in err


def test_a_stop_signal_during_an_outage_ends_the_retries_after_the_grace_period(fresh, tmp_path):
    """systemd stopping the unit while Redis is away: batchy gives up after --grace-seconds, before
    the supervisor's SIGKILL, and says so."""
    redis, service, client = fresh
    started = tmp_path / "started"
    outage = pause_when(started, redis, 10)
    proc = spawn(service.url, "run", "bf", "--grace-seconds", "2", "--", "sh", "-c", f"touch {started}; sleep 0.5")
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(started) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(1.5)  # the command ended; its close is being retried
        begun = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        took = time.monotonic() - begun
    finally:
        outage.join()
    err = proc.stderr.read().decode()
    assert proc.returncode == 143 and took < 6, (took, err)
    assert "unreachable" in err
