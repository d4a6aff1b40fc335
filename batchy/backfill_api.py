"""The backfill endpoints: parse the request, call backfills.Backfills, render. No logic of its own."""
from __future__ import annotations

import math

from flask import Blueprint, Response, current_app, request

from . import backfill, names
from .backfills import Backfills
from .db import get_store
from .errors import InvalidParameter
from .http import (
    actor, check_read, json_response, mutation, parse_limit, parse_moment, parse_text, parse_whole_number,
    request_params,
)
from .windows import MAX_HOURS

bp = Blueprint("backfill", __name__)
MUTATING = ["GET", "POST"]
# A chunk's records_processed is kept by Lua's JSON encoder, exact to 14 digits.
MAX_RECORDS = 10**14 - 1


def get_backfills() -> Backfills:
    """Return the app's Backfills, made on first use over the app's store."""
    extensions = current_app.extensions
    if "batchy_backfills" not in extensions:
        extensions["batchy_backfills"] = Backfills(get_store(), current_app.config["BATCHY_EVENTS_KEEP"])
    return extensions["batchy_backfills"]


def _id(value: str) -> int:
    return parse_whole_number({"backfill_id": value}, "backfill_id")


def _positive_number(values: dict, name: str, maximum: float) -> float | None:
    """Return a number parameter > 0 and at most maximum, or None when absent."""
    value = values.get(name)
    if value is None or value == "":
        return None
    number = None
    if isinstance(value, str) and value.isascii() and len(value) <= 30:
        try:
            number = float(value)
        except ValueError:
            pass
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    if number is None or not math.isfinite(number) or not 0 < number <= maximum:
        raise InvalidParameter(f"{name} must be a number > 0 (at most {maximum:g}), not {str(value)[:40]!r}",
                               parameter=name)
    return number


def _job_names(values: dict, wf: str) -> list[str] | None:
    """Return the jobs named: `job` repeated in the query string or a form, or a JSON list (None: every job)."""
    given = values.get("job")
    if given is None:
        return None
    if isinstance(given, list):
        items = given
    else:
        body = request.get_json(silent=True) if request.is_json else None
        if isinstance(body, dict) and "job" in body:
            items = [given]
        else:
            items = request.form.getlist("job") or request.args.getlist("job") or [given]
    if len(items) > backfill.MAX_CHUNKS:
        raise InvalidParameter(f"job names more than {backfill.MAX_CHUNKS} jobs", parameter="job", workflow=wf)
    return list(dict.fromkeys(names.check_job(item, wf) for item in items))


@bp.route("/backfill/<wf>", methods=MUTATING)
@mutation
def create(wf):
    names.check_workflow(wf)
    values = request_params("from", "to", "job", "batch_size", "chunk_hours", "max_attempts")
    start = parse_moment(values, "from", required=True, local=True)
    end = parse_moment(values, "to", required=True, local=True)
    batch_size = values.get("batch_size") or None
    if batch_size is not None and not isinstance(batch_size, str):
        raise InvalidParameter("batch_size must be hour, day, week or month", parameter="batch_size")
    max_attempts = parse_whole_number(values, "max_attempts")
    if max_attempts is not None and not 1 <= max_attempts <= backfill.MAX_ATTEMPTS:
        raise InvalidParameter(f"max_attempts must be from 1 to {backfill.MAX_ATTEMPTS}", parameter="max_attempts")
    answer = get_backfills().create(
        wf, start, end, jobs=_job_names(values, wf), batch_size=batch_size,
        chunk_hours=_positive_number(values, "chunk_hours", MAX_HOURS),
        max_attempts=max_attempts or backfill.DEFAULT_MAX_ATTEMPTS, actor=actor())
    return json_response(answer, 201)


@bp.get("/backfills/<wf>")
def list_backfills(wf):
    check_read("history")
    names.check_workflow(wf)
    values = request_params("limit")
    return json_response({"workflow": wf, "backfills": get_backfills().list(wf, parse_limit(values))})


@bp.get("/backfill/<wf>/<backfill_id>")
def show(wf, backfill_id):
    check_read("history")
    names.check_workflow(wf)
    request_params()
    return json_response(get_backfills().get(wf, _id(backfill_id)))


@bp.route("/backfill/<wf>/<backfill_id>/lease", methods=MUTATING)
@mutation
def lease(wf, backfill_id):
    names.check_workflow(wf)
    values = request_params("lease_seconds")
    seconds = _positive_number(values, "lease_seconds", backfill.MAX_LEASE_SECONDS)
    leased = get_backfills().lease(wf, _id(backfill_id), seconds or backfill.DEFAULT_LEASE_SECONDS, actor=actor())
    if leased is None:
        return Response(status=204)
    return json_response(leased)


def _chunk_attempt(values) -> tuple[int, int]:
    """Return the chunk and attempt a close, fail or renew names (both required)."""
    number = parse_whole_number(values, "chunk")
    if number is None:
        raise InvalidParameter("chunk is required: the number the lease answered", parameter="chunk")
    attempt = parse_whole_number(values, "attempt")
    if not attempt:
        raise InvalidParameter("attempt is required (>= 1): the attempt the lease answered", parameter="attempt")
    return number, attempt


