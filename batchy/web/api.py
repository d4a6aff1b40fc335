"""The HTTP API: parse the request, call the store, render the answer. No logic of its own."""
from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from ..rules import formats, lateness, names, workflows
from .db import get_store, services
from ..errors import InvalidParameter, Unavailable
from .http import (
    actor, check_read, idempotency_key, json_response, mutation, parse_flag, parse_job, parse_limit,
    parse_moment, parse_text, parse_whole_number, request_params, state_response,
)
from ..rules.jobs import BATCH_STATUSES, Status

bp = Blueprint("api", __name__)
MUTATING = ["GET", "POST"]


@bp.get("/healthz")
def healthz():
    request_params()
    return json_response({"status": "ok"})


@bp.get("/readyz")
def readyz():
    request_params()
    why = get_store().refuses_writes()  # an unreachable Redis becomes the 503 error body
    if why:
        raise Unavailable(why)
    return json_response({"status": "ready"})


@bp.route("/load_cfg/<wf>", methods=MUTATING)
@mutation
def load_cfg(wf):
    names.check_workflow(wf)
    reset = parse_flag(request_params("reset"), "reset")
    cfg = current_app.config
    config = workflows.read_config(cfg["BATCHY_CFG_DIR"], wf, cfg["BATCHY_MAX_CFG_BYTES"])
    return json_response(get_store().load(wf, config, reset=reset, actor=actor()))


@bp.route("/load_cfg", methods=MUTATING)
@mutation
def load_all():
    reset = parse_flag(request_params("reset"), "reset")
    cfg = current_app.config
    loaded, failed = get_store().load_all(cfg["BATCHY_CFG_DIR"], cfg["BATCHY_MAX_CFG_BYTES"], reset=reset,
                                          actor=actor())
    return json_response({"loaded": loaded, "failed": failed})


@bp.get("/late")
def late():
    check_read("status")
    request_params()
    found = services()
    return json_response(lateness.late_list(found.history.overview(found.store.workflows()), found.store.now()))


@bp.get("/workflows")
def list_workflows():
    check_read("status")
    request_params()
    return json_response({"workflows": get_store().summaries()})


@bp.route("/remove_workflow/<wf>", methods=MUTATING)
@mutation
def remove_workflow(wf):
    names.check_workflow(wf)
    purge = parse_flag(request_params("purge_history"), "purge_history")
    return json_response(get_store().remove(wf, purge_history=purge, actor=actor()))


@bp.get("/get_status/<wf>")
def get_status(wf):
    check_read("status")
    names.check_workflow(wf)
    if request.query_string:
        request_params()
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
    values = request_params("dry_run")
    change = get_store().open(wf, actor=actor(), dry_run=parse_flag(values, "dry_run"),
                              idempotency_key=idempotency_key())
    if fmt == "infa":
        return Response(
            formats.infa(change.writes).encode(),
            content_type="text/plain; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{wf}.param"'},
        )
    return state_response(change)


def _close(wf: str, outcome: str):
    names.check_workflow(wf)
    values = request_params("job", "batch_id", "records_processed", "message")
    job = values.get("job")
    if job is not None:
        names.check_job(job, wf)
    change = get_store().close(
        wf,
        outcome,
        job=job,
        batch_id=parse_whole_number(values, "batch_id"),
        records_processed=parse_whole_number(values, "records_processed"),
        message=parse_text(values, "message"),
        actor=actor(),
    )
    return state_response(change)


@bp.route("/close_batch/<wf>", methods=MUTATING)
@mutation
def close_batch(wf):
    return _close(wf, Status.SUCCESS)


@bp.route("/fail_batch/<wf>", methods=MUTATING)
@mutation
def fail_batch(wf):
    return _close(wf, Status.FAILED)


@bp.get("/history/<wf>")
def history(wf):
    check_read("history")
    names.check_workflow(wf)
    values = request_params("limit", "before")
    entries, more = services().history.history(wf, limit=parse_limit(values), before=parse_whole_number(values, "before"))
    following = entries[-1]["batch_id"] if more and entries else None
    return json_response({"workflow": wf, "batches": entries, "next_before": following})


