"""Renderers: a workflow's state as JSON, or as an Informatica parameter file."""
from __future__ import annotations

import functools
import json
import re
from datetime import datetime

import orjson

from . import watermark

FORMATS = ("json", "infa")
INFA_DEFAULT_DATE_FORMAT = "MM/DD/YYYY HH24:MI:SS"
# Fields that steer the rendering itself and are not parameters of the session.
INFA_CONTROL_FIELDS = ("infa_section", "infa_date_format")

_stdlib_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def dumps(value) -> str:
    """Return value as compact JSON text, non-ASCII kept as is.

    orjson encodes a job several times faster than the standard library (a state change
    encodes about ten objects); what it refuses (an integer past 64 bits) the standard
    library encodes. Decoding stays with json.loads: orjson would turn such an integer
    into a float.
    """
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return _stdlib_encode(value)


_INFA_TOKENS = re.compile(r"YYYY|YY|MONTH|MON|MM|DD|DY|HH24|HH12|HH|MI|SS|MS|US|NS|AM|PM|%")
_STRFTIME = {
    "YYYY": "%Y", "YY": "%y", "MONTH": "%B", "MON": "%b", "MM": "%m", "DD": "%d",
    "DY": "%a", "HH24": "%H", "HH12": "%I", "HH": "%I", "MI": "%M", "SS": "%S",
    "AM": "%p", "PM": "%p", "%": "%%",
}


def json_state(jobs: dict[str, dict]) -> bytes:
    """Return {job: {...}} as JSON bytes."""
    return dumps(jobs).encode()


def json_raw_state(raw: dict[str, str]) -> bytes:
    """Return {job: {...}} built from the stored JSON texts without decoding them."""
    return ("{" + ",".join([f"{_key(job)}:{value}" for job, value in raw.items()]) + "}").encode()


@functools.lru_cache(maxsize=8192)
def _key(name: str) -> str:
    """Return a job name as a JSON string (names repeat on every call)."""
    return dumps(name)


def infa_date(value: str, fmt: str, tz) -> str:
    """Render an ISO time in tz with an Informatica date format (MM/DD/YYYY HH24:MI:SS)."""
    return _renderer(fmt)(watermark.parse_time(value).astimezone(tz))


# Tokens rendered straight from a datetime's attributes by str.format, twice as fast as
# strftime; a format with any other token (month names, 12-hour clock, MS) uses strftime.
_FORMAT_FIELDS = {
    "YYYY": "{0.year:04d}", "MM": "{0.month:02d}", "DD": "{0.day:02d}", "HH24": "{0.hour:02d}",
    "MI": "{0.minute:02d}", "SS": "{0.second:02d}", "US": "{0.microsecond:06d}",
    "NS": "{0.microsecond:06d}000", "%": "%",
}


@functools.lru_cache(maxsize=64)
def _renderer(fmt: str):
    """Return a function rendering an aware datetime with the Informatica format fmt."""
    if all(tok in _FORMAT_FIELDS for tok in _INFA_TOKENS.findall(fmt)):
        def literal(text: str) -> str:
            return text.replace("{", "{{").replace("}", "}}")

        pieces, pos = [], 0
        for match in _INFA_TOKENS.finditer(fmt):
            pieces += [literal(fmt[pos:match.start()]), _FORMAT_FIELDS[match.group(0)]]
            pos = match.end()
        return ("".join(pieces) + literal(fmt[pos:])).format

    def strftime(moment: datetime) -> str:
        def token(match: re.Match) -> str:
            tok = match.group(0)
            if tok == "MS":
                return f"{moment.microsecond // 1000:03d}"
            if tok == "US":
                return f"{moment.microsecond:06d}"
            if tok == "NS":
                return f"{moment.microsecond:06d}000"
            return _STRFTIME[tok]

        return moment.strftime(_INFA_TOKENS.sub(token, fmt))

    return strftime


_DATE_FIELDS = frozenset(watermark.DATE_FIELDS)
_CONTROL_FIELDS = frozenset(INFA_CONTROL_FIELDS)


def infa(jobs: dict[str, dict]) -> str:
    """Return the Informatica parameter file: a [section] per job, a $$name=value per line.

    Dates render in the job's time zone and date format; a text holding a line break is
    written as a JSON string, so it cannot forge a parameter line.
    """
    lines = []
    for name, job in jobs.items():
        fmt = job.get("infa_date_format") or INFA_DEFAULT_DATE_FORMAT
        tz = watermark.job_zone(job)
        lines.append(f"[{job.get('infa_section') or name}]")
        for key, value in job.items():
            if key in _CONTROL_FIELDS:
                continue
            if value is not None and key in _DATE_FIELDS:
                lines.append(_date_line(key, value, fmt, tz))
            elif isinstance(value, (dict, list)) or (isinstance(value, str) and len(value) > 256):
                lines.append(_line(key, _param_text(value)))  # unhashable, or too long to keep
            else:
                lines.append(_param_line(key, value))
    return "\n".join(lines) + "\n"


# Both memos hold what every open renders again: the same parameters, and within a
# second the same batch_start and to_date for every workflow.
@functools.lru_cache(maxsize=4096)
def _date_line(key: str, value: str, fmt: str, tz) -> str:
    return _line(key, infa_date(value, fmt, tz))


@functools.lru_cache(maxsize=4096, typed=True)  # typed: True and 1 are different values
def _param_line(key: str, value) -> str:
    return _line(key, _param_text(value))


def _param_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return dumps(value) if "\n" in value or "\r" in value else value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return dumps(value)


def _line(key: str, text: str) -> str:
    return f"$${key}={text}" if key[:1] != "$" else f"{key}={text}"
