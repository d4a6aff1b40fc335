"""Workflow files: safe YAML loading, validation of the special fields, and reload merging."""
from __future__ import annotations

import math
import os
from datetime import date, datetime

import yaml

from . import names, watermark
from .errors import ConfigNotFound, InvalidConfig

# The top-level key holding workflow-wide settings; job names cannot start with a dot.
SETTINGS_KEY = ".batchy"
WORKFLOW_SETTINGS = {
    "exclusive": "bool",
    "lease_hours": "hours",
    "stale_after_hours": "hours",
}
MAX_DEPTH = 20
MAX_JOBS = 10000
MAX_STRING = 65536


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (the 'billion laughs' bomb) and deep nesting."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in workflow files", mark
            )
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nesting deeper than {MAX_DEPTH} levels", self.peek_event().start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def config_path(cfg_dir: str, wf: str) -> str:
    """Return the path of wf's file; wf must already be a valid name (no separators)."""
    names.check_workflow(wf)
    for ext in (".yaml", ".yml"):
        path = os.path.join(cfg_dir, wf + ext)
        if os.path.isfile(path):
            return path
    raise ConfigNotFound(
        f"no workflow file {wf}.yaml in {os.path.abspath(cfg_dir)}", workflow=wf
    )


def read_config(cfg_dir: str, wf: str, max_bytes: int) -> "Config":
    """Read, parse and validate wf's file from cfg_dir."""
    path = config_path(cfg_dir, wf)
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InvalidConfig(f"{wf}.yaml is larger than {max_bytes} bytes", workflow=wf)
    return parse_config(wf, data)


class Config:
    """A validated workflow file: jobs with their special fields filled in, and settings."""

    def __init__(self, jobs: dict[str, dict], settings: dict):
        self.jobs = jobs
        self.settings = settings


def parse_config(wf: str, data: bytes | str) -> Config:
    """Parse and validate a workflow file's text."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidConfig(f"{wf}.yaml is not UTF-8 (byte {exc.start})", workflow=wf) from None
    try:
        doc = yaml.load(data, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        raise InvalidConfig(f"{wf}.yaml is not valid YAML: {_yaml_problem(exc)}", workflow=wf) from None
    except RecursionError:
        raise InvalidConfig(f"{wf}.yaml nests too deeply", workflow=wf) from None
    except (ValueError, OverflowError) as exc:
        # PyYAML's constructors raise these for values such as 2024-02-30 or a 5000-digit int.
        raise InvalidConfig(f"{wf}.yaml holds a value that cannot be read: {str(exc)[:200]}", workflow=wf) from None
    if doc is None:
        raise InvalidConfig(f"{wf}.yaml is empty: list at least one job", workflow=wf)
    if not isinstance(doc, dict):
        raise InvalidConfig(
            f"{wf}.yaml must be a mapping of job name -> parameters, not a {type(doc).__name__}",
            workflow=wf,
        )
    settings = check_settings(wf, doc.pop(SETTINGS_KEY, None) or {})
    if not doc:
        raise InvalidConfig(f"{wf}.yaml lists no job", workflow=wf)
    if len(doc) > MAX_JOBS:
        raise InvalidConfig(f"{wf}.yaml lists more than {MAX_JOBS} jobs", workflow=wf)
    jobs = {}
    for job, params in doc.items():
        if not isinstance(job, str):
            job = str(job)  # a YAML key like 2024 or true: names are text
        names.check_job(job, wf)
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidConfig(
                f"job {job!r} of {wf}.yaml must map parameter names to values, not a {type(params).__name__}",
                workflow=wf,
                job=job,
            )
        jobs[job] = fill_job(wf, job, params)
    return Config(jobs, settings)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return problem


def check_settings(wf: str, raw) -> dict:
    """Validate the workflow-wide `batchy:` settings."""
    if not isinstance(raw, dict):
        raise InvalidConfig(f"'{SETTINGS_KEY}' in {wf}.yaml must be a mapping", workflow=wf)
    settings = {}
    for key, value in raw.items():
        kind = WORKFLOW_SETTINGS.get(key)
        if kind is None:
            known = ", ".join(WORKFLOW_SETTINGS)
            raise InvalidConfig(f"unknown workflow setting {key!r} in {wf}.yaml (known: {known})", workflow=wf)
        if kind == "bool" and not isinstance(value, bool):
            raise InvalidConfig(f"{key} in {wf}.yaml must be true or false, not {value!r}", workflow=wf)
        if kind == "hours" and not _is_positive_number(value):
            raise InvalidConfig(f"{key} in {wf}.yaml must be a number of hours > 0, not {value!r}", workflow=wf)
        settings[key] = value
    return settings


def _is_positive_number(value) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and 0 < value <= watermark.MAX_REPROCESS_HOURS
    )


def fill_job(wf: str, job: str, params: dict) -> dict:
    """Return the job's parameters validated, with the special fields filled in."""
    checked = {}
    for key, value in params.items():
        if not isinstance(key, str):
            key = str(key)
        if not key or len(key) > 256 or _has_control(key) or has_surrogate(key):
            raise InvalidConfig(f"job {job!r} of {wf!r} has an invalid parameter name {key[:80]!r}", workflow=wf, job=job)
        checked[key] = check_value(wf, job, key, value)
    filled = {
        "status": watermark.NEW,
        "batch_id": None,
        "from_date": None,
        "to_date": None,
        "batch_start": None,
        "batch_end": None,
        "reprocess_hours": 0,
        "trunc_start": False,
        "timezone": "UTC",
    }
    filled.update(checked)
    return filled