@bp.get("/batch/<wf>/<batch_id>")
def batch(wf, batch_id):
    check_read("history")
    names.check_workflow(wf)
    request_params()
    bid = parse_whole_number({"batch_id": batch_id}, "batch_id")
    return json_response(formats.json_raw_state(get_store().raw_batch(wf, bid)))


@bp.get("/batches")
def batches():
    check_read("history")
    values = request_params("status", "workflow", "from", "to", "limit", "offset")
    status = values.get("status")
    if status is not None and status not in BATCH_STATUSES:
        raise InvalidParameter(f"status must be one of {', '.join(BATCH_STATUSES)}", parameter="status")
    workflow = values.get("workflow")
    if workflow is not None:
        names.check_workflow(workflow)
    start, end = parse_moment(values, "from"), parse_moment(values, "to")
    found, following = services().history.batches(
        start=start.timestamp() if start else None,
        end=end.timestamp() if end else None,
        status=status,
        workflow=workflow,
        limit=parse_limit(values),
        offset=parse_whole_number(values, "offset") or 0,
    )
    return json_response({"batches": found, "next_offset": following})


@bp.get("/most_recent/<wf>")
def most_recent(wf):
    check_read("history")
    names.check_workflow(wf)
    return json_response(services().history.most_recent(wf, parse_job(request_params("job"), wf)))


@bp.get("/coverage/<wf>")
def coverage(wf):
    check_read("history")
    names.check_workflow(wf)
    values = request_params("job", "from", "to")
    start, end = parse_moment(values, "from"), parse_moment(values, "to")
    if start and end and end <= start:
        raise InvalidParameter("to must be later than from", parameter="to")
    return json_response(services().history.coverage(wf, parse_job(values, wf), start.timestamp() if start else None,
                                                     end.timestamp() if end else None))


@bp.get("/events/<wf>")
def events(wf):
    check_read("events")
    names.check_workflow(wf)
    values = request_params("limit", "before")
    before = parse_text(values, "before", 40)
    return json_response({"workflow": wf, "events": services().history.events(wf, limit=parse_limit(values, 100), before=before)})


@bp.route("/set_from_date/<wf>", methods=MUTATING)
@mutation
def set_from_date(wf):
    names.check_workflow(wf)
    values = request_params("from_date", "job", "force")
    change = get_store().set_from_date(
        wf, parse_moment(values, "from_date", required=True, local=True), job=parse_job(values, wf),
        force=parse_flag(values, "force"), actor=actor(),
    )
    return state_response(change)


@bp.route("/rewind/<wf>", methods=MUTATING)
@mutation
def rewind(wf):
    names.check_workflow(wf)
    values = request_params("batch_id", "job", "force")
    batch_id = parse_whole_number(values, "batch_id")
    if batch_id is None:
        raise InvalidParameter("batch_id is required: the batch whose from_date to go back to", parameter="batch_id")
    change = get_store().rewind(wf, batch_id, job=parse_job(values, wf), force=parse_flag(values, "force"),
                                actor=actor())
    return state_response(change)


@bp.route("/pause", methods=MUTATING)
@bp.route("/pause/<wf>", methods=MUTATING)
@mutation
def pause(wf=None):
    if wf is not None:
        names.check_workflow(wf)
    message = parse_text(request_params("message"), "message") or ""
    return json_response(services().pauses.pause(wf, message, actor()))


@bp.route("/resume", methods=MUTATING)
@bp.route("/resume/<wf>", methods=MUTATING)
@mutation
def resume(wf=None):
    if wf is not None:
        names.check_workflow(wf)
    request_params()
    return json_response(services().pauses.resume(wf, actor()))


@bp.get("/pause_status")
def pause_status():
    check_read("status")
    request_params()
    found = services()
    return json_response(found.pauses.status(found.store.workflows()))


@bp.get("/pause_history")
def pause_history():
    check_read("status")
    return json_response({"history": services().pauses.history(parse_limit(request_params("limit"), 100))})


@bp.get("/openapi.json")
def openapi():
    from .openapi import spec

    request_params()

    return json_response(spec())
