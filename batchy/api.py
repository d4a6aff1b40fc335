"""The HTTP API: parse the request, call the store, render the answer. No logic of its own."""
from __future__ import annotations

import functools
import hmac

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import MethodNotAllowed

from . import formats, names, watermark, workflows
from .db import get_store
from .errors import InvalidParameter, Unauthorized

bp = Blueprint("api", __name__)
MUTATING = ["GET", "POST"]
MAX_MESSAGE = 4096


def state_response(change) -> Response:
    """Answer with every job after a change, from the JSON text just stored when there is one."""
    if change.stored is not None:
        return json_response(formats.json_raw_state(change.stored))
    return json_response(change.state)


def json_response(body: bytes | dict | list, status: int = 200) -> Response:
    if not isinstance(body, bytes):
        body = formats.json_state(body)
    return Response(body, status=status, mimetype="application/json")


def mutation(view):
    """Guard a state-changing view: POST-only when so configured, and the API token."""

    @functools.wraps(view)
    def guarded(*args, **kwargs):
        config = current_app.config
        method = request.method
        get_allowed = config["BATCHY_ALLOW_GET_MUTATIONS"]
        # Flask routes HEAD to GET views; link previews send it: HEAD never mutates.
        if method == "HEAD" or (method == "GET" and not get_allowed):
            raise MethodNotAllowed(
                valid_methods=["GET", "POST"] if get_allowed else ["POST"],
                description="this deployment accepts mutations only as POST" if not get_allowed
                else "HEAD does not change state: use GET or POST",
            )
        if config["BATCHY_API_TOKEN"]:
            check_token()
        return view(*args, **kwargs)

    return guarded


def check_token() -> None:
    token = current_app.config["BATCHY_API_TOKEN"]
    if not token:
        return
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("missing or wrong API token: send 'Authorization: Bearer <token>'")


def params() -> dict:
    """Return the request's parameters: query string, then a JSON or form body over it."""
    req = request._get_current_object()  # one proxy lookup, not one per attribute
    values = req.args.to_dict() if req.query_string else {}
    if req.method == "POST" and req.content_length != 0:
        if req.is_json:
            try:
                body = req.get_json(silent=True)
            except RecursionError:  # nests deeper than the JSON decoder recurses
                body = None
            if not isinstance(body, dict):
                raise InvalidParameter("the request body must be a JSON object")
            values.update(body)
        else:
            values.update(req.form.to_dict())
    return values


def flag(values: dict, name: str) -> bool:
    value = values.get(name, False)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise InvalidParameter(f"{name} must be true or false, not {str(value)[:40]!r}", parameter=name)


def whole_number(values: dict, name: str) -> int | None:
    value = values.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidParameter(f"{name} must be a whole number >= 0, not {value!r}", parameter=name)
    if isinstance(value, str):
        if not value.isascii() or not value.isdigit() or len(value) > 18:
            raise InvalidParameter(f"{name} must be a whole number >= 0, not {value[:40]!r}", parameter=name)
        value = int(value)
    if value < 0 or value > 2**53:
        raise InvalidParameter(f"{name} must be a whole number >= 0, not {value}", parameter=name)
    return value


def text(values: dict, name: str, limit: int = MAX_MESSAGE) -> str | None:
    value = values.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidParameter(f"{name} must be text", parameter=name)
    if len(value) > limit:
        raise InvalidParameter(f"{name} is longer than {limit} characters", parameter=name)
    if not value.isascii() and workflows.has_surrogate(value):
        raise InvalidParameter(f"{name} must be UTF-8 text (it holds a lone surrogate)", parameter=name)
    return value


def actor() -> str:
    return request.remote_addr or ""


@bp.get("/healthz")
def healthz():
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz():
    get_store().ping()  # a Redis error becomes the 503 error body
    return json_response({"status": "ready"})


@bp.route("/load_cfg/<wf>", methods=MUTATING)
@mutation
def load_cfg(wf):
    names.check_workflow(wf)
    reset = flag(params(), "reset")
    cfg = current_app.config
    config = workflows.read_config(cfg["BATCHY_CFG_DIR"], wf, cfg["BATCHY_MAX_CFG_BYTES"])
    return json_response(get_store().load(wf, config, reset=reset, actor=actor()))


@bp.get("/get_status/<wf>")
def get_status(wf):
    names.check_workflow(wf)
    return json_response(formats.json_raw_state(get_store().raw_status(wf)))


@bp.route("/open_batch/<wf>", methods=MUTATING)
@bp.route("/open_batch/<wf>/<fmt>", methods=MUTATING)
@mutation
def open_batch(wf, fmt="json"):
    names.check_workflow(wf)
    if fmt not in formats.FORMATS:
        raise InvalidParameter(
            f"unknown format {fmt[:40]!r}: use one of {', '.join(formats.FORMATS)}", parameter="fmt"
        )
    values = params()
    change = get_store().open(wf, actor=actor(), dry_run=flag(values, "dry_run"))
    if fmt == "infa":
        return Response(
            formats.infa(change.jobs).encode(),
            content_type="text/plain; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{wf}.param"'},
        )
    return state_response(change)