@bp.route("/backfill/<wf>/<backfill_id>/renew", methods=MUTATING)
@mutation
def renew(wf, backfill_id):
    names.check_workflow(wf)
    values = request_params("chunk", "attempt", "lease_token", "lease_seconds")
    number, attempt = _chunk_attempt(values)
    seconds = _positive_number(values, "lease_seconds", backfill.MAX_LEASE_SECONDS)
    return json_response(get_backfills().renew(wf, _id(backfill_id), number, attempt,
                                               seconds or backfill.DEFAULT_LEASE_SECONDS,
                                               lease_token=parse_text(values, "lease_token", 200)))


def _finish(wf: str, backfill_id: str, outcome: str):
    names.check_workflow(wf)
    values = request_params("chunk", "attempt", "lease_token", "records_processed", "message")
    number, attempt = _chunk_attempt(values)
    records = parse_whole_number(values, "records_processed")
    if records is not None and records > MAX_RECORDS:
        raise InvalidParameter(f"records_processed of a chunk must be at most {MAX_RECORDS}",
                               parameter="records_processed")
    answer = get_backfills().finish(wf, _id(backfill_id), number, attempt, outcome, records_processed=records,
                                    message=parse_text(values, "message"), actor=actor(),
                                    lease_token=parse_text(values, "lease_token", 200))
    return json_response(answer)


@bp.route("/backfill/<wf>/<backfill_id>/close", methods=MUTATING)
@mutation
def close(wf, backfill_id):
    return _finish(wf, backfill_id, str(backfill.ChunkStatus.SUCCESS))


@bp.route("/backfill/<wf>/<backfill_id>/fail", methods=MUTATING)
@mutation
def fail(wf, backfill_id):
    return _finish(wf, backfill_id, str(backfill.ChunkStatus.FAILED))


@bp.route("/backfill/<wf>/<backfill_id>/cancel", methods=MUTATING)
@mutation
def cancel(wf, backfill_id):
    names.check_workflow(wf)
    request_params()
    return json_response(get_backfills().cancel(wf, _id(backfill_id), actor=actor()))


def openapi_paths() -> dict:
    """Return the OpenAPI paths of these endpoints, for batchy.openapi.spec() to merge in."""
    from .openapi import DATE, JOB, LIMIT, WF, WHOLE, _mutating, _op, _param

    bid = _param("backfill_id", "path", {"type": "string", "pattern": "^[0-9]{1,15}$"})
    number = {"type": "string", "pattern": "^[0-9]{1,10}(\\.[0-9]{1,6})?$"}
    obj = {"content": {"application/json": {"schema": {"type": "object"}}}}
    token = {**_param("lease_token", schema={"type": "string", "maxLength": 200}),
             "description": "The lease_token the lease answered (a missing or wrong one: 409 wrong_lease_token)"}
    finish = [WF, bid, _param("chunk", schema=WHOLE, required=True), _param("attempt", schema=WHOLE, required=True),
              token, _param("records_processed", schema=WHOLE), _param("message", schema={"type": "string", "maxLength": 500})]
    create_ops = _mutating("Create a backfill of a past range, in chunks", None, [
        WF, _param("from", schema=DATE, required=True), _param("to", schema=DATE, required=True),
        {**JOB, "description": "Only this job (repeatable)"},
        _param("batch_size", schema={"type": "string", "enum": ["hour", "day", "week", "month"]}),
        _param("chunk_hours", schema=number), _param("max_attempts", schema=WHOLE)], ok=obj)
    lease_ops = _mutating("Lease the next chunk due (204: none now)", None,
                          [WF, bid, _param("lease_seconds", schema=number)], ok=obj)
    for op in create_ops.values():
        op["responses"]["201"] = op["responses"].pop("200")
    for op in lease_ops.values():
        op["responses"]["204"] = {"description": "No chunk is due now"}
    return {
        "/backfill/{wf}": create_ops,
        "/backfills/{wf}": {"get": _op("The workflow's backfills, newest first", None, [WF, LIMIT], ok=obj)},
        "/backfill/{wf}/{backfill_id}": {"get": _op("A backfill: every chunk and the progress", None, [WF, bid],
                                                    ok=obj)},
        "/backfill/{wf}/{backfill_id}/lease": lease_ops,
        "/backfill/{wf}/{backfill_id}/renew": _mutating(
            "Renew a leased chunk's lease (a heartbeat)", None,
            [WF, bid, _param("chunk", schema=WHOLE, required=True), _param("attempt", schema=WHOLE, required=True),
             token, _param("lease_seconds", schema=number)], ok=obj),
        "/backfill/{wf}/{backfill_id}/close": _mutating("End a leased chunk's attempt: success", None, finish, ok=obj),
        "/backfill/{wf}/{backfill_id}/fail": _mutating("End a leased chunk's attempt: failed", None, finish, ok=obj),
        "/backfill/{wf}/{backfill_id}/cancel": _mutating("Cancel a backfill: its pending chunks", None, [WF, bid],
                                                         ok=obj),
    }
