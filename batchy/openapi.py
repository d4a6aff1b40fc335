"""The OpenAPI 3 document of the whole HTTP API, served at /openapi.json."""
from __future__ import annotations

from . import names
from .jobs import BATCH_STATUSES

NAME = {"type": "string", "pattern": "^" + names.NAME_RE.pattern + "$", "maxLength": 128}
NULLABLE_STRING = {"type": ["string", "null"]}
NULLABLE_INT = {"type": ["integer", "null"]}
ID = {"type": "string", "pattern": "^[0-9]{1,18}$"}

SCHEMAS = {
    "LoadAll": {
        "type": "object",
        "required": ["loaded", "failed"],
        "properties": {"loaded": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/State"}},
                       "failed": {"type": "object", "additionalProperties": {"type": "object"}}},
    },
    "Workflows": {
        "type": "object",
        "required": ["workflows"],
        "properties": {"workflows": {"type": "array", "items": {
            "type": "object", "required": ["workflow", "jobs", "last_batch_id", "paused"],
            "properties": {"workflow": {"type": "string"}, "jobs": {"type": "integer"},
                           "last_batch_id": {"type": ["integer", "null"]}, "paused": {"type": "boolean"}}}}},
    },
    "Coverage": {
        "type": "object",
        "additionalProperties": {
            "type": "object", "required": ["covered", "holes"],
            "properties": {k: {"type": "array", "items": {"type": "array", "items": {"type": "string"}}}
                           for k in ("covered", "holes")}},
    },
    "Late": {
        "type": "array",
        "items": {"type": "object", "required": ["workflow", "job", "kind", "reason", "since"],
                  "properties": {"workflow": {"type": "string"}, "job": {"type": ["string", "null"]},
                                 "kind": {"type": "string", "enum": ["late", "stuck", "unchecked"]},
                                 "reason": {"type": "string"}, "since": {"type": ["string", "null"]}}},
    },
    "Removed": {
        "type": "object",
        "required": ["workflow", "removed", "history"],
        "properties": {"workflow": {"type": "string"}, "removed": {"type": "boolean"},
                       "history": {"type": "string", "enum": ["kept", "purged"]}},
    },
    "Error": {
        "type": "object",
        "required": ["error", "message", "status"],
        "properties": {
            "error": {"type": "string", "pattern": "^[a-z_]+$"},
            "message": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
        },
    },
    "Job": {
        "type": "object",
        "description": "A job's parameters: the special fields below plus any free-form ones.",
        "properties": {
            "status": {"type": "string", "enum": [str(s) for s in BATCH_STATUSES]},
            "batch_id": NULLABLE_INT,
            "from_date": NULLABLE_STRING,
            "to_date": NULLABLE_STRING,
            "batch_start": NULLABLE_STRING,
            "batch_end": NULLABLE_STRING,
            "next_from_date": NULLABLE_STRING,
            "reprocess_hours": {"type": "number", "minimum": 0},
            "trunc_start": {"type": "boolean"},
            "timezone": {"type": "string"},
            "records_processed": NULLABLE_INT,
            "message": NULLABLE_STRING,
        },
    },
    "State": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Job"}},
    "HistoryEntry": {
        "type": "object",
        "required": ["batch_id", "status", "jobs"],
        "properties": {
            "workflow": {"type": "string"},
            "batch_id": {"type": "integer"},
            "status": {"type": "string", "enum": [str(s) for s in BATCH_STATUSES]},
            "batch_start": NULLABLE_STRING,
            "batch_end": NULLABLE_STRING,
            "duration_seconds": {"type": ["number", "null"]},
            "records_processed": NULLABLE_INT,
            "jobs": {"type": "object", "additionalProperties": {"type": "object"}},
        },
    },
    "History": {
        "type": "object",
        "required": ["workflow", "batches", "next_before"],
        "properties": {
            "workflow": {"type": "string"},
            "batches": {"type": "array", "items": {"$ref": "#/components/schemas/HistoryEntry"}},
            "next_before": NULLABLE_INT,
        },
    },
    "Batches": {
        "type": "object",
        "required": ["batches", "next_offset"],
        "properties": {
            "batches": {"type": "array", "items": {"$ref": "#/components/schemas/HistoryEntry"}},
            "next_offset": NULLABLE_INT,
        },
    },
    "MostRecent": {
        "type": "object",
        "required": ["workflow", "most_recent", "timestamp"],
        "properties": {
            "workflow": {"type": "string"},
            "job": NULLABLE_STRING,
            "most_recent": NULLABLE_STRING,
            "timestamp": NULLABLE_INT,
            "batch_id": NULLABLE_INT,
            "jobs": {"type": "object"},
        },
    },
    "Events": {
        "type": "object",
        "required": ["workflow", "events"],
        "properties": {
            "workflow": {"type": "string"},
            "events": {
                "type": "array",
                "items": {"type": "object", "required": ["id", "time", "action"],
                          "properties": {"id": {"type": "string"}, "time": {"type": "string"},
                                         "action": {"type": "string"}}},
            },
        },
    },
    "Pause": {
        "type": "object",
        "required": ["paused", "scope", "since"],
        "properties": {"paused": {"type": "boolean"}, "scope": {"type": "string"},
                       "message": {"type": "string"}, "since": {"type": "string"},
                       "actor": {"type": "string"}},
    },
    "PauseStatus": {
        "type": "object",
        "required": ["service", "workflows"],
        "properties": {"service": {"type": ["object", "null"]}, "workflows": {"type": "object"}},
    },
    "PauseHistory": {
        "type": "object",
        "required": ["history"],
        "properties": {"history": {"type": "array", "items": {"type": "object"}}},
    },
    "Verdict": {
        "type": "object",
        "required": ["workflow", "date", "state", "ready", "jobs", "timed_out"],
        "properties": {
            "workflow": {"type": "string"},
            "date": {"type": "string"},
            "tz": {"type": "string"},
            "state": {"type": "string", "enum": ["ready", "waiting", "failed"]},
            "ready": {"type": "boolean"},
            "missing": {"type": "array", "items": {"type": "string"}},
            "failed": {"type": "array", "items": {"type": "string"}},
            "jobs": {"type": "object"},
            "waited": {"type": "number"},
            "timeout": {"type": "number"},
            "timed_out": {"type": "boolean"},
        },
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}},
}


