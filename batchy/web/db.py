"""The app's Redis connection: made once per app in init_app, reached through get_store()."""
from __future__ import annotations

import logging

import redis
from flask import Flask, current_app

from ..storage import webhooks
from ..storage.connections import connect
from ..storage.store import BatchStore

log = logging.getLogger("batchy")
EMBEDDED_WARNING = (
    "BATCHY_REDIS_URL is not set: using the EMBEDDED IN-MEMORY store. All batch state is "
    "LOST when this process exits. Set BATCHY_REDIS_URL=redis://host:6379/0 for real use."
)


def init_app(app: Flask) -> None:
    """Create the app's store; with no Redis configured, an embedded one holding cfg/.

    With BATCHY_LOAD_ON_START (or the embedded store) every file in BATCHY_CFG_DIR is loaded.
    """
    client = app.config.get("REDIS_CLIENT")
    embedded = client is None and not app.config["BATCHY_REDIS_URL"]
    if client is None:
        client = connect(app.config["BATCHY_REDIS_URL"], app.config["BATCHY_REDIS_TIMEOUT"])
    store = BatchStore(client, app.config, clock=app.config.get("CLOCK"))
    app.extensions["batchy"] = store
    if embedded:
        log.warning(EMBEDDED_WARNING)
    app.extensions["batchy_webhooks"] = webhooks.start(app, store)
    if embedded or app.config["BATCHY_LOAD_ON_START"]:
        preload(store, app.config["BATCHY_CFG_DIR"], app.config["BATCHY_MAX_CFG_BYTES"])


def get_store() -> BatchStore:
    return current_app.extensions["batchy"]


def preload(store: BatchStore, cfg_dir: str, max_bytes: int) -> list[str]:
    """Load every workflow file in cfg_dir (a plain load: runtime state is kept).

    A file that fails is logged and skipped; an unreachable Redis is logged too, and
    the service starts anyway (/readyz tells, POST /load_cfg loads later).
    """
    try:
        loaded, failed = store.load_all(cfg_dir, max_bytes, actor="startup")
    except (redis.RedisError, OSError) as exc:
        log.warning("could not load the workflows of %s at start: %s", cfg_dir, exc)
        return []
    for wf, error in failed.items():
        log.warning("not loading %s at start: %s", wf, error["message"])
    if loaded:
        log.warning("loaded at start from %s: %s", cfg_dir, ", ".join(loaded))
    return list(loaded)
