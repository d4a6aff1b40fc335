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

    @classmethod
    def named(cls, wf: str, has_file: bool = False, meant: str | None = None) -> "WorkflowNotFound":
        """Return the error for a workflow that is not loaded, saying how to load it (or, for a name
        close to a loaded one's, asking whether that one was meant).

        No server path: whoever calls may not be the operator (the service logs the path).
        """
        how = (f"its file {wf}.yaml is in the service's workflow folder: call /load_cfg/{wf} (batchy load {wf})"
               if has_file else
               f"add {wf}.yaml to the service's workflow folder (BATCHY_CFG_DIR), then call /load_cfg/{wf} "
               f"(batchy load {wf})")
        if meant is not None:
            return cls(f"workflow {wf!r} is not loaded; did you mean {meant!r}? (else {how})", workflow=wf)
        return cls(f"workflow {wf!r} is not loaded: {how}", workflow=wf)


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


class FutureWindow(Conflict):
    """A job's next window would start after it ends: from_date later than now."""

    code = "from_date_in_future"


class CorruptState(Conflict):
    """A value stored in Redis is not what Batchy wrote (a hand edit gone wrong)."""

    code = "corrupt_state"

    @classmethod
    def of_job(cls, wf: str, job: str, problem: str, where: str = "") -> "CorruptState":
        key = where or wf
        return cls(
            f"workflow {wf!r}: job {job!r} in Redis key {key!r} {problem}; fix the field with redis-cli "
            f"(then HDEL batchy:wf:{wf} version) or replace the state with load_cfg/{wf}?reset=true",
            workflow=wf, job=job,
        )

    @classmethod
    def of_record(cls, wf: str, where: str, value: str, job: str | None = None) -> "CorruptState":
        """A field of the record of what was loaded (a coverage ledger, a last success), which a reset
        keeps: only redis-cli repairs it. where: "field '<field>' of '<key>'"."""
        return cls(
            f"workflow {wf!r}: {where} holds {value[:80]!r}, which Batchy did not write; a reset keeps it (it "
            "records what was loaded): fix it with redis-cli, or HDEL it to forget it, then HDEL the key's version "
            "field", workflow=wf, **({"job": job} if job is not None else {}),
        )


# -- backfills ---------------------------------------------------------------------------

class BackfillNotFound(NotFound):
    code = "backfill_not_found"


class StaleAttempt(Conflict):
    """A close or fail names an attempt that is not the chunk's current one."""

    code = "stale_attempt"


class NotLeased(Conflict):
    """A close or fail of a chunk that no worker holds (pending, finished or cancelled)."""

    code = "not_leased"


class WrongLeaseToken(Conflict):
    """A renew, close or fail of the chunk's current attempt without the lease_token its lease answered."""

    code = "wrong_lease_token"


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
    # A fresh dict: a handler may add a header (Allow), which must not reach later errors.
    return error_body(status, code, message, **context), status, dict(JSON_HEADERS)


def redis_refusal(exc) -> str | None:
    """Return why Redis refused a command that it answered, if it refuses all writes now."""
    import redis

    text = str(exc)  # redis-py drops the error code of the replies it has a class for
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or text.startswith("OOM"):
        return "Redis is out of memory (maxmemory with noeviction); writes are refused until memory is freed"
    if isinstance(exc, redis.exceptions.ReadOnlyError) or text.startswith("READONLY"):
        return "Redis is a read-only replica now (a failover, or a primary turned replica); writes are refused"
    if text.startswith("MISCONF"):
        return "Redis cannot persist to disk and refuses writes (MISCONF); see its log"
    return None


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

    @app.errorhandler(redis.exceptions.ClusterError)
    @app.errorhandler(redis.exceptions.SlotNotCoveredError)
    @app.errorhandler(redis.exceptions.AskError)
    @app.errorhandler(redis.exceptions.TryAgainError)
    def _cluster_moving(exc):
        # A Redis Cluster failing over or moving slots: the change was not applied; retry.
        log.warning("redis cluster unavailable: %s", exc)
        return _respond(503, "redis_unavailable", "The Redis Cluster is failing over or moving slots; "
                        "try again shortly.")

    @app.errorhandler(redis.exceptions.ResponseError)
    def _redis_refused(exc):
        why = redis_refusal(exc)
        if why is None:
            log.exception("unexpected Redis error reply")
            return _respond(500, "internal_error", "Internal error; the service log has the details.")
        log.warning("redis refuses writes: %s", exc)
        return _respond(503, "redis_refuses_writes", why)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error")
        return _respond(500, "internal_error", "Internal error; the service log has the details.")
