"""The HTTP API: parse the request, call a service, render the answer. No logic of its own.

Each view's route, token, parameters and OpenAPI entry are declared once, by endpoint().
"""
from __future__ import annotations

from flask import Blueprint, Response, current_app, request

from ..errors import InvalidParameter, Unavailable
from ..rules import formats, lateness, names, watermark, workflows
from ..rules.jobs import BATCH_STATUSES, Status
from .db import get_store, services
from .http import (
    actor, endpoint, idempotency_key, json_response, params, parse_flag, parse_job, parse_jobs, parse_limit,
    parse_moment, parse_text, parse_whole_number, state_response,
)
from .schema import DATE, FLAG, GET_MESSAGE, IDEM, JOB, JOBS, LIMIT, NAME, TEXT, WHOLE, json_content, param

bp = Blueprint("api", __name__)

RESET = param("reset", schema=FLAG)
ATTEST = (param("checksum", schema={"type": "string", "maxLength": 128},
                description="The loaded data's checksum, kept in history (a success only)"),
          param("dq", schema={"type": "string", "enum": ["pass", "fail"]},
                description="The data quality verdict: fail moves the watermark but leaves the window a hole"),
          param("dq_message", schema=GET_MESSAGE, description="Why, with dq"))
CLOSE = (JOB, param("records_processed", schema=WHOLE, description="Rows the run processed"),
         param("message", schema=GET_MESSAGE),
         param("batch_id", schema=WHOLE, description="Refuse (409) unless this is the current batch"))
FORCE = param("force", schema=FLAG)
WORKFLOWS_PAGE = 1000
MAX_WORKFLOWS_PAGE = 10000


@endpoint(bp, "/healthz", summary="Process alive", schema="Health")
def healthz():
    params()
    return json_response({"status": "ok"})


@endpoint(bp, "/readyz", summary="Redis answers", schema="Health")
def readyz():
    params()
    why = get_store().refuses_writes()  # an unreachable Redis becomes the 503 error body
    if why:
        raise Unavailable(why)
    return json_response({"status": "ready"})


@endpoint(bp, "/load_cfg/<wf>", summary="Load or reload cfg/<wf>.yaml", schema="State", params=[RESET],
          mutating=True)
def load_cfg(wf):
    reset = parse_flag(params(), "reset")
    cfg = current_app.config
    config = workflows.read_config(cfg["BATCHY_CFG_DIR"], wf, cfg["BATCHY_MAX_CFG_BYTES"])
    return json_response(get_store().load(wf, config, reset=reset, actor=actor()))


@endpoint(bp, "/load_cfg", summary="Load every workflow file of the cfg folder", schema="LoadAll", params=[RESET],
          mutating=True)
def load_all():
    reset = parse_flag(params(), "reset")
    cfg = current_app.config
    loaded, failed = get_store().load_all(cfg["BATCHY_CFG_DIR"], cfg["BATCHY_MAX_CFG_BYTES"], reset=reset,
                                          actor=actor())
    return json_response({"loaded": loaded, "failed": failed})


def late_text(read) -> bytes:
    """Return /late's answer for a read of the fleet (storage.fleet.FleetRead)."""
    return formats.json_state(lateness.late_list(read.overview, read.now))


@endpoint(bp, "/late", summary="Late jobs and stuck batches", schema="Late", reads="status")
def late():
    params()
    # Judged once per BATCHY_FLEET_INTERVAL per process, from one read of the fleet.
    return json_response(services().fleet.get("late", late_text))


@endpoint(bp, "/workflows", summary="Loaded workflows in name order, a page at a time", schema="Workflows",
          reads="status", params=[
              param("limit", schema={"type": "integer", "minimum": 1, "maximum": MAX_WORKFLOWS_PAGE},
                    description=f"Workflows per answer ({WORKFLOWS_PAGE} by default)"),
              param("offset", schema={"type": "integer", "minimum": 0},
                    description="Skip this many (the next_offset of the previous answer)")])
def list_workflows():
    values = params()
    found, following = get_store().summaries(limit=parse_limit(values, WORKFLOWS_PAGE, MAX_WORKFLOWS_PAGE),
                                             offset=parse_whole_number(values, "offset") or 0)
    return json_response({"workflows": found, "next_offset": following})


