"""HTTP plumbing shared by the blueprints: each endpoint declared once, request parameters, JSON answers."""
from __future__ import annotations

import difflib
import functools
import json
from datetime import datetime
from contextvars import ContextVar
from typing import NamedTuple

from flask import Response, current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed, RequestEntityTooLarge

from ..rules import formats, names, workflows
from ..errors import InvalidParameter
from .auth import check_read, check_token
from ..rules.times import UTC, has_offset, parse_input_time


MAX_MESSAGE = 4096
MAX_WHOLE = 2**53


def state_response(change) -> Response:
    """Answer with every job after a change, from the JSON text just stored when there is one."""
    if change.after_text is not None:
        return json_response(formats.json_raw_state(change.after_text))
    return json_response(change.after)


def json_response(body: bytes | dict | list, status: int = 200) -> Response:
    if not isinstance(body, bytes):
        body = formats.json_state(body)
    return Response(body, status=status, mimetype="application/json")


def check_mutation() -> None:
    """Refuse a state change sent as HEAD, or as GET unless allowed; require the write token."""
    config = current_app.config
    method = request.method
    # Flask routes HEAD to GET views; link previews send it: HEAD never mutates.
    get_allowed = config["BATCHY_ALLOW_GET_MUTATIONS"]
    if method == "HEAD" or (method == "GET" and not get_allowed):
        raise MethodNotAllowed(
            valid_methods=["GET", "POST"] if get_allowed else ["POST"],
            description="this deployment accepts mutations only as POST" if not get_allowed
            else "HEAD does not change state: use GET or POST",
        )
    check_token(config)


class Endpoint(NamedTuple):
    """What one view takes and answers, declared once: it routes the view, parses its
    parameters, refuses unknown ones and makes its part of the OpenAPI document."""

    rules: tuple[str, ...]
    summary: str
    schema: str | None  # the component schema of its 200 answer
    params: tuple[dict, ...]  # query (or body) and header parameters; path ones come from the rules
    ok: dict | None  # the 200 answer's content, when not a schema
    mutating: bool  # GET (where allowed) and POST, with the write token
    secured: bool  # takes a token
    status: str  # the success status
    responses: dict  # more answers than success and the error


ENDPOINTS: list[Endpoint] = []


def endpoint(bp, *rules: str, summary: str, schema: str | None = None, params=(), ok: dict | None = None,
             mutating: bool = False, reads: str | None = None, auth=None, status: str = "200",
             responses: dict | None = None):
    """Route a view on bp and declare it: its token check (mutating, a protected read scope, or auth),
    its workflow name checked, the parameters it takes (params() returns them) and its OpenAPI entry."""
    def decorate(view):
        takes = tuple(p["name"] for p in params if p["in"] == "query")
        repeats = frozenset(p["name"] for p in params if p["in"] == "query" and p.get("explode"))

        @functools.wraps(view)
        def handle(**kwargs):
            if mutating:  # the method and the write token come first
                check_mutation()
            _TAKES.set((takes, repeats))
            if reads is not None:
                check_read(reads)
            elif auth is not None:
                auth()
            wf = kwargs.get("wf")
            if wf is not None:
                names.check_workflow(wf)
            return view(**kwargs)

        for rule in rules:
            bp.add_url_rule(rule, view_func=handle, methods=["GET", "POST"] if mutating else ["GET"])
        ENDPOINTS.append(Endpoint(rules, summary, schema, tuple(params), ok, mutating,
                                  mutating or auth is not None, status, responses or {}))
        return handle
    return decorate


# What the endpoint answering this request takes, and which of those may be repeated
# (set by endpoint(), read by params()).
_TAKES: ContextVar[tuple[tuple[str, ...], frozenset]] = ContextVar("batchy_takes", default=((), frozenset()))


def params() -> dict:
    """Return the request's parameters, refusing one its endpoint does not declare (400)."""
    known, repeats = _TAKES.get()
    return request_params(*known, repeats=repeats)


