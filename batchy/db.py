"""The app's Redis connection: made once per app in init_app, reached through get_store()."""
from __future__ import annotations

import glob
import logging
import os

from flask import Flask, current_app

from . import names, workflows
from .errors import BatchyError
from .connections import connect
from .store import BatchStore

log = logging.getLogger("batchy")
EMBEDDED_WARNING = (
    "BATCHY_REDIS_URL is not set: using the EMBEDDED IN-MEMORY store. All batch state is "
    "LOST when this process exits. Set BATCHY_REDIS_URL=redis://host:6379/0 for real use."
)


def init_app(app: Flask) -> None:
    """Create the app's store; with no Redis configured, an embedded one holding cfg/."""
    client = app.config.get("REDIS_CLIENT")
    embedded = client is None and not app.config["BATCHY_REDIS_URL"]
    if client is None:
        client = connect(app.config["BATCHY_REDIS_URL"], app.config["BATCHY_REDIS_TIMEOUT"])
    store = BatchStore(client, app.config, clock=app.config.get("CLOCK"))
    app.extensions["batchy"] = store
    if embedded:
        log.warning(EMBEDDED_WARNING)
        preload(store, app.config["BATCHY_CFG_DIR"], app.config["BATCHY_MAX_CFG_BYTES"])


def get_store() -> BatchStore:
    return current_app.extensions["batchy"]


def preload(store: BatchStore, cfg_dir: str, max_bytes: int) -> list[str]:
    """Load every valid workflow file in cfg_dir, so a fresh embedded store is usable at once."""
    loaded = []
    for path in sorted(glob.glob(os.path.join(cfg_dir, "*.y*ml"))):
        wf = os.path.splitext(os.path.basename(path))[0]
        try:
            names.check_workflow(wf)
            store.load(wf, workflows.read_config(cfg_dir, wf, max_bytes), actor="startup")
        except BatchyError as exc:
            log.warning("not preloading %s: %s", path, exc.message)
            continue
        loaded.append(wf)
    if loaded:
        log.warning("embedded store preloaded from %s: %s", cfg_dir, ", ".join(loaded))
    return loaded