@endpoint(bp, "/remove_workflow/<wf>", summary="Remove a workflow (history kept, or purged)", schema="Removed",
          params=[param("purge_history", schema=FLAG)], mutating=True)
def remove_workflow(wf):
    purge = parse_flag(params(), "purge_history")
    return json_response(get_store().remove(wf, purge_history=purge, actor=actor()))


@endpoint(bp, "/get_status/<wf>", summary="Current state of every job", schema="State", reads="status")
def get_status(wf):
    if request.query_string:
        params()
    return json_response(formats.json_raw_state(get_store().raw_status(wf)))


@endpoint(bp, "/open_batch/<wf>", "/open_batch/<wf>/<fmt>", summary="Open a batch as JSON or an Informatica "
          "parameter file", schema="State",
          params=[{**JOBS, "description": "Open only these jobs; every other job is left as it is"},
                  param("dry_run", schema=FLAG), IDEM],
          ok={"content": {**json_content("State")["content"], **TEXT["content"]}}, mutating=True)
def open_batch(wf, fmt="json"):
    if fmt not in formats.FORMATS:
        raise InvalidParameter(
            f"unknown format {fmt[:40]!r}: use one of {', '.join(formats.FORMATS)}", parameter="fmt"
        )
    values = params()
    change = get_store().open(wf, actor=actor(), dry_run=parse_flag(values, "dry_run"),
                              idempotency_key=idempotency_key(), jobs=parse_jobs(values, wf))
    if fmt == "infa":
        return Response(
            formats.infa(change.writes).encode(),
            content_type="text/plain; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{wf}.param"'},
        )
    return state_response(change)


def _close(wf: str, outcome: str):
    values = params()
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
        attested=parse_attestation(values) if outcome == Status.SUCCESS else None,
    )
    return state_response(change)


def parse_attestation(values: dict) -> dict:
    """Return a close's checksum, dq and dq_message, checked (400 naming the parameter otherwise)."""
    if "checksum" not in values and "dq" not in values and "dq_message" not in values:
        return {}  # nothing attested: the usual close
    given = {name: parse_text(values, name) for name in ("checksum", "dq", "dq_message")}
    try:
        return watermark.attestation(**given)
    except ValueError as exc:
        raise InvalidParameter(str(exc), parameter=str(exc).split()[0]) from None


@endpoint(bp, "/close_batch/<wf>", summary="Mark open jobs successful", schema="State", params=CLOSE + ATTEST,
          mutating=True)
def close_batch(wf):
    return _close(wf, Status.SUCCESS)


@endpoint(bp, "/fail_batch/<wf>", summary="Mark open jobs failed", schema="State", params=CLOSE, mutating=True)
def fail_batch(wf):
    return _close(wf, Status.FAILED)


@endpoint(bp, "/history/<wf>", summary="Batches, newest first", schema="History", reads="history",
          params=[LIMIT, param("before", schema={"type": "integer", "minimum": 0})])
def history(wf):
    values = params()
    entries, more = services().history.history(wf, limit=parse_limit(values),
                                                before=parse_whole_number(values, "before"))
    following = entries[-1]["batch_id"] if more and entries else None
    return json_response({"workflow": wf, "batches": entries, "next_before": following})


@endpoint(bp, "/batch/<wf>/<batch_id>", summary="One batch's snapshot", schema="State", reads="history")
def batch(wf, batch_id):
    params()
    bid = parse_whole_number({"batch_id": batch_id}, "batch_id")
    return json_response(formats.json_raw_state(get_store().raw_batch(wf, bid)))


@endpoint(bp, "/batches", summary="Batches of all workflows by start time", schema="Batches", reads="history",
          params=[param("from", schema=DATE, description="ISO-8601 or unix seconds"), param("to", schema=DATE),
                  param("status", schema={"type": "string", "enum": [str(s) for s in BATCH_STATUSES]}),
                  param("workflow", schema=NAME), LIMIT, param("offset", schema={"type": "integer", "minimum": 0})])