def request_params(*known: str, repeats: frozenset = frozenset()) -> dict:
    """Return the request's parameters, from the query string and a JSON or form body.

    Refused (400) rather than guessed at, before anything changes: a parameter not in known
    (a typo such as dryrun=true or batchid=1 must not turn into a change that checks nothing),
    one given twice that is not in repeats (fail_batch?job=a&job=b would fail only a), and one
    given both in the query string and in the body. A parameter in repeats comes back as a list
    when it is repeated.
    """
    req = request._get_current_object()  # one proxy lookup, not one per attribute
    values = _once(req.args, known, repeats) if req.query_string else {}
    environ = req.environ  # the headers from the WSGI environ: req.headers costs a parse per lookup
    if req.method == "POST" and ((environ.get("CONTENT_LENGTH") not in (None, "", "0") and req.content_length)
                                 or "HTTP_TRANSFER_ENCODING" in environ):
        body = _body(req, known, repeats)
        if values:
            both = [name for name in body if name in values]
            if both:
                raise InvalidParameter(f"{str(both[0])[:40]} is given both in the query string and in the body: "
                                       "give it once", parameter=str(both[0])[:40])
            values.update(body)
        else:
            values = body
    unknown = [name for name in values if name not in known]
    if unknown:
        raise unknown_parameter(unknown[0], known)
    return values


def _once(given, known, repeats: frozenset) -> dict:
    """Return a query string's or a form's parameters (a werkzeug MultiDict: a list per name), one value
    each; a list for a parameter in repeats given more than once; 400 for another known one given more
    than once (an unknown one is refused as unknown)."""
    values = {}
    for name, items in dict.items(given):
        if len(items) == 1:
            values[name] = items[0]
        elif name in repeats or name not in known:
            values[name] = list(items)
        else:
            raise InvalidParameter(f"{name[:40]} is given {len(items)} times: give it once", parameter=name[:40])
    return values


def unknown_parameter(name: str, known) -> InvalidParameter:
    """Return the error for a parameter an endpoint does not take, with a "did you mean"."""
    shown = str(name)[:40]
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6)
    if not close and len(str(name)) >= 3:  # records -> records_processed
        close = [k for k in known if k.startswith(str(name)) or str(name).startswith(k)][:1]
    hint = f"; did you mean {close[0]!r}?" if close else ""
    takes = f" (it takes: {', '.join(known)})" if known else " (it takes none)"
    return InvalidParameter(f"unknown parameter {shown!r}{hint}{takes}", parameter=shown)


def _body(req, known, repeats: frozenset) -> dict:
    """Return a POST body's parameters: a JSON object, or a form."""
    try:
        if "chunked" in req.headers.get("Transfer-Encoding", "").lower() and req.max_content_length is not None:
            # Chunked: Werkzeug cuts the body at the limit without a word; read one byte past it.
            data = req.environ["wsgi.input"].read(req.max_content_length + 1)
            if len(data) > req.max_content_length:
                raise RequestEntityTooLarge()
            if not req.is_json:
                raise InvalidParameter("a chunked request body must be JSON (Content-Type: application/json)")
        elif not req.is_json:
            return _once(req.form, known, repeats)
        else:
            data = req.get_data(cache=True)
    except (HTTPException, InvalidParameter):
        raise  # 413 past BATCHY_MAX_BODY_BYTES, chunked or not
    except Exception as exc:  # noqa: BLE001 - gunicorn's ParseException family, socket errors
        raise InvalidParameter(f"the request body could not be read ({type(exc).__name__})") from None
    try:
        body = json.loads(data, object_pairs_hook=_once_each) if data else None
    except (ValueError, RecursionError):  # not JSON, or nests deeper than the decoder recurses
        body = None
    if not isinstance(body, dict):
        raise InvalidParameter("the request body must be a JSON object")
    return body


def _once_each(pairs: list) -> dict:
    """A JSON object with each key once: {"job": "a", "job": "b"} is a 400, as job=a&job=b is."""
    found = dict(pairs)
    if len(found) < len(pairs):
        seen = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise InvalidParameter(f"{str(twice)[:40]} is given twice in the JSON body: give it once",
                               parameter=str(twice)[:40])
    return found


