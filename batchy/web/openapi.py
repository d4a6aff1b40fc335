"""The OpenAPI 3 document of the whole HTTP API, served at /openapi.json.

Its paths come from what each view declares with http.endpoint(); the answers' schemas are here.
"""
from __future__ import annotations

import re

from flask import Blueprint

from ..rules.jobs import BATCH_STATUSES
from . import api, backfill, coverage_page, dashboard, metrics, wait
from .http import ENDPOINTS, Endpoint, endpoint, json_response, params
from .schema import OBJECT, PATH, json_content

bp = Blueprint("openapi", __name__)
# Every blueprint of the app, this one last: each declares its endpoints when imported.
BLUEPRINTS = (api.bp, backfill.bp, wait.bp, dashboard.bp, coverage_page.bp, metrics.bp, bp)
NULLABLE_STRING = {"type": ["string", "null"]}
NULLABLE_INT = {"type": ["integer", "null"]}
# What the counts of a history entry are (docs/api.md#history); summarize_batch computes them.
RECORDS_OF_A_BATCH = ("Rows of the whole batch: the sum of the counts its jobs were closed with one by one, plus "
                      "the count of a whole-workflow close once (not once per job it closed); null when none "
                      "was reported.")
RECORDS_OF_A_JOB = ("What the close or fail of this job reported: its own count, or with records_scope batch the "
                    "whole batch's count given to a whole-workflow close (the same number on each job it ended).")

SCHEMAS = {
    "LoadAll": {
        "type": "object",
        "required": ["loaded", "failed"],
        "properties": {"loaded": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/State"}},
                       "failed": {"type": "object", "additionalProperties": {"type": "object"}}},
    },
    "Workflows": {
        "type": "object",
        "required": ["workflows", "next_offset"],
        "properties": {"workflows": {"type": "array", "items": {
            "type": "object", "required": ["workflow", "jobs", "last_batch_id", "paused"],
            "properties": {"workflow": {"type": "string"}, "jobs": {"type": "integer"},
                           "last_batch_id": {"type": ["integer", "null"]}, "paused": {"type": "boolean"}}}},
                       "next_offset": {"type": ["integer", "null"]}},
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
                                 "kind": {"type": "string", "enum": ["late", "coverage_lag", "stuck", "unchecked"]},
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
            "records_processed": {**NULLABLE_INT, "description": RECORDS_OF_A_BATCH},
            "jobs": {"type": "object", "additionalProperties": {"type": "object", "properties": {
                "records_processed": {**NULLABLE_INT, "description": RECORDS_OF_A_JOB},
                "records_scope": {"type": ["string", "null"], "enum": ["batch", None],
                                  "description": "batch: records_processed is the whole batch's count."}}}},
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


def _operation(found: Endpoint, method: str, path_params: list[dict]) -> dict:
    success = {"description": "OK", **(found.ok or json_content(found.schema))}
    op = {
        "summary": found.summary,
        "parameters": path_params + [p for p in found.params if method == "get" or p["in"] != "query"],
        "responses": {
            found.status: success,
            **found.responses,
            "default": {"description": "Error (the one JSON error shape)", **json_content("Error")},
        },
    }
    if found.secured:
        op["security"] = [{}, {"bearer": []}]
    if method == "post":  # the query parameters of GET, as a JSON body (or a form)
        op["requestBody"] = {"required": False, "content": {"application/json": {"schema": {
            "type": "object",
            "properties": {p["name"]: p["schema"] for p in found.params if p["in"] == "query"},
            "additionalProperties": False,
        }}}}
    return op


def paths() -> dict:
    """Return the document's paths, one for each URL rule an endpoint declared."""
    found = {}
    for declared in ENDPOINTS:
        for rule in declared.rules:
            path_params = [PATH[name] for name in re.findall(r"<(?:\w+:)?(\w+)>", rule)]
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule)
            methods = ("get", "post") if declared.mutating else ("get",)
            found[path] = {method: _operation(declared, method, path_params) for method in methods}
    return found


def spec() -> dict:
    """Return the OpenAPI document."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "Batchy", "version": "1.0.0",
                 "description": "Batch state and incremental-load watermarks for ETL workflows."},
        "paths": paths(),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "BATCHY_API_TOKEN, when the service sets one"}},
        },
    }


@endpoint(bp, "/openapi.json", summary="This document", ok=OBJECT)
def openapi():
    params()
    return json_response(spec())
