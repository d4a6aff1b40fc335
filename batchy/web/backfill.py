"""The backfill endpoints: parse the request, call backfills.Backfills, render. No logic of its own."""
from __future__ import annotations

import math

from flask import Blueprint, Response

from ..errors import InvalidParameter
from ..rules import backfill
from ..rules.times import MAX_HOURS
from ..storage.backfill import Backfills
from .api import ATTEST, parse_attestation
from .db import services
from .http import (
    actor, endpoint, json_response, params, parse_jobs, parse_limit, parse_moment, parse_text, parse_whole_number,
)
from .schema import DATE, JOBS, LIMIT, NUMBER, OBJECT, WHOLE, param

bp = Blueprint("backfill", __name__)
CHUNK = param("chunk", schema=WHOLE, required=True)
ATTEMPT = param("attempt", schema=WHOLE, required=True)
LEASE = param("lease_seconds", schema=NUMBER)
TOKEN = param("lease_token", schema={"type": "string", "maxLength": 200},
              description="The lease_token the lease answered (a missing or wrong one: 409 wrong_lease_token)")
FINISH = (CHUNK, ATTEMPT, TOKEN, param("records_processed", schema=WHOLE),
          param("message", schema={"type": "string", "maxLength": 500}))
CLOSE = FINISH + ATTEST
# A chunk's records_processed is kept by Lua's JSON encoder, exact to 14 digits.
MAX_RECORDS = 10**14 - 1


def get_backfills() -> Backfills:
    return services().backfills


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


@endpoint(bp, "/backfill/<wf>", summary="Create a backfill of a past range, in chunks", ok=OBJECT, status="201",
          params=[param("from", schema=DATE, required=True), param("to", schema=DATE, required=True),
                  {**JOBS, "description": "Only these jobs"},
                  param("batch_size", schema={"type": "string", "enum": ["hour", "day", "week", "month"]}),
                  param("chunk_hours", schema=NUMBER), param("max_attempts", schema=WHOLE)], mutating=True)
def create(wf):
    values = params()
    start = parse_moment(values, "from", required=True, local=True)
    end = parse_moment(values, "to", required=True, local=True)
    batch_size = values.get("batch_size") or None
    if batch_size is not None and not isinstance(batch_size, str):
        raise InvalidParameter("batch_size must be hour, day, week or month", parameter="batch_size")
    max_attempts = parse_whole_number(values, "max_attempts")
    if max_attempts is not None and not 1 <= max_attempts <= backfill.MAX_ATTEMPTS:
        raise InvalidParameter(f"max_attempts must be from 1 to {backfill.MAX_ATTEMPTS}", parameter="max_attempts")
    answer = get_backfills().create(
        wf, start, end, jobs=parse_jobs(values, wf), batch_size=batch_size,
        chunk_hours=_positive_number(values, "chunk_hours", MAX_HOURS),
        max_attempts=max_attempts or backfill.DEFAULT_MAX_ATTEMPTS, actor=actor())
    return json_response(answer, 201)


@endpoint(bp, "/backfills/<wf>", summary="The workflow's backfills, newest first", ok=OBJECT, reads="history",
          params=[LIMIT])
def list_backfills(wf):
    values = params()
    return json_response({"workflow": wf, "backfills": get_backfills().list(wf, parse_limit(values))})


@endpoint(bp, "/backfill/<wf>/<backfill_id>", summary="A backfill: every chunk and the progress", ok=OBJECT,
          reads="history")
def show(wf, backfill_id):
    params()
    return json_response(get_backfills().get(wf, _id(backfill_id)))


@endpoint(bp, "/backfill/<wf>/<backfill_id>/lease", summary="Lease the next chunk due (204: none now)", ok=OBJECT,
          params=[LEASE], responses={"204": {"description": "No chunk is due now"}}, mutating=True)
def lease(wf, backfill_id):
    values = params()
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


@endpoint(bp, "/backfill/<wf>/<backfill_id>/renew", summary="Renew a leased chunk's lease (a heartbeat)", ok=OBJECT,
          params=[CHUNK, ATTEMPT, TOKEN, LEASE], mutating=True)
def renew(wf, backfill_id):
    values = params()
    number, attempt = _chunk_attempt(values)
    seconds = _positive_number(values, "lease_seconds", backfill.MAX_LEASE_SECONDS)
    return json_response(get_backfills().renew(wf, _id(backfill_id), number, attempt,
                                               seconds or backfill.DEFAULT_LEASE_SECONDS,
                                               lease_token=parse_text(values, "lease_token", 200)))


def _finish(wf: str, backfill_id: str, outcome: str):
    values = params()
    number, attempt = _chunk_attempt(values)
    records = parse_whole_number(values, "records_processed")
    if records is not None and records > MAX_RECORDS:
        raise InvalidParameter(f"records_processed of a chunk must be at most {MAX_RECORDS}",
                               parameter="records_processed")
    answer = get_backfills().finish(wf, _id(backfill_id), number, attempt, outcome, records_processed=records,
                                    message=parse_text(values, "message"), actor=actor(),
                                    lease_token=parse_text(values, "lease_token", 200),
                                    attested=parse_attestation(values) if outcome == "success" else None)
    return json_response(answer)


@endpoint(bp, "/backfill/<wf>/<backfill_id>/close", summary="End a leased chunk's attempt: success", ok=OBJECT,
          params=CLOSE, mutating=True)
def close(wf, backfill_id):
    return _finish(wf, backfill_id, str(backfill.ChunkStatus.SUCCESS))


@endpoint(bp, "/backfill/<wf>/<backfill_id>/fail", summary="End a leased chunk's attempt: failed", ok=OBJECT,
          params=FINISH, mutating=True)
def fail(wf, backfill_id):
    return _finish(wf, backfill_id, str(backfill.ChunkStatus.FAILED))


@endpoint(bp, "/backfill/<wf>/<backfill_id>/cancel", summary="Cancel a backfill: its pending chunks", ok=OBJECT,
          mutating=True)
def cancel(wf, backfill_id):
    params()
    return json_response(get_backfills().cancel(wf, _id(backfill_id), actor=actor()))