def parse_flag(values: dict, name: str) -> bool:
    """Return a true/false parameter (false when absent). Given empty (?dry_run, ?dry_run=) it is a 400,
    not a guess: read as false, a bare ?dry_run would make a real open."""
    value = values.get(name, False)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    if text == "":
        raise InvalidParameter(f"{name} is given without a value: give {name}=true or {name}=false", parameter=name)
    raise InvalidParameter(f"{name} must be true or false, not {str(value)[:40]!r}", parameter=name)


def parse_whole_number(values: dict, name: str) -> int | None:
    """Return a whole number parameter from 0 to 2**53 (what JSON clients read exactly), or None."""
    value = values.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidParameter(f"{name} must be a whole number >= 0, not {value!r}", parameter=name)
    if isinstance(value, str):
        if not value.isascii() or not value.isdigit():
            raise InvalidParameter(f"{name} must be a whole number >= 0, not {value[:40]!r}", parameter=name)
        value = int(value[:30])  # past 30 digits it is too large whatever follows
    if value < 0:
        raise InvalidParameter(f"{name} must be a whole number >= 0, not {value}", parameter=name)
    if value > MAX_WHOLE:
        raise InvalidParameter(f"{name} must be at most {MAX_WHOLE}, not {str(value)[:40]}", parameter=name)
    return value


def parse_text(values: dict, name: str, limit: int = MAX_MESSAGE) -> str | None:
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


def idempotency_key() -> str | None:
    """Return the request's Idempotency-Key header: 1 to 200 printable ASCII characters, or None."""
    key = request.environ.get("HTTP_IDEMPOTENCY_KEY")  # request.headers["Idempotency-Key"], read directly
    if key is None:
        return None
    if not 1 <= len(key) <= 200 or not key.isascii() or not key.isprintable():
        raise InvalidParameter("the Idempotency-Key header must be 1 to 200 printable ASCII characters",
                               parameter="Idempotency-Key")
    return key


def actor() -> str:
    return request.remote_addr or ""


def parse_limit(values: dict, default: int = 50, maximum: int = 1000) -> int:
    try:
        value = parse_whole_number(values, "limit")
    except InvalidParameter:
        value = 0  # limit=abc is told the same range as limit=0
    if value is None:
        return default
    if not 1 <= value <= maximum:
        raise InvalidParameter(f"limit must be a whole number from 1 to {maximum}, not {str(values['limit'])[:40]!r}",
                               parameter="limit")
    return value


def parse_moment(values: dict, name: str, required: bool = False, local: bool = False):
    """Return an ISO-8601 time (or unix seconds) parameter as an aware datetime.

    With local, a time written without an offset comes back naive: a wall time the
    caller reads in each job's own timezone (times.in_zone).
    """
    value = values.get(name)
    if value is None or value == "":
        if required:
            raise InvalidParameter(f"{name} is required (ISO-8601, e.g. 2024-01-31T00:00:00+00:00)", parameter=name)
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 12:
        value = int(value)
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            value = datetime.fromtimestamp(value, UTC)
        moment = parse_input_time(value, name)
        return moment.replace(tzinfo=None) if local and not has_offset(value) else moment
    except (ValueError, OverflowError, OSError) as exc:
        # 2026-11-01T00:00:00+01:00 in a URL reads as "2026-11-01T00:00:00 01:00"
        hint = " (a + in a URL or a form is a space: write an offset's + as %2B)" \
            if isinstance(value, str) and " " in value else ""
        raise InvalidParameter(f"{exc}{hint}", parameter=name) from None


MAX_JOBS = 10000  # as many as a workflow file may hold


def parse_jobs(values: dict, wf: str) -> list[str] | None:
    """Return the jobs named: `job` repeated in the query string or a form, or a JSON list (None: every job)."""
    given = values.get("job")
    if given is None:
        return None
    items = given if isinstance(given, list) else [given]  # params() made a repeated one a list
    if not items:
        raise InvalidParameter("job names no job: leave it out to mean every job", parameter="job", workflow=wf)
    if len(items) > MAX_JOBS:
        raise InvalidParameter(f"job names more than {MAX_JOBS} jobs", parameter="job", workflow=wf)
    return list(dict.fromkeys(names.check_job(item, wf) for item in items))


def parse_job(values: dict, wf: str) -> str | None:
    job = values.get("job")
    return None if job is None else names.check_job(job, wf)
