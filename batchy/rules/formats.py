"""Renderers: a workflow's state as JSON, or as an Informatica parameter file."""
from __future__ import annotations

import functools
import json
import re
from datetime import datetime, timedelta

import orjson

from . import times
from .jobs import DATE_FIELDS
from .fields import INFA_FIELDS, SPECIAL_FIELDS
from .validation import LINE_BREAKING, written_name

FORMATS = ("json", "infa")
INFA_DEFAULT_DATE_FORMAT = "MM/DD/YYYY HH24:MI:SS"
# The default in a zone whose offset changes (DST): a wall time there may name two instants.
INFA_DEFAULT_DATE_FORMAT_OFFSET = INFA_DEFAULT_DATE_FORMAT + " TZH:TZM"
# Fields that steer the rendering itself and are not parameters of the session.

_stdlib_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def dumps(value) -> str:
    """Return value as compact JSON text, non-ASCII kept as is.

    orjson encodes a job several times faster than the standard library (a state change
    encodes about ten objects); what it refuses (an integer past 64 bits) the standard
    library encodes. Decoding stays with json.loads: orjson would turn such an integer
    into a float.
    """
    try:
        # Without OPT_NON_STR_KEYS, which makes orjson 2.5 times slower on every dict: only a
        # dict with a key that is not text (an int, say) needs it, and is encoded again with it.
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        pass
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return _stdlib_encode(value)


_INFA_TOKENS = re.compile(r"TZH|TZM|YYYY|YY|MONTH|MON|MM|DD|DY|HH24|HH12|HH|MI|SS|MS|US|NS|AM|PM|%")
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
    return _renderer(fmt)(times.parse_time(value).astimezone(tz))


# Tokens rendered straight from a datetime's attributes by str.format, twice as fast as
# strftime; a format with any other token (month names, 12-hour clock, MS) uses strftime.
_FORMAT_FIELDS = {
    "YYYY": "{0.year:04d}", "MM": "{0.month:02d}", "DD": "{0.day:02d}", "HH24": "{0.hour:02d}",
    "MI": "{0.minute:02d}", "SS": "{0.second:02d}", "US": "{0.microsecond:06d}",
    "NS": "{0.microsecond:06d}000", "%": "%",
}


# The offset tokens, rendered from the offset's hours and minutes (-03:30 is TZH -03, TZM 30).
_OFFSET_FIELDS = {"TZH": "{1}", "TZM": "{2}"}


@functools.lru_cache(maxsize=64)
def _offset_parts(offset: timedelta) -> tuple[str, str]:
    """Return TZH and TZM of a UTC offset: ("-03", "30") for -03:30."""
    minutes = round(offset.total_seconds() / 60)
    return f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}", f"{abs(minutes) % 60:02d}"


@functools.lru_cache(maxsize=64)
def _renderer(fmt: str):
    """Return a function rendering an aware datetime with the Informatica format fmt."""
    tokens = _INFA_TOKENS.findall(fmt)
    if all(tok in _FORMAT_FIELDS or tok in _OFFSET_FIELDS for tok in tokens):
        def literal(text: str) -> str:
            return text.replace("{", "{{").replace("}", "}}")

        pieces, pos = [], 0
        for match in _INFA_TOKENS.finditer(fmt):
            tok = match.group(0)
            pieces += [literal(fmt[pos:match.start()]), _FORMAT_FIELDS.get(tok) or _OFFSET_FIELDS[tok]]
            pos = match.end()
        render = ("".join(pieces) + literal(fmt[pos:])).format
        if not any(tok in _OFFSET_FIELDS for tok in tokens):
            return render
        # The default format in a zone whose offset changes ends with TZH:TZM: every open renders it.
        return lambda moment: render(moment, *_offset_parts(moment.utcoffset()))

    def strftime(moment: datetime) -> str:
        def token(match: re.Match) -> str:
            tok = match.group(0)
            if tok == "MS":
                return f"{moment.microsecond // 1000:03d}"
            if tok == "US":
                return f"{moment.microsecond:06d}"
            if tok == "NS":
                return f"{moment.microsecond:06d}000"
            if tok in ("TZH", "TZM"):  # -03:30 is TZH -03, TZM 30
                minutes = round(moment.utcoffset().total_seconds() / 60)
                return f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}" if tok == "TZH" else \
                    f"{abs(minutes) % 60:02d}"
            return _STRFTIME[tok]

        return moment.strftime(_INFA_TOKENS.sub(token, fmt))

    return strftime