def _param(name: str, where: str = "query", schema: dict | None = None, required: bool = False,
           description: str = "", example=None) -> dict:
    param = {"name": name, "in": where, "required": required or where == "path",
             "schema": schema or {"type": "string"}, "description": description}
    if example is not None:
        param["example"] = example
    return param


WF = _param("wf", "path", NAME, description="Workflow name", example="wf1")
# A query string must fit gunicorn's 8 KB request line even when percent-encoded;
# longer messages go in a POST body.
GET_MESSAGE = {"type": "string", "maxLength": 500}
DATE = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2})?)?(Z|[+-][0-9]{2}:?[0-9]{2})?$"}
JOB = _param("job", schema=NAME, description="Only this job step")
FLAG = {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no", "on", "off"]}
WHOLE = {"type": "string", "pattern": "^[0-9]{1,15}$"}
LIMIT = _param("limit", schema={"type": "integer", "minimum": 1, "maximum": 1000})


def _json(schema: str) -> dict:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _op(summary: str, schema: str | None, params: list, ok: dict | None = None, mutating: bool = False) -> dict:
    op = {
        "summary": summary,
        "parameters": params,
        "responses": {
            "200": {"description": "OK", **(ok or _json(schema))},
            "default": {"description": "Error (the one JSON error shape)", **_json("Error")},
        },
    }
    if mutating:
        op["security"] = [{}, {"bearer": []}]
    return op


def _mutating(summary: str, schema: str, params: list, ok: dict | None = None) -> dict:
    """GET as in the original URLs, and POST with the same parameters."""
    get = _op(summary, schema, params, ok, mutating=True)
    body_schema = {
        "type": "object",
        "properties": {p["name"]: p["schema"] for p in params if p["in"] == "query"},
        "additionalProperties": False,
    }
    post = _op(summary, schema, [p for p in params if p["in"] in ("path", "header")], ok, mutating=True)
    post["requestBody"] = {"required": False, "content": {"application/json": {"schema": body_schema}}}
    return {"get": get, "post": post}


CLOSE_PARAMS = [
    WF, JOB,
    _param("records_processed", schema=WHOLE, description="Rows the run processed"),
    _param("message", schema=GET_MESSAGE),
    _param("batch_id", schema=WHOLE, description="Refuse (409) unless this is the current batch"),
]
INFA = {"content": {"text/plain": {"schema": {"type": "string"}}}}
IDEM = _param("Idempotency-Key", "header", {"type": "string", "minLength": 1, "maxLength": 200,
                                            "pattern": "^[ -~]+$"},
              description="A retry with the same key answers the batch the first call opened")


def spec() -> dict:
    """Return the OpenAPI document."""
    paths = {
        "/healthz": {"get": _op("Process alive", "Health", [])},
        "/readyz": {"get": _op("Redis answers", "Health", [])},
        "/load_cfg/{wf}": _mutating("Load or reload cfg/<wf>.yaml", "State", [WF, _param("reset", schema=FLAG)]),
        "/load_cfg": _mutating("Load every workflow file of the cfg folder", "LoadAll", [_param("reset", schema=FLAG)]),
        "/workflows": {"get": _op("Every loaded workflow", "Workflows", [])},
        "/late": {"get": _op("Late jobs and stuck batches", "Late", [])},
        "/remove_workflow/{wf}": _mutating("Remove a workflow (history kept, or purged)", "Removed",
                                           [WF, _param("purge_history", schema=FLAG)]),
        "/get_status/{wf}": {"get": _op("Current state of every job", "State", [WF])},
        "/open_batch/{wf}": _mutating("Open a batch (JSON)", "State", [WF, _param("dry_run", schema=FLAG), IDEM]),
        "/open_batch/{wf}/{fmt}": _mutating(
            "Open a batch as JSON or an Informatica parameter file", "State",
            [WF, _param("fmt", "path", {"type": "string", "enum": ["json", "infa"]}),
             _param("dry_run", schema=FLAG), IDEM],
            ok={"content": {**_json("State")["content"], **INFA["content"]}},
        ),
        "/close_batch/{wf}": _mutating("Mark open jobs successful", "State", CLOSE_PARAMS),
        "/fail_batch/{wf}": _mutating("Mark open jobs failed", "State", CLOSE_PARAMS),
        "/history/{wf}": {"get": _op("Batches, newest first", "History",
                                     [WF, LIMIT, _param("before", schema={"type": "integer", "minimum": 0})])},
        "/batch/{wf}/{batch_id}": {"get": _op("One batch's snapshot", "State",
                                              [WF, _param("batch_id", "path", ID)])},
        "/batches": {"get": _op("Batches of all workflows by start time", "Batches", [
            _param("from", schema=DATE, description="ISO-8601 or unix seconds"), _param("to", schema=DATE),
            _param("status", schema={"type": "string", "enum": [str(s) for s in BATCH_STATUSES]}),
            _param("workflow", schema=NAME), LIMIT,
            _param("offset", schema={"type": "integer", "minimum": 0})])},
        "/coverage/{wf}": {"get": _op("Covered intervals and holes per job", "Coverage", [
            WF, JOB, _param("from", schema=DATE), _param("to", schema=DATE)])},
        "/most_recent/{wf}": {"get": _op("Start of the last successful batch", "MostRecent", [WF, JOB])},
        "/events/{wf}": {"get": _op("Audit log, newest first", "Events",
                                    [WF, LIMIT, _param("before", schema={"type": "string", "maxLength": 40})])},
        "/set_from_date/{wf}": _mutating("Set the next batch's from_date exactly", "State", [
            WF, _param("from_date", schema=DATE, required=True, description="ISO-8601", example="2024-01-01"),
            JOB, _param("force", schema=FLAG)]),
        "/rewind/{wf}": _mutating("Go back to the from_date of a past batch", "State", [
            WF, _param("batch_id", schema=WHOLE, required=True), JOB, _param("force", schema=FLAG)]),
        "/pause": _mutating("Refuse new batches of every workflow", "Pause", [_param("message", schema=GET_MESSAGE)]),
        "/pause/{wf}": _mutating("Refuse new batches of a workflow", "Pause", [WF, _param("message", schema=GET_MESSAGE)]),
        "/resume": _mutating("Allow new batches again", "Pause", []),
        "/resume/{wf}": _mutating("Allow new batches of a workflow again", "Pause", [WF]),
        "/pause_status": {"get": _op("Current pauses", "PauseStatus", [])},
        "/pause_history": {"get": _op("Every pause and resume, newest first", "PauseHistory", [LIMIT])},
        "/wait/{wf}": {"get": _op("Block until the workflow is done for a date, or the timeout", "Verdict", [
            WF, _param("date", schema={"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}),
            _param("tz", example="UTC"), _param("job", schema=NAME),
            _param("timeout", schema={"type": "number", "minimum": 0, "maximum": 60}),
            _param("while", schema={"type": "string", "enum": ["waiting", "failed"]}),
            _param("through", description="a coverage gate: ISO-8601, today, yesterday or now", example="today"),
            _param("since", description="start of the range (default: 24 h before through)"),
            _param("deadline", description="ISO-8601 or HH:MM today in tz"),
            _param("on_deadline", schema={"type": "string", "enum": ["fail", "proceed", "skip"]})],
            mutating=True)},
        "/": {"get": _op("The operator's dashboard", None, [], ok={"content": {"text/html": {"schema": {"type": "string"}}}})},
        "/dashboard": {"get": _op("The operator's dashboard", None, [],
                                  ok={"content": {"text/html": {"schema": {"type": "string"}}}})},
        "/metrics": {"get": _op("Prometheus metrics", None, [],
                                ok={"content": {"text/plain": {"schema": {"type": "string"}}}})},
        "/openapi.json": {"get": _op("This document", None, [],
                                     ok={"content": {"application/json": {"schema": {"type": "object"}}}})},
    }
    from .backfill_api import openapi_paths

    paths.update(openapi_paths())
    return {
        "openapi": "3.1.0",
        "info": {"title": "Batchy", "version": "1.0.0",
                 "description": "Batch state and incremental-load watermarks for ETL workflows."},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "BATCHY_API_TOKEN, when the service sets one"}},
        },
    }
