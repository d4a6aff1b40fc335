"""Renderers: a workflow's state as JSON, or as an Informatica parameter file."""
from __future__ import annotations

import json
import re

from . import watermark

FORMATS = ("json", "infa")
INFA_DEFAULT_DATE_FORMAT = "MM/DD/YYYY HH24:MI:SS"
# Fields that steer the rendering itself and are not parameters of the session.
INFA_CONTROL_FIELDS = ("infa_section", "infa_date_format")

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
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
    return ("{" + ",".join(f"{_encode(job)}:{value}" for job, value in raw.items()) + "}").encode()


def infa_date(value: str, fmt: str, tz) -> str:
    """Render an ISO time in tz with an Informatica date format (MM/DD/YYYY HH24:MI:SS)."""
    moment = watermark.parse_time(value).astimezone(tz)

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


def infa_value(key: str, value, fmt: str, tz) -> str:
    if value is None:
        return ""
    if key in watermark.DATE_FIELDS:
        return infa_date(value, fmt, tz)
    if isinstance(value, str):
        # A parameter file holds one value per line: a line break would forge a parameter.
        return _encode(value) if any(c in value for c in "\r\n") else value
    return _encode(value)


def infa(jobs: dict[str, dict]) -> str:
    """Return the Informatica parameter file: a [section] per job, a $$name=value per line."""
    lines = []
    for name, job in jobs.items():
        fmt = job.get("infa_date_format") or INFA_DEFAULT_DATE_FORMAT
        tz = watermark.job_zone(job)
        lines.append(f"[{job.get('infa_section') or name}]")
        for key, value in job.items():
            if key in INFA_CONTROL_FIELDS:
                continue
            param = key if key.startswith("$") else "$$" + key
            lines.append(f"{param}={infa_value(key, value, fmt, tz)}")
    return "\n".join(lines) + "\n"
