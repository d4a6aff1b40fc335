"""Batchy's exceptions and the one JSON shape every error response has.

Body: {"error": <code>, "message": <human text>, "status": <http status>, ...context}
where context names the workflow, job or batch involved when there is one.
"""
from __future__ import annotations

import json
import logging

log = logging.getLogger("batchy")

JSON_HEADERS = {"Content-Type": "application/json"}


class BatchyError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, **context):
        super().__init__(message)
        self.message = message
        self.context = {k: v for k, v in context.items() if v is not None}


class BadRequest(BatchyError):
    status = 400
    code = "bad_request"


class InvalidName(BadRequest):
    code = "invalid_name"


class InvalidConfig(BadRequest):
    code = "invalid_config"


class InvalidParameter(BadRequest):
    code = "invalid_parameter"


class Unauthorized(BatchyError):
    status = 401
    code = "unauthorized"


class NotFound(BatchyError):
    status = 404
    code = "not_found"


class WorkflowNotFound(NotFound):
    code = "workflow_not_found"


class JobNotFound(NotFound):
    code = "job_not_found"


class ConfigNotFound(NotFound):
    code = "config_not_found"


class BatchNotFound(NotFound):
    code = "batch_not_found"


class Conflict(BatchyError):
    status = 409
    code = "conflict"


class NotOpen(Conflict):
    code = "not_open"


class StaleBatch(Conflict):
    code = "stale_batch"


class BatchOpen(Conflict):
    code = "batch_open"


class WorkflowExists(Conflict):
    code = "workflow_exists"


class Busy(Conflict):
    """Too many concurrent writers kept changing the workflow under us."""

    code = "busy"


class Paused(BatchyError):
    status = 423
    code = "paused"


class Unavailable(BatchyError):
    status = 503
    code = "redis_unavailable"


class TooManyWaiters(BatchyError):
    """Every /wait slot of this process is taken (BATCHY_WAIT_MAX_WAITERS)."""

    status = 503
    code = "too_many_waiters"


def error_body(status: int, code: str, message: str, **context) -> bytes:
    """Return the JSON bytes of an error response."""
    body = {"error": code, "message": message, "status": status}
    body.update(context)
    return json.dumps(body).encode()


def _respond(status: int, code: str, message: str, **context):
    return error_body(status, code, message, **context), status, JSON_HEADERS


def register(app) -> None:
    """Make every error, ours or Werkzeug's or unexpected, answer with the JSON shape."""
    from werkzeug.exceptions import HTTPException
    import redis

    @app.errorhandler(BatchyError)
    def _batchy(exc: BatchyError):
        return _respond(exc.status, exc.code, exc.message, **exc.context)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        response = _respond(exc.code or 500, code, exc.description or exc.name)
        if exc.code == 405 and getattr(exc, "valid_methods", None):
            response[2]["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    def _redis_down(exc):
        log.warning("redis unavailable: %s", exc)
        return _respond(503, "redis_unavailable", "Redis is not reachable; try again shortly.")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return _respond(500, "internal_error", "Internal error; the service log has the details.")
