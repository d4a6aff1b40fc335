"""Workflow files: safe YAML loading, the workflow settings, and reload merging.

The jobs' parameters are checked by validation.py, which import uses too; what each
field and setting may hold is declared in fields.py.
"""
from __future__ import annotations

import logging
import os

import yaml

from . import fields, names, windows
from ..errors import ConfigNotFound, InvalidConfig
from .fields import RUNTIME_FIELDS
from .jobs import Status
from .validation import BadDate, check_sections, check_value, fill_job, has_surrogate

log = logging.getLogger("batchy")

__all__ = ["Config", "check_settings", "check_value", "fill_job", "has_surrogate", "merge", "parse_config",
           "read_config"]

# The top-level key holding workflow-wide settings; job names cannot start with a dot.
SETTINGS_KEY = ".batchy"
MAX_DEPTH = 20
MAX_JOBS = 10000


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (the 'billion laughs' bomb), deep nesting and
    duplicate keys, and keeps an impossible date (2026-11-31) for the check that knows its field."""

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

    def construct_mapping(self, node, deep=False):
        # PyYAML silently keeps the last of two equal keys: a lost parameter nobody sees.
        first: dict[str, int] = {}
        for key_node, _value in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                line = key_node.start_mark.line + 1
                if key_node.value in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r} (first at line {first[key_node.value]})",
                        key_node.start_mark)
                first[key_node.value] = line
        return super().construct_mapping(node, deep)

    def construct_timestamp(self, node):
        try:
            return self.construct_yaml_timestamp(node)
        except ValueError as exc:
            return BadDate(node.value, str(exc))


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_timestamp)


def config_path(cfg_dir: str, wf: str) -> str:
    """Return the path of wf's file; wf must already be a valid name (no separators)."""
    names.check_workflow(wf)
    for ext in (".yaml", ".yml"):
        path = os.path.join(cfg_dir, wf + ext)
        if os.path.isfile(path):
            return path
    # No server path in the answer, whoever calls may not be the operator: the log has it.
    log.info("no workflow file %s.yaml (or .yml) in %s", wf, os.path.abspath(cfg_dir))
    raise ConfigNotFound(
        f"no workflow file {wf}.yaml (or .yml) in the service's workflow folder (BATCHY_CFG_DIR)", workflow=wf
    )


def names_in(cfg_dir: str) -> list[str]:
    """Return the workflow names of the files (<wf>.yaml, <wf>.yml) in cfg_dir, in name order."""
    try:
        entries = os.listdir(cfg_dir)
    except OSError:
        return []
    found = {os.path.splitext(e)[0] for e in entries
             if e.endswith((".yaml", ".yml")) and os.path.isfile(os.path.join(cfg_dir, e))}
    return sorted(found)


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
    doc, lines = _load(wf, data)
    if doc is None:
        raise InvalidConfig(f"{wf}.yaml is empty: list at least one job", workflow=wf)
    if not isinstance(doc, dict):
        raise InvalidConfig(
            f"{wf}.yaml must be a mapping of job name -> parameters, not a {type(doc).__name__}",
            workflow=wf,
        )
    try:
        settings = check_settings(wf, doc.pop(SETTINGS_KEY, None) or {})
    except InvalidConfig as exc:
        raise _at_line(exc, lines.get((SETTINGS_KEY, exc.context.get("field")))) from None
    if not doc:
        raise InvalidConfig(f"{wf}.yaml lists no job", workflow=wf)
    if len(doc) > MAX_JOBS:
        raise InvalidConfig(f"{wf}.yaml lists more than {MAX_JOBS} jobs", workflow=wf)
    jobs = {}
    for key, params in doc.items():
        job = key if isinstance(key, str) else str(key)  # a YAML key like 2024 or true: names are text
        names.check_job(job, wf)
        if job in jobs:
            raise InvalidConfig(f"{wf}.yaml names job {job!r} twice", workflow=wf, job=job)
        if params is None:
            params = {}
        if not isinstance(params, dict):
            raise InvalidConfig(
                f"job {job!r} of {wf}.yaml must map parameter names to values, not a {type(params).__name__}",
                workflow=wf,
                job=job,
            )
        try:
            jobs[job] = fill_job(wf, job, params, settings.get("allow_params", ()))
            check_job_policy(wf, job, jobs[job], settings)
        except InvalidConfig as exc:
            raise _at_line(exc, lines.get((job, exc.context.get("field")))) from None
    check_sections(wf, jobs)
    return Config(jobs, settings)