def batches():
    values = params()
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


@endpoint(bp, "/most_recent/<wf>", summary="Start of the last successful batch", schema="MostRecent",
          reads="history", params=[JOB])
def most_recent(wf):
    return json_response(services().history.most_recent(wf, parse_job(params(), wf)))


@endpoint(bp, "/coverage/<wf>", summary="Covered intervals and holes per job", schema="Coverage", reads="history",
          params=[JOB, param("from", schema=DATE), param("to", schema=DATE)])
def coverage(wf):
    values = params()
    # Without an offset, from and to are wall times in each job's zone (as for invalidate, backfill).
    start, end = parse_moment(values, "from", local=True), parse_moment(values, "to", local=True)
    return json_response(services().history.coverage(wf, parse_job(values, wf), start, end))


@endpoint(bp, "/invalidate/<wf>", summary="Late data: mark a range of the jobs' coverage dirty", schema="State",
          params=[param("from", schema=DATE, required=True, description="ISO-8601 (no offset: each job's zone)"),
                  param("to", schema=DATE, required=True), {**JOBS, "description": "Only these jobs (default: every job)"},
                  param("reason", schema=GET_MESSAGE, description="Why, for the audit log")], mutating=True)
def invalidate(wf):
    values = params()
    start = parse_moment(values, "from", required=True, local=True)
    end = parse_moment(values, "to", required=True, local=True)
    change = get_store().invalidate(wf, start, end, jobs=parse_jobs(values, wf), reason=parse_text(values, "reason"),
                                    actor=actor())
    return state_response(change)


@endpoint(bp, "/events/<wf>", summary="Audit log, newest first", schema="Events", reads="events",
          params=[LIMIT, param("before", schema={"type": "string", "maxLength": 40})])
def events(wf):
    values = params()
    before = parse_text(values, "before", 40)
    return json_response({"workflow": wf, "events": services().history.events(wf, limit=parse_limit(values, 100),
                                                                               before=before)})


@endpoint(bp, "/set_from_date/<wf>", summary="Set the next batch's from_date exactly", schema="State",
          params=[param("from_date", schema=DATE, required=True, description="ISO-8601", example="2024-01-01"),
                  JOB, FORCE], mutating=True)
def set_from_date(wf):
    values = params()
    change = get_store().set_from_date(
        wf, parse_moment(values, "from_date", required=True, local=True), job=parse_job(values, wf),
        force=parse_flag(values, "force"), actor=actor(),
    )
    return state_response(change)


@endpoint(bp, "/rewind/<wf>", summary="Go back to the from_date of a past batch", schema="State",
          params=[param("batch_id", schema=WHOLE, required=True), JOB, FORCE], mutating=True)
def rewind(wf):
    values = params()
    batch_id = parse_whole_number(values, "batch_id")
    if batch_id is None:
        raise InvalidParameter("batch_id is required: the batch whose from_date to go back to", parameter="batch_id")
    change = get_store().rewind(wf, batch_id, job=parse_job(values, wf), force=parse_flag(values, "force"),
                                actor=actor())
    return state_response(change)


@endpoint(bp, "/pause", "/pause/<wf>", summary="Refuse new batches of every workflow, or of one", schema="Pause",
          params=[param("message", schema=GET_MESSAGE)], mutating=True)
def pause(wf=None):
    message = parse_text(params(), "message") or ""
    return json_response(services().pauses.pause(wf, message, actor()))


@endpoint(bp, "/resume", "/resume/<wf>", summary="Allow new batches again (of every workflow, or of one)",
          schema="Pause", mutating=True)
def resume(wf=None):
    params()
    return json_response(services().pauses.resume(wf, actor()))


@endpoint(bp, "/pause_status", summary="Current pauses", schema="PauseStatus", reads="status")
def pause_status():
    params()
    found = services()
    return json_response(found.pauses.status(found.store.workflows()))


@endpoint(bp, "/pause_history", summary="Every pause and resume, newest first", schema="PauseHistory",
          reads="status", params=[LIMIT])
def pause_history():
    return json_response({"history": services().pauses.history(parse_limit(params(), 100))})