def _close(wf: str, outcome: str):
    names.check_workflow(wf)
    values = params()
    job = values.get("job")
    if job is not None:
        names.check_job(job, wf)
    change = get_store().close(
        wf,
        outcome,
        job=job,
        batch_id=whole_number(values, "batch_id"),
        records_processed=whole_number(values, "records_processed"),
        message=text(values, "message"),
        actor=actor(),
    )
    return state_response(change)


@bp.route("/close_batch/<wf>", methods=MUTATING)
@mutation
def close_batch(wf):
    return _close(wf, watermark.SUCCESS)


@bp.route("/fail_batch/<wf>", methods=MUTATING)
@mutation
def fail_batch(wf):
    return _close(wf, watermark.FAILED)


def limit(values: dict, default: int = 50, maximum: int = 1000) -> int:
    value = whole_number(values, "limit")
    if value is None:
        return default
    if not 1 <= value <= maximum:
        raise InvalidParameter(f"limit must be from 1 to {maximum}", parameter="limit")
    return value


def moment(values: dict, name: str, required: bool = False):
    """Return an ISO-8601 time (or unix seconds) parameter as an aware datetime."""
    value = values.get(name)
    if value is None or value == "":
        if required:
            raise InvalidParameter(f"{name} is required (ISO-8601, e.g. 2024-01-31T00:00:00+00:00)", parameter=name)
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        value = int(value)
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            value = watermark.datetime.fromtimestamp(value, watermark.UTC)
        return watermark.parse_input_time(value, name)
    except (ValueError, OverflowError, OSError) as exc:
        raise InvalidParameter(str(exc), parameter=name) from None


def optional_job(values: dict, wf: str) -> str | None:
    job = values.get("job")
    return None if job is None else names.check_job(job, wf)


@bp.get("/history/<wf>")
def history(wf):
    names.check_workflow(wf)
    values = params()
    entries = get_store().history(wf, limit=limit(values), before=whole_number(values, "before"))
    following = entries[-1]["batch_id"] if len(entries) == limit(values) else None
    return json_response({"workflow": wf, "batches": entries, "next_before": following})


@bp.get("/batch/<wf>/<batch_id>")
def batch(wf, batch_id):
    names.check_workflow(wf)
    bid = whole_number({"batch_id": batch_id}, "batch_id")
    return json_response(formats.json_raw_state(get_store().raw_batch(wf, bid)))


@bp.get("/batches")
def batches():
    values = params()
    status = values.get("status")
    if status is not None and status not in watermark.BATCH_STATUSES:
        raise InvalidParameter(f"status must be one of {', '.join(watermark.BATCH_STATUSES)}", parameter="status")
    workflow = values.get("workflow")
    if workflow is not None:
        names.check_workflow(workflow)
    start, end = moment(values, "from"), moment(values, "to")
    found, following = get_store().batches(
        start=start.timestamp() if start else None,
        end=end.timestamp() if end else None,
        status=status,
        workflow=workflow,
        limit=limit(values),
        offset=whole_number(values, "offset") or 0,
    )
    return json_response({"batches": found, "next_offset": following})


@bp.get("/most_recent/<wf>")
def most_recent(wf):
    names.check_workflow(wf)
    return json_response(get_store().most_recent(wf, optional_job(params(), wf)))


@bp.get("/events/<wf>")
def events(wf):
    names.check_workflow(wf)
    values = params()
    before = text(values, "before", 40)
    return json_response({"workflow": wf, "events": get_store().events(wf, limit=limit(values, 100), before=before)})


@bp.route("/set_from_date/<wf>", methods=MUTATING)
@mutation
def set_from_date(wf):
    names.check_workflow(wf)
    values = params()
    change = get_store().set_from_date(
        wf, moment(values, "from_date", required=True), job=optional_job(values, wf),
        force=flag(values, "force"), actor=actor(),
    )
    return state_response(change)


@bp.route("/rewind/<wf>", methods=MUTATING)
@mutation
def rewind(wf):
    names.check_workflow(wf)
    values = params()
    batch_id = whole_number(values, "batch_id")
    if batch_id is None:
        raise InvalidParameter("batch_id is required: the batch whose from_date to go back to", parameter="batch_id")
    change = get_store().rewind(wf, batch_id, job=optional_job(values, wf), force=flag(values, "force"),
                                actor=actor())
    return state_response(change)


@bp.route("/pause", methods=MUTATING)
@bp.route("/pause/<wf>", methods=MUTATING)
@mutation
def pause(wf=None):
    if wf is not None:
        names.check_workflow(wf)
    message = text(params(), "message") or ""
    return json_response(get_store().pause(wf, message, actor=actor()))


@bp.route("/resume", methods=MUTATING)
@bp.route("/resume/<wf>", methods=MUTATING)
@mutation
def resume(wf=None):
    if wf is not None:
        names.check_workflow(wf)
    return json_response(get_store().resume(wf, actor=actor()))


@bp.get("/pause_status")
def pause_status():
    return json_response(get_store().pauses())


@bp.get("/pause_history")
def pause_history():
    return json_response({"history": get_store().pause_history(limit(params(), 100))})


@bp.get("/openapi.json")
def openapi():
    from .openapi import spec

    return json_response(spec())
