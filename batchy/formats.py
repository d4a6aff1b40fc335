"""Renderers: a workflow's state as JSON, or as an Informatica parameter file."""
from __future__ import annotations

import functools
import json
import re

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


_encode = dumps
_INFA_TOKENS = re.compile(r"YYYY|YY|MONTH|MON|MM|DD|DY|HH24|HH12|HH|MI|SS|MS|US|NS|AM|PM|%")
_STRFTIME = {
    "YYYY": "%Y", "YY": "%y", "MONTH": "%B", "MON": "%b", "MM": "%m", "DD": "%d",
    "DY": "%a", "HH24": "%H", "HH12": "%I", "HH": "%I", "MI": "%M", "SS": "%S",
    "AM": "%p", "PM": "%p", "%": "%%",
}


def json_state(jobs: dict[str, dict]) -> bytes:
    """Return {job: {...}} as JSON bytes."""
    return _encode(jobs).encode()


def json_raw_state(raw: dict[str, str]) -> bytes:
    """Return {job: {...}} built from the stored JSON texts without decoding them."""
    return ("{" + ",".join([f"{_key(job)}:{value}" for job, value in raw.items()]) + "}").encode()


@functools.lru_cache(maxsize=8192)
def _key(name: str) -> str:
    """Return a job name as a JSON string (names repeat on every call)."""
    return dumps(name)


def infa_date(value: str, fmt: str, tz) -> str:
    """Render an ISO time in tz with an Informatica date format (MM/DD/YYYY HH24:MI:SS)."""
    moment = watermark.parse_time(value).astimezone(tz)
    pattern, subsecond = _strftime_pattern(fmt)
    if subsecond:
        def token(match: re.Match) -> str:
            tok = match.group(0)
            if tok == "MS":
                return f"{moment.microsecond // 1000:03d}"
            if tok == "US":
                return f"{moment.microsecond:06d}"
            if tok == "NS":
                return f"{moment.microsecond:06d}000"
            return _STRFTIME[tok]

        pattern = _INFA_TOKENS.sub(token, fmt)
    return moment.strftime(pattern)


@functools.lru_cache(maxsize=64)
def _strftime_pattern(fmt: str) -> tuple[str, bool]:
    """Return (the strftime pattern of fmt, whether fmt shows fractions of a second)."""
    if any(tok in ("MS", "US", "NS") for tok in _INFA_TOKENS.findall(fmt)):
        return "", True
    return _INFA_TOKENS.sub(lambda m: _STRFTIME[m.group(0)], fmt), False


def infa_value(key: str, value, fmt: str, tz) -> str:
    if value is None:
        return ""
    if key in _DATE_FIELDS:
        return infa_date(value, fmt, tz)
    if type(value) is str:
        # A parameter file holds one value per line: a line break would forge a parameter.
        return _encode(value) if "\n" in value or "\r" in value else value
    return _encode(value)


_DATE_FIELDS = frozenset(watermark.DATE_FIELDS)


def infa(jobs: dict[str, dict]) -> str:
    """Return the Informatica parameter file: a [section] per job, a $$name=value per line."""
    lines = []
    for name, job in jobs.items():
        fmt = job.get("infa_date_format") or INFA_DEFAULT_DATE_FORMAT
        tz = watermark.job_zone(job)
        lines.append(f"[{job.get('infa_section') or name}]")
        dates: dict[str, str] = {}  # to_date and batch_start are the same time: render it once
        for key, value in job.items():
            if key in INFA_CONTROL_FIELDS:
                continue
            if key in _DATE_FIELDS and value is not None:
                text = dates.get(value)
                if text is None:
                    text = dates[value] = infa_date(value, fmt, tz)
            else:
                text = infa_value(key, value, fmt, tz)
            lines.append(f"{key}={text}" if key.startswith("$") else f"$${key}={text}")
    return "\n".join(lines) + "\n"