_DATE_FIELDS = frozenset(DATE_FIELDS)
_CONTROL_FIELDS = frozenset(INFA_FIELDS)
# Names of the lines Batchy writes itself, as Informatica compares names (ignoring case).
_SPECIAL_NAMES = frozenset(written_name(f).casefold() for f in SPECIAL_FIELDS)


def infa(jobs: dict[str, dict]) -> str:
    """Return the Informatica parameter file: a [section] per job, a $$name=value per line.

    Every parameter is one line and every job one heading, whatever the values (the rule
    is in docs/workflows.md): dates render in the job's time zone and date format; a text
    holding a control character or line separator is written as a JSON string with those
    escaped. What a workflow file or an import refuses but Redis may hold from before is
    left out: a name the file cannot write, or one already written in the section; an
    infa_section or infa_date_format that is not one safe line.
    """
    lines = []
    for name, job in jobs.items():
        tz = times.job_zone(job)
        fmt = _safe_setting(job.get("infa_date_format"), "") or default_date_format(tz)
        lines.append(f"[{_safe_setting(job.get('infa_section'), '[]') or name}]")
        for key in _written_keys(job):
            value = job[key]
            if value is not None and key in _DATE_FIELDS:
                lines.append(_date_line(key, value, fmt, tz))
            elif isinstance(value, (dict, list)) or (isinstance(value, str) and len(value) > 256):
                lines.append(_line(key, _param_text(value)))  # unhashable, or too long to keep
            else:
                lines.append(_param_line(key, value))
    return "\n".join(lines) + "\n"


def default_date_format(tz) -> str:
    """Return the date format of a job without infa_date_format: with the offset where tz's changes."""
    return INFA_DEFAULT_DATE_FORMAT_OFFSET if times.changes_offset(tz) else INFA_DEFAULT_DATE_FORMAT


def _safe_setting(value, forbidden: str) -> str | None:
    """Return an infa_section or infa_date_format if it is one line without forbidden characters."""
    if not isinstance(value, str) or LINE_BREAKING.search(value) or any(c in value for c in forbidden):
        return None
    return value


def _written_keys(job: dict) -> list[str]:
    """Return the job's keys written as parameters: a name is written once (Batchy's own
    fields first), and only a name the file can write."""
    written, keys = set(), []
    for key in job:
        name = _folded_name(key)
        if name is None or name in written:
            continue
        written.add(name)
        keys.append(key)
    return keys


@functools.lru_cache(maxsize=4096)
def _folded_name(key: str) -> str | None:
    """Return the name key is written under, casefolded; None if it is not written."""
    if key in _CONTROL_FIELDS or not key.strip("$") or "=" in key or LINE_BREAKING.search(key):
        return None
    name = written_name(key).casefold()
    if name in _SPECIAL_NAMES and key not in SPECIAL_FIELDS:
        return None  # $$from_date, FROM_DATE...: the line is Batchy's
    return name


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
        return _one_line(dumps(value)) if LINE_BREAKING.search(value) else value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return _one_line(dumps(value))


def _one_line(json_text: str) -> str:
    """Return JSON text with DEL, the C1 controls, U+2028 and U+2029 escaped too (JSON
    escapes only the C0 controls), so no reader sees a line break in it."""
    return LINE_BREAKING.sub(lambda m: f"\\u{ord(m.group()):04x}", json_text)


def _line(key: str, text: str) -> str:
    return f"{written_name(key)}={text}"