def check_value(wf: str, job: str, key: str, value):
    """Return a parameter's value validated and made JSON-ready, or raise InvalidConfig."""

    def bad(why: str):
        return InvalidConfig(f"job {job!r} of {wf!r}: {key} {why}", workflow=wf, job=job, field=key)

    if key == "reprocess_hours":
        try:
            return watermark.check_reprocess_hours(value)
        except ValueError as exc:
            raise InvalidConfig(f"job {job!r} of {wf!r}: {exc}", workflow=wf, job=job, field=key) from None
    if key == "trunc_start":
        if not isinstance(value, bool):
            raise bad(f"must be true or false, not {value!r}")
        return value
    if key == "timezone":
        try:
            watermark.zone(value)
        except (ValueError, TypeError) as exc:
            raise bad(str(exc)) from None
        return value
    if key == "status":
        if value not in watermark.STATUSES:
            raise bad(f"must be one of {', '.join(watermark.STATUSES)}, not {value!r}")
        return value
    if key in watermark.DATE_FIELDS:
        if value is None:
            return None
        try:
            moment = watermark.parse_input_time(_yaml_timestamp(value, key), key)
        except ValueError as exc:
            raise InvalidConfig(f"job {job!r} of {wf!r}: {exc}", workflow=wf, job=job, field=key) from None
        return watermark.format_time(moment)
    if key in ("batch_id", "records_processed"):
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > 2**53:
            raise bad(f"must be a whole number >= 0, not {value!r}")
        return value
    if key in ("infa_section", "infa_date_format", "message"):
        if value is None:
            return None
        if not isinstance(value, str) or len(value) > MAX_STRING or has_surrogate(value):
            raise bad(f"must be text, not {value!r:.80}")
        if key != "message" and _has_control(value):
            # A NUL or line break would cut or forge lines of the Informatica parameter file.
            raise bad("must be a single line of text without control characters")
        if key == "infa_section" and any(c in value for c in "[]"):
            raise bad("must not contain [ or ]")
        return value
    return _json_ready(value, bad)


def _json_ready(value, bad, depth: int = 0):
    if isinstance(value, datetime):
        return watermark.format_time(watermark.parse_time(value))
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


def _has_control(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def has_surrogate(text: str) -> bool:
    """Return True if text holds a lone surrogate (YAML's "\\ud800"): Redis cannot store it as UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _yaml_timestamp(value, key: str):
    """Return a quoted YAML timestamp ('2001-12-14 21:59:43.10 -5') as YAML reads it unquoted."""
    if isinstance(value, str) and yaml.constructor.SafeConstructor.timestamp_regexp.fullmatch(value.strip()):
        node = yaml.ScalarNode("tag:yaml.org,2002:timestamp", value.strip())
        try:
            return yaml.constructor.SafeConstructor().construct_yaml_timestamp(node)
        except ValueError as exc:  # 2024-13-45: shaped like a date, but not one
            raise ValueError(f"{key} {value!r} is not a valid date: {exc}") from None
    return value


def merge(existing: dict[str, dict], configured: dict[str, dict]) -> dict[str, dict]:
    """Return the state after reloading config over existing state.

    Jobs in the file get its parameters; a job that has run keeps its runtime state
    (status, watermark, batch times) so a redeploy never loses a watermark. Jobs no
    longer in the file are dropped; new ones start as configured.
    """
    merged = {}
    for job, params in configured.items():
        current = existing.get(job)
        new = dict(params)
        if current is not None and current.get("status", watermark.NEW) != watermark.NEW:
            for field in watermark.RUNTIME_FIELDS:
                new[field] = current.get(field)
        merged[job] = new
    return merged
