"""A job's parameters checked: the special fields, the names, and dates read in the job's zone.

Pure: used by workflow files (workflows.parse_config) and by import (transfer.import_)
alike, so both refuse the same things.
"""
from __future__ import annotations

import functools
import math
import re
from datetime import date, datetime

import yaml

from . import fields, times
from ..errors import InvalidConfig
from .fields import DEFAULTS, INFA_FIELDS, SPECIAL_FIELDS
from .jobs import DATE_FIELDS, STATUSES

MAX_STRING = 65536
# Characters that end a line for some reader of a parameter file: C0 controls, DEL, the
# C1 controls (U+0085 NEL among them), LINE SEPARATOR and PARAGRAPH SEPARATOR.
LINE_BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class BadDate:
    """A YAML timestamp that names no real day (2026-11-31): refused where it is used."""

    def __init__(self, text: str, reason: str):
        self.text, self.reason = text, reason

    def problem(self) -> str:
        return f"{self.text} cannot be read as a date: {self.reason}"


def fill_job(wf: str, job: str, params: dict, allowed=(), earliest: datetime = times.MIN_TIME) -> dict:
    """Return the job's parameters validated, with the special fields filled in.

    allowed: names kept although close to a special field (the allow_params setting).
    earliest: the first time a date may hold (an import's, of what Batchy stored:
    times.STORED_MIN_TIME, a little before a file's times.MIN_TIME).
    """
    tz = times.UTC
    if "timezone" in params:  # first: the dates are read in it
        check_value(wf, job, "timezone", params["timezone"])
        tz = times.zone(params["timezone"])
    checked = {}
    for key, value in params.items():
        key = check_name(wf, job, key if isinstance(key, str) else str(key), allowed)
        checked[key] = check_value(wf, job, key, value, tz, earliest)
    check_written_names(wf, job, checked)
    check_infa_date_format(wf, job, checked.get("infa_date_format"), tz)
    return {**DEFAULTS, **checked}


INFA_OFFSET_TOKEN = "TZH"  # with TZM: the offset from UTC, as Informatica's TIMESTAMP WITH TIME ZONE writes it


def check_infa_date_format(wf: str, job: str, fmt, tz) -> None:
    """Refuse an infa_date_format without the offset in a zone whose clock shows some times twice.

    In America/New_York 01:00-04:00 and 01:00-05:00 are both 11/01/2026 01:00:00: a
    parameter file could show a real hour as an empty window.
    """
    if isinstance(fmt, str) and INFA_OFFSET_TOKEN not in fmt and times.changes_offset(tz):
        raise InvalidConfig(
            f"job {job!r} of {wf!r}: infa_date_format {fmt!r} has no offset, but in {tz} some wall times come "
            f"twice (the hour the clocks go back), so two dates of the parameter file could read the same; "
            f"add TZH:TZM (such as {fmt + ' TZH:TZM'!r}), or drop infa_date_format to get the default with "
            "the offset, or use timezone UTC", workflow=wf, job=job, field="infa_date_format")


def check_name(wf: str, job: str, key: str, allowed=()) -> str:
    """Return a parameter name if it can be stored and written, or raise InvalidConfig."""
    def bad(why: str):
        return InvalidConfig(f"job {job!r} of {wf!r}: {why}", workflow=wf, job=job, field=key)

    if not key or len(key) > 256 or LINE_BREAKING.search(key) or has_surrogate(key) or not key.strip("$"):
        raise bad(f"invalid parameter name {key[:80]!r}: 1 to 256 characters, no control character or "
                  "line separator, not only $")
    if "=" in key:
        raise bad(f"invalid parameter name {key[:80]!r}: '=' would end the name in the Informatica file")
    if key not in SPECIAL_FIELDS and key not in allowed and not key.startswith("$"):
        meant = close_special_field(key)
        if meant is not None:
            raise bad(f"unknown parameter {key!r}: did you mean {meant!r}? (to keep a name this close to a "
                      "special field, list it in the workflow setting allow_params)")
    return key


@functools.lru_cache(maxsize=4096)  # a workflow repeats its parameter names on every job
def close_special_field(key: str) -> str | None:
    """Return the special field key is a typo of: 1 or 2 edits away (only 1 for names of 7
    characters or fewer), ignoring case; None when there is none.

    A name equal but for case is no typo here: check_written_names refuses it.
    """
    folded = key.casefold()
    for field in SPECIAL_FIELDS:
        if 0 < edit_distance(folded, field, 2) <= (1 if len(field) <= 7 else 2):
            return field
    return None


def edit_distance(a: str, b: str, limit: int) -> int:
    """Return the number of insertions, deletions, substitutions and swaps of neighbours
    turning a into b, or limit + 1 when it is more than limit."""
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    before, row = None, list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            cost = min(row[j] + 1, current[j - 1] + 1, row[j - 1] + (ca != cb))
            if before is not None and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cost = min(cost, before[j - 2] + 1)
            current.append(cost)
        if min(current) > limit:
            return limit + 1
        before, row = row, current
    return min(row[-1], limit + 1)


def written_name(key: str) -> str:
    """Return the name a parameter has in the Informatica file ($$key, or key if it starts with $)."""
    return key if key.startswith("$") else "$$" + key


