"""Batchy: batch state and incremental-load watermarks for ETL workflows, kept in Redis."""
from __future__ import annotations

import logging


def create_app(config: dict | None = None):
    """Create and configure an instance of the Batchy application."""
    from flask import Flask

    from .web import auth, db, openapi
    from . import errors, settings

    app = Flask(__name__)
    app.config.update(settings.load(overrides=config))
    app.config["MAX_CONTENT_LENGTH"] = app.config["BATCHY_MAX_BODY_BYTES"]
    app.json.sort_keys = False
    logging.getLogger("batchy").setLevel(app.config["BATCHY_LOG_LEVEL"].upper())
    errors.register(app)
    auth.watch_tokens(app)
    db.init_app(app)
    for blueprint in openapi.BLUEPRINTS:
        app.register_blueprint(blueprint)
    return app
