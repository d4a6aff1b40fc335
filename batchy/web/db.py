"""The app's services, built once per app in init_app and reached through services() or get_store()."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import redis
from flask import Flask, current_app

from ..storage import lineage, repair, webhooks
from ..storage.backfill import Backfills
from ..storage.connections import connect
from ..storage.fleet import Fleet
from ..storage.history import History
from ..storage.notifier import Notifier
from ..storage.pauses import Pauses
from ..storage.store import BatchStore

log = logging.getLogger("batchy")
EMBEDDED_WARNING = (
    "BATCHY_REDIS_URL is not set: using the EMBEDDED IN-MEMORY store. All batch state is "
    "LOST when this process exits. Set BATCHY_REDIS_URL=redis://host:6379/0 for real use."
)


@dataclass
class Services:
    """Everything a view calls, made once per app over one Redis client."""

    store: BatchStore  # current state, and every state change
    history: History  # what happened: snapshots, batches, the audit log, coverage, overviews
    pauses: Pauses
    backfills: Backfills
    notifier: Notifier  # wakes the requests waiting on a workflow (GET /wait)
    webhooks: webhooks.Watchman | None  # the announcer, when BATCHY_WEBHOOK_URL is set
    fleet: Fleet  # every workflow at once, read once per BATCHY_FLEET_INTERVAL (dashboard, metrics, /late)
    repairer: repair.Repairer | None  # turns settled holes of auto_backfill jobs into backfills
    lineage: lineage.Sender | None = None  # sends OpenLineage run events, when BATCHY_OPENLINEAGE_URL is set


def init_app(app: Flask) -> None:
    """Build the app's services; with no Redis configured, over an embedded store holding cfg/.

    With BATCHY_LOAD_ON_START (or the embedded store) every file in BATCHY_CFG_DIR is loaded.
    """
    config = app.config
    client = config.get("REDIS_CLIENT")
    embedded = client is None and not config["BATCHY_REDIS_URL"]
    if client is None:
        client = connect(config["BATCHY_REDIS_URL"], config["BATCHY_REDIS_TIMEOUT"], config["BATCHY_REDIS_CLUSTER"])
    store = BatchStore(client, config, clock=config.get("CLOCK"))
    backfills = Backfills(store, config["BATCHY_EVENTS_KEEP"])
    if embedded:
        log.warning(EMBEDDED_WARNING)
    fleet = Fleet(store, backfills, config["BATCHY_FLEET_INTERVAL"], clock=config.get("FLEET_CLOCK"))
    app.extensions["batchy"] = Services(
        store=store,
        history=store.reads,
        pauses=store.pausing,
        backfills=backfills,
        notifier=Notifier(store, config["BATCHY_REDIS_TIMEOUT"] + 1.0, config["BATCHY_WAIT_MAX_WAITERS"]),
        webhooks=webhooks.start(app, store),
        fleet=fleet,
        repairer=repair.start(app, store, backfills, fleet),
        lineage=lineage.start(app, store),
    )
    if store.keys.cluster:
        try:  # batchy:workflows is kept around the commits on a cluster: list what a crash left out
            fixed = store.reconcile_index()
            if fixed["added"] or fixed["dropped"]:
                log.warning("batchy:workflows reconciled: added %s, dropped %s", fixed["added"], fixed["dropped"])
        except redis.RedisError as exc:
            log.warning("could not reconcile batchy:workflows at start: %s", exc)
    if embedded or config["BATCHY_LOAD_ON_START"]:
        preload(store, config["BATCHY_CFG_DIR"], config["BATCHY_MAX_CFG_BYTES"])


def services_of(app: Flask) -> Services:
    return app.extensions["batchy"]


def services() -> Services:
    """Return the current app's services."""
    return current_app.extensions["batchy"]


def get_store() -> BatchStore:
    return current_app.extensions["batchy"].store


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
