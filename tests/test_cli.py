"""The batchy command against a live service (gunicorn) on a real redis-server."""
import json
import subprocess
import sys
import urllib.request

import pytest

from batchy.cli import main
from batchy.testing import ServiceProcess


@pytest.fixture
def batchy(service, monkeypatch, capsys):
    monkeypatch.setenv("BATCHY_URL", service.url)
    monkeypatch.delenv("BATCHY_API_TOKEN", raising=False)

    def run(*argv):
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_operator_session(batchy, tmp_path):
    code, out, _ = batchy("load", "wf1")
    assert code == 0 and set(json.loads(out)) == {"s_extract", "s_load"}
    code, out, _ = batchy("open", "wf1", "--format", "infa")
    assert code == 0 and out.startswith("[s_extract]\n$$status=open\n")
    code, out, _ = batchy("close", "wf1", "--job", "s_extract", "--records-processed", "12")
    assert code == 0 and json.loads(out)["s_extract"]["records_processed"] == 12
    code, out, _ = batchy("fail", "wf1", "--message", "boom")
    assert code == 0 and json.loads(out)["s_load"]["status"] == "failed"
    code, out, err = batchy("close", "wf1")
    assert code == 1 and "no open job" in err and "409" in err
    code, out, _ = batchy("status", "wf1")
    assert json.loads(out)["s_load"]["message"] == "boom"
    code, out, _ = batchy("history", "wf1", "--limit", "1")
    assert code == 0 and json.loads(out)[0]["status"] == "failed"
    code, _, err = batchy("status", "nope")
    assert code == 1 and "not loaded" in err
    code, out, _ = batchy("open", "wf1", "--dry-run")
    assert code == 0 and json.loads(out)["s_load"]["status"] == "open"


def test_unreachable_service_is_a_clear_message(monkeypatch, capsys):
    monkeypatch.setenv("BATCHY_URL", "http://127.0.0.1:9")
    assert main(["status", "wf1"]) == 1
    assert "cannot reach Batchy" in capsys.readouterr().err


def test_export_and_import_between_redis_servers(batchy, redis_server, monkeypatch, tmp_path, capsys):
    from batchy.testing import RedisServer

    batchy("load", "wf1")
    batchy("open", "wf1")
    batchy("close", "wf1")
    monkeypatch.setenv("BATCHY_REDIS_URL", redis_server.url)
    dump = tmp_path / "backup.json"
    assert main(["export", "-o", str(dump)]) == 0
    doc = json.loads(dump.read_text())
    assert list(doc["workflows"]) == ["wf1"] and len(doc["workflows"]["wf1"]["batches"]) == 1
    other = RedisServer().start()
    try:
        monkeypatch.setenv("BATCHY_REDIS_URL", other.url)
        assert main(["import", str(dump)]) == 0
        assert main(["import", str(dump)]) == 1  # exists: needs --replace
        assert "replace" in capsys.readouterr().err
        assert main(["import", "--replace", str(dump)]) == 0
        copied = other.client().hgetall("wf1")
        assert copied == redis_server.client().hgetall("wf1")
    finally:
        other.cleanup()


def test_embedded_serve_preloads_cfg_and_warns(cfg_dir):
    svc = ServiceProcess("", str(cfg_dir), workers=3).start()
    try:
        with urllib.request.urlopen(svc.url + "/open_batch/wf1") as resp:
            assert json.loads(resp.read())["s_extract"]["status"] == "open"
        log = svc.log()
        assert "EMBEDDED IN-MEMORY" in log and "loaded at start" in log
        assert log.count("Booting worker") == 1  # one process holds the embedded store
    finally:
        svc.stop()


def test_module_entry_points_run():
    out = subprocess.run([sys.executable, "-m", "batchy.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "serve" in out.stdout
