"""The pieces endpoints declare their parameters with (OpenAPI 3 parameter objects)."""
from __future__ import annotations

from ..rules import names

NAME = {"type": "string", "pattern": "^" + names.NAME_RE.pattern + "$", "maxLength": 128}
ID = {"type": "string", "pattern": "^[0-9]{1,18}$"}
# A query string must fit gunicorn's 8 KB request line even when percent-encoded;
# longer messages go in a POST body.
GET_MESSAGE = {"type": "string", "maxLength": 500}
DATE = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2})?)?(Z|[+-][0-9]{2}:?[0-9]{2})?$"}
FLAG = {"type": "string", "enum": ["true", "false", "1", "0", "yes", "no", "on", "off"]}
WHOLE = {"type": "string", "pattern": "^[0-9]{1,15}$"}
NUMBER = {"type": "string", "pattern": "^[0-9]{1,10}(\\.[0-9]{1,6})?$"}
OBJECT = {"content": {"application/json": {"schema": {"type": "object"}}}}
TEXT = {"content": {"text/plain": {"schema": {"type": "string"}}}}
HTML = {"content": {"text/html": {"schema": {"type": "string"}}}}


def param(name: str, where: str = "query", schema: dict | None = None, required: bool = False,
          description: str = "", example=None) -> dict:
    found = {"name": name, "in": where, "required": required or where == "path",
             "schema": schema or {"type": "string"}, "description": description}
    if example is not None:
        found["example"] = example
    return found


def json_content(schema: str) -> dict:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


# Path parameters, by the name the URL rules give them.
PATH = {
    "wf": param("wf", "path", NAME, description="Workflow name", example="wf1"),
    "fmt": param("fmt", "path", {"type": "string", "enum": ["json", "infa"]}),
    "batch_id": param("batch_id", "path", ID),
    "backfill_id": param("backfill_id", "path", {"type": "string", "pattern": "^[0-9]{1,15}$"}),
}
JOB = param("job", schema=NAME, description="Only this job step")
# Several jobs: the parameter repeated in a query string or a form, a list in a JSON body.
JOBS = {**param("job", schema={"type": "array", "items": NAME, "minItems": 1, "maxItems": 10000}),
        "style": "form", "explode": True}
LIMIT = param("limit", schema={"type": "integer", "minimum": 1, "maximum": 1000})
IDEM = param("Idempotency-Key", "header", {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[ -~]+$"},
             description="A retry with the same key answers the batch the first call opened")