def check_job_policy(wf: str, job: str, params: dict, settings: dict) -> None:
    """Refuse a window policy whose fields do not fit together (the job's over the workflow's)."""
    merged = {k: settings[k] for k in windows.POLICY_FIELDS if settings.get(k) is not None}
    merged.update({k: params[k] for k in windows.POLICY_FIELDS if params.get(k) is not None})
    merged["reprocess_hours"] = params.get("reprocess_hours")
    try:
        windows.check_policy(merged)
    except ValueError as exc:  # "<field> ...": the field it names first
        raise InvalidConfig(f"job {job!r} of {wf!r}: {exc}", workflow=wf, job=job, field=str(exc).split()[0]) from None


def _load(wf: str, data: bytes | str) -> tuple[object, dict[tuple[str, str], int]]:
    """Return the file's document and {(job, parameter): line} of its parameters."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidConfig(f"{wf}.yaml is not UTF-8 (byte {exc.start})", workflow=wf) from None
    try:
        return _construct(_Loader(data))
    except yaml.YAMLError as exc:
        raise InvalidConfig(f"{wf}.yaml is not valid YAML: {_yaml_problem(exc)}", workflow=wf) from None
    except RecursionError:
        raise InvalidConfig(f"{wf}.yaml nests too deeply", workflow=wf) from None
    except (ValueError, OverflowError) as exc:
        # PyYAML's constructors raise these for values such as a 5000-digit int.
        raise InvalidConfig(f"{wf}.yaml holds a value that cannot be read: {str(exc)[:200]}", workflow=wf) from None


def _construct(loader: _Loader) -> tuple[object, dict[tuple[str, str], int]]:
    try:
        node = loader.get_single_node()
        return (None if node is None else loader.construct_document(node)), _lines(node)
    finally:
        loader.dispose()


def _lines(node) -> dict[tuple[str, str], int]:
    """Return {(job, parameter): line} from the file's top mapping node, keys as written."""
    lines = {}
    for job_node, params in node.value if isinstance(node, yaml.MappingNode) else ():
        for key_node, _value in params.value if isinstance(params, yaml.MappingNode) else ():
            if isinstance(job_node, yaml.ScalarNode) and isinstance(key_node, yaml.ScalarNode):
                lines[(job_node.value, key_node.value)] = key_node.start_mark.line + 1
    return lines


def _at_line(exc: InvalidConfig, line: int | None) -> InvalidConfig:
    """Return exc saying the line of the file it is about, when known."""
    if line is None:
        return exc
    return InvalidConfig(f"{exc.message} (line {line})", **exc.context, line=line)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return problem


def check_settings(wf: str, raw, where: str = "") -> dict:
    """Validate the workflow-wide `.batchy:` settings (where: of what, default the file)."""
    where = where or f"{wf}.yaml"
    if not isinstance(raw, dict):
        raise InvalidConfig(f"'{SETTINGS_KEY}' in {where} must be a mapping", workflow=wf)
    settings = {}
    for key, value in raw.items():
        if key not in fields.WORKFLOW_SETTINGS:
            known = ", ".join(fields.WORKFLOW_SETTINGS)
            raise InvalidConfig(f"unknown workflow setting {key!r} in {where} (known: {known})", workflow=wf)
        try:
            settings[key] = fields.check(key, value)
        except ValueError as exc:  # "<key> must ...": said once, with where
            raise InvalidConfig(f"{key} in {where} {str(exc).split(' ', 1)[1]}", workflow=wf, field=key) from None
    return settings


# Runtime fields a job holds only once something set them (fields.NO_DEFAULT: a close's
# attestation, an invalidation, an operator's next_from_date, a policy's caught_up): a reload
# does not add them as nulls (nor a $$generation= line to a parameter file).
SAID_WHEN_GIVEN = tuple(f.name for f in fields.FIELDS if f.scope == fields.RUNTIME and f.default is fields.NO_DEFAULT)


def merge(existing: dict[str, dict], configured: dict[str, dict]) -> dict[str, dict]:
    """Return the state after reloading config over existing state.

    Jobs in the file get its parameters; a job that has run keeps its runtime state
    (status, watermark, batch times) so a redeploy never loses a watermark, and a job
    that never ran keeps the from_date an operator set on it (next_from_date). Jobs no
    longer in the file are dropped; new ones start as configured.
    """
    merged = {}
    for job, params in configured.items():
        current = existing.get(job) or {}
        new = dict(params)
        if current.get("status", Status.NEW) != Status.NEW:
            for field in RUNTIME_FIELDS:
                if field in current or field not in SAID_WHEN_GIVEN:
                    new[field] = current.get(field)
        elif current.get("next_from_date"):
            new.update(from_date=current.get("from_date"), next_from_date=current["next_from_date"])
        merged[job] = new
    return merged
