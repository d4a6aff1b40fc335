"""docker-compose.yml and the Dockerfile: no engine runs here, so check their wiring."""
import inspect
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import redis
import yaml

ROOT = Path(__file__).resolve().parent.parent


def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_redis_persists_to_a_volume_and_is_health_checked():
    doc = compose()
    redis = doc["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] in ("everysec", "always")
    volume, target = redis["volumes"][0].split(":")[:2]
    assert target == "/data" and volume in doc["volumes"]
    assert redis["healthcheck"]["test"][:2] == ["CMD", "redis-cli"]


def test_batchy_is_wired_to_the_redis_service():
    doc = compose()
    batchy = doc["services"]["batchy"]
    url = urlsplit(batchy["environment"]["BATCHY_REDIS_URL"])
    # The port the compose redis-server listens on: its --port, else Redis' default (redis-py's too).
    command = doc["services"]["redis"]["command"]
    listens = int(command[command.index("--port") + 1]) if "--port" in command else \
        inspect.signature(redis.Connection.__init__).parameters["port"].default
    assert url.scheme == "redis" and url.hostname == "redis" and url.port == listens
    assert url.hostname in doc["services"]
    assert batchy["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "5000:5000" in batchy["ports"]
    assert "/readyz" in " ".join(batchy["healthcheck"]["test"])
    cfg_mount = [v for v in batchy["volumes"] if v.split(":")[1] == batchy["environment"]["BATCHY_CFG_DIR"]]
    assert cfg_mount and (ROOT / cfg_mount[0].split(":")[0]).resolve() == ROOT / "cfg"
    assert batchy["build"] == "."


def test_dockerfile_copies_what_exists_and_runs_batchy_serve():
    text = (ROOT / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in shlex.split(line)[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"
    cmd = re.search(r"^CMD (.+)$", text, re.M).group(1)
    assert yaml.safe_load(cmd)[:2] == ["batchy", "serve"]
    # batchy serve listens on loopback unless told or a token is set: a container must be reachable.
    assert yaml.safe_load(cmd)[2:4] == ["--host", "0.0.0.0"]
    assert "EXPOSE 5000" in text


def test_compose_refuses_to_start_without_a_token_and_loads_cfg_at_start():
    env = compose()["services"]["batchy"]["environment"]
    assert re.fullmatch(r"\$\{BATCHY_API_TOKEN:\?.+\}", env["BATCHY_API_TOKEN"])  # ${VAR:?message}: an error when unset
    assert env["BATCHY_LOAD_ON_START"] in ("true", True)


def test_the_build_context_leaves_local_state_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", "tests"):
        assert entry in ignored
    for line in (ROOT / "Dockerfile").read_text().splitlines():  # nothing the image needs is ignored
        if line.startswith("COPY "):
            for source in shlex.split(line)[1:-1]:
                assert source.rstrip("/") not in ignored, source