def check_written_names(wf: str, job: str, params: dict) -> None:
    """Refuse two parameters the Informatica file would write under one name (case-insensitive,
    as Informatica reads names), or one written like a field Batchy writes."""
    seen = {written_name(f).casefold(): f for f in SPECIAL_FIELDS}
    for key in params:
        name = written_name(key).casefold()
        other = seen.get(name)
        if other is not None and other != key:
            raise InvalidConfig(
                f"job {job!r} of {wf!r}: parameter {key!r} would be written to the Informatica file as "
                f"{written_name(key)}, like {other!r}; rename it", workflow=wf, job=job, field=key)
        seen[name] = key


def check_value(wf: str, job: str, key: str, value, tz=times.UTC, earliest: datetime = times.MIN_TIME):
    """Return a parameter's value validated and made JSON-ready, or raise InvalidConfig.

    tz: the job's zone, in which a date without an offset is read. earliest: see fill_job.
    """
    def bad(why: str):
        return InvalidConfig(f"job {job!r} of {wf!r}: {key} {why}", workflow=wf, job=job, field=key)

    if isinstance(value, BadDate):
        raise bad(value.problem())
    field = fields.BY_NAME.get(key)
    if field is not None and field.check is not None:
        try:
            return field.check(value)
        except ValueError as exc:  # "<key> must ...": the message names the field once
            raise bad(str(exc).split(" ", 1)[1]) from None
    if key == "status":
        if value not in STATUSES:
            raise bad(f"must be one of {', '.join(STATUSES)}, not {value!r}")
        return value
    if key in DATE_FIELDS:
        if value is None:
            return None
        try:
            return times.format_time(read_time(value, key, tz, earliest), tz)
        except ValueError as exc:
            raise InvalidConfig(f"job {job!r} of {wf!r}: {exc} (a date or time without an offset is read in "
                                f"the job's timezone, {tz})", workflow=wf, job=job, field=key) from None
    if key in ("batch_id", "records_processed"):
        if value is None:
            return None
        if not is_whole_number(value):
            raise bad(f"must be a whole number >= 0, not {value!r}")
        return value
    if key in INFA_FIELDS + ("message",):
        return _check_text(key, value, bad)
    return _json_ready(value, bad)


def is_whole_number(value) -> bool:
    """Return True for an int from 0 to 2**53 (what a JSON reader keeps exact)."""
    return not isinstance(value, bool) and isinstance(value, int) and 0 <= value <= 2**53


def _check_text(key: str, value, bad):
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_STRING or has_surrogate(value):
        raise bad(f"must be text, not {value!r:.80}")
    if key != "message" and LINE_BREAKING.search(value):
        # A NUL or line break would cut or forge lines of the Informatica parameter file.
        raise bad("must be a single line of text without control characters or line separators")
    if key == "infa_section" and any(c in value for c in "[]"):
        raise bad("must not contain [ or ]")
    return value


def read_time(value, key: str, tz, earliest: datetime = times.MIN_TIME) -> datetime:
    """Return a date field's value as an instant, or raise ValueError.

    A value without an offset is a wall time in tz, the job's zone.
    """
    if isinstance(value, str) and TIMESTAMP.fullmatch(value.strip()):
        value = _construct_timestamp(value.strip(), key)  # '2001-12-14 21:59:43.10 -5', as YAML reads it unquoted
    moment = times.parse_input_time(value, key, earliest)
    if times.has_offset(value):
        return moment
    moment = moment.replace(tzinfo=tz)
    if not earliest <= moment < times.MAX_TIME:  # in range as UTC, no longer in tz
        raise ValueError(f"{key} must be from {earliest.date()} to before {times.MAX_TIME.date()} UTC, "
                         f"not {times.format_time(moment, tz)!r}")
    return moment


TIMESTAMP = yaml.constructor.SafeConstructor.timestamp_regexp


def _construct_timestamp(text: str, key: str):
    node = yaml.ScalarNode("tag:yaml.org,2002:timestamp", text)
    try:
        return yaml.constructor.SafeConstructor().construct_yaml_timestamp(node)
    except ValueError as exc:  # 2024-13-45: shaped like a date, but not one
        raise ValueError(f"{key} {BadDate(repr(text), str(exc)).problem()}") from None


def _json_ready(value, bad, depth: int = 0):
    if isinstance(value, BadDate):
        raise bad(value.problem())
    if isinstance(value, datetime):
        return times.format_time(times.parse_time(value))
    if isinstance(value, date):
        return value.isoformat()
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise bad(f"must be a finite number, not {value!r}")
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise bad(f"is longer than {MAX_STRING} characters")
        if has_surrogate(value):
            raise bad("holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text")
        return value
    if isinstance(value, list):
        return [_json_ready(v, bad, depth + 1) for v in value]
    if isinstance(value, dict):
        return {_json_ready(str(k), bad, depth + 1): _json_ready(v, bad, depth + 1) for k, v in value.items()}
    raise bad(f"has a value of type {type(value).__name__} that cannot be stored")


def has_surrogate(text: str) -> bool:
    """Return True if text holds a lone surrogate (YAML's "\\ud800"): Redis cannot store it as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def check_sections(wf: str, jobs: dict[str, dict]) -> None:
    """Refuse two jobs headed by the same section in the Informatica file."""
    seen: dict[str, str] = {}
    for name, job in jobs.items():
        heading = (job.get("infa_section") or name).casefold()
        if heading in seen:
            raise InvalidConfig(
                f"job {name!r} of {wf!r}: infa_section {job.get('infa_section') or name!r} heads job "
                f"{seen[heading]!r} already; each job needs its own section", workflow=wf, job=name,
                field="infa_section")
        seen[heading] = name
