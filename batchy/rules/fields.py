"""Every special field of a job and every workflow setting, declared once.

One row a field: its name, where it may be set (a job, the workflow's `.batchy`
settings, both, or nowhere: Batchy maintains it), its default, the check its value must
pass and a one-line doc. Validation, loading, import, the Informatica renderer and the
docs' field tables (`python -m batchy.rules.fields`) all read this table: adding a field
is one row here, plus the rule that gives it a meaning.
"""
from __future__ import annotations

import functools
import re
from datetime import datetime
from typing import Callable, NamedTuple

from croniter import croniter
from croniter.croniter import CroniterError

from .times import MAX_HOURS, UTC, zone
from .windows import UNITS, WEEKDAYS

RUNTIME = "runtime"  # Batchy maintains it while batches run; a reload never overwrites it
JOB = "job"  # set on a job in the workflow file
WORKFLOW = "workflow"  # set under the file's `.batchy` key
BOTH = "job, workflow"  # either; a job's own value wins
NO_DEFAULT = object()  # a job without the field does not get one filled in

CLOCK = re.compile(r"([01]?[0-9]|2[0-3]):([0-5][0-9])")  # expected_by: HH:MM


class Field(NamedTuple):
    name: str
    scope: str
    default: object
    check: Callable | None  # value -> value, or ValueError "<name> must ..."; None: any JSON value
    doc: str


def amount(name: str, unit: str = "hours", *, zero_ok: bool = False, most: float = MAX_HOURS) -> Callable:
    """Return the check of a number of units, > 0 (or >= 0 with zero_ok) and at most most."""
    low = ">= 0" if zero_ok else "> 0"

    def check(value):  # on every open (reprocess_hours): no further call
        if value.__class__ not in (int, float) or not (0 < value <= most or (zero_ok and value == 0)):
            raise ValueError(f"{name} must be a number of {unit} {low} (at most {most:g}), not {value!r}")
        return value
    return check


def _flag(name: str) -> Callable:
    def check(value):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, not {value!r}")
        return value
    return check


def _one_of(name: str, allowed: tuple, what: str) -> Callable:
    def check(value):
        if value not in allowed:
            raise ValueError(f"{name} must be {what}, not {value!r}")
        return value
    return check


def _timezone(value):
    try:
        zone(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"timezone {exc}") from None
    return value


def _names(value):
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ValueError(f"allow_params must be a list of parameter names, not {value!r:.80}")
    return value


def _expected_by(value):
    problem = _expected_by_problem(value) if isinstance(value, str) else "syntax"
    if problem == "syntax":
        raise ValueError(f"expected_by must be HH:MM or a 5-field cron expression, not {value!r}")
    if problem == "never":
        raise ValueError(f"expected_by {value!r} is a cron expression that never fires (a day no month "
                         "has, such as 30 February or 31 April): no success could ever be due")
    return value


@functools.lru_cache(maxsize=1024)  # every /late, /metrics and dashboard read checks the stored settings
def _expected_by_problem(text: str) -> str | None:
    """Return None for a usable expected_by, else "syntax" or "never" (a cron that never fires)."""
    if CLOCK.fullmatch(text):
        return None
    if not (len(text.split()) == 5 and croniter.is_valid(text)):
        return "syntax"
    return None if _fires(text) else "never"


_PROBE = datetime(2000, 1, 1, tzinfo=UTC)  # a cron expression is tried around this moment


def _fires(text: str) -> bool:
    """Return whether a valid cron expression has a firing before and after a moment.

    croniter.is_valid accepts "0 0 30 2 *", but get_prev and get_next raise on it.
    """
    try:
        croniter(text, _PROBE).get_next(datetime)
        croniter(text, _PROBE).get_prev(datetime)
    except (CroniterError, ValueError, OverflowError):
        return False
    return True


FIELDS = (
    # -- what Batchy maintains (README, Concepts) -------------------------------------------
    Field("status", RUNTIME, "new", None, "`new` (loaded, never run), `open`, `success`, `failed`. History "
          "snapshots may also say `abandoned` (superseded by a newer open before closing)."),
    Field("batch_id", RUNTIME, None, None, "ETL batch id: the unix second of the open (Redis' clock), unless that "
          "number is taken: ids strictly increase per workflow, so opens within one second get the next free numbers "
          "and, after a burst, an id can run ahead of the clock. Use `batch_start` for the time."),
    Field("from_date", RUNTIME, None, None, "Start of the window the ETL must extract (inclusive). Set it in the "
          "file for the first run."),
    Field("to_date", RUNTIME, None, None, "End of the window (exclusive): the open's `batch_start`, or earlier "
          "under a [window policy](docs/workflows.md#window-policy); fixed at open."),
    Field("batch_start", RUNTIME, None, None, "When the batch last started."),
    Field("batch_end", RUNTIME, None, None, "When the batch last ended."),
    Field("records_processed", RUNTIME, NO_DEFAULT, None, "What the last close reported (cleared at open)."),
    Field("message", RUNTIME, NO_DEFAULT, None, "What the last close or fail reported (cleared at open)."),
    Field("checksum", RUNTIME, NO_DEFAULT, None, "What the last successful close gave as the loaded data's "
          "checksum (text, at most 128 characters; cleared at open)."),
    Field("dq", RUNTIME, NO_DEFAULT, None, "The last successful close's data quality verdict, `pass` or `fail`: "
          "a window closed with `fail` is not covered ([attested coverage](docs/backfills.md#attested-coverage))."),
    Field("dq_message", RUNTIME, NO_DEFAULT, None, "Why, with `dq` (cleared at open)."),
    Field("generation", RUNTIME, NO_DEFAULT, None, "How many [invalidations](docs/backfills.md#late-data-invalidate-"
          "a-range) touched the job: a downstream that read its data at a lower one reads again."),
    Field("invalidated_in_batch", RUNTIME, NO_DEFAULT, None, "The batch that was running when an invalidation "
          "came: its close leaves the dirty range dirty (it may have read its data before the late rows)."),
    Field("next_from_date", RUNTIME, NO_DEFAULT, None, "Present only after an operator's [set_from_date or "
          "rewind](docs/api.md#watermark-control): the next open starts exactly there."),
    Field("records_scope", RUNTIME, NO_DEFAULT, None, "`batch` when `records_processed` is the whole batch's "
          "count (a whole-workflow close), kept on each of its jobs and counted once in history."),
    Field("caught_up", RUNTIME, NO_DEFAULT, None, "Under a window policy: whether the window reaches the newest "
          "end allowed now."),
    Field("behind_seconds", RUNTIME, NO_DEFAULT, None, "Under a window policy: how far the window stops short of "
          "that end."),
    # -- what a job sets ------------------------------------------------------------------------
    Field("reprocess_hours", JOB, 0, amount("reprocess_hours", zero_ok=True), "Hours (fractions allowed) "
          "subtracted from the previous `to_date` when a new `from_date` is computed."),
    Field("trunc_start", JOB, False, _flag("trunc_start"), "When true, `from_date` is truncated back to midnight "
          "in the job's `timezone`."),
    Field("timezone", JOB, "UTC", _timezone, "IANA name (`Europe/Paris`) for `trunc_start`, window policies and "
          "rendering the job's dates."),
    Field("infa_section", JOB, NO_DEFAULT, None, "The section header of the job in the [Informatica parameter "
          "file](docs/workflows.md#informatica-parameter-file)."),
    Field("infa_date_format", JOB, NO_DEFAULT, None, "How the Informatica file writes the job's dates "
          "(`MM/DD/YYYY HH24:MI:SS`)."),
    # -- window policy ([docs](docs/workflows.md#window-policy)) --------------------------------
    Field("max_window_hours", BOTH, NO_DEFAULT, amount("max_window_hours"), "A window is at most this long: a "
          "catch-up is a loop of bounded extracts."),
    Field("settle_minutes", BOTH, NO_DEFAULT, amount("settle_minutes", "minutes", zero_ok=True, most=MAX_HOURS * 60),
          "The window ends this long before now (rows that become visible late)."),
    Field("batch_size", BOTH, NO_DEFAULT, _one_of("batch_size", UNITS, "one of " + ", ".join(UNITS)),
          "Windows end on a boundary of this unit in the job's zone: `hour`, `day`, `week`, `month`."),
    Field("week_start", BOTH, NO_DEFAULT, _one_of("week_start", WEEKDAYS, "a day name such as monday"),
          "The day weeks start on with `batch_size: week` (default `monday`)."),
    # -- lateness ([docs](docs/operations.md#late-jobs-and-stuck-batches)) ----------------------
    Field("expected_by", BOTH, NO_DEFAULT, _expected_by, "A success is due by this time of day (`HH:MM` in the "
          "job's zone) or cron schedule; later, the job is late."),
    Field("max_age_hours", BOTH, NO_DEFAULT, amount("max_age_hours"), "A job whose last success is older is late."),
    Field("max_coverage_lag_hours", BOTH, NO_DEFAULT, amount("max_coverage_lag_hours"), "The job's complete data "
          "(the unbroken coverage from its first window) may end at most this long before now; later, `/late` "
          "reports it as `coverage_lag`."),
    Field("max_open_hours", WORKFLOW, NO_DEFAULT, amount("max_open_hours"), "A batch open longer is stuck."),
    # -- coverage ([docs](docs/backfills.md#holes-that-repair-themselves)) -------------------------
    Field("auto_backfill", BOTH, NO_DEFAULT, _flag("auto_backfill"), "When true, each hole of the job's coverage "
          "becomes a backfill by itself once `settle_minutes` past its end."),
    # -- the workflow's own settings ----------------------------------------------------------------
    Field("exclusive", WORKFLOW, NO_DEFAULT, _flag("exclusive"), "Refuse a second open while a batch is open "
          "([exclusive runs](api.md#pause-and-exclusive-runs))."),
    Field("lease_hours", WORKFLOW, NO_DEFAULT, amount("lease_hours"), "How long an exclusive batch may stay open "
          "before a new open may take over."),
    Field("stale_after_hours", WORKFLOW, NO_DEFAULT, amount("stale_after_hours"), "The dashboard's and the "
          "metrics' warning threshold: a job whose last success is older is stale."),
    Field("allow_params", WORKFLOW, NO_DEFAULT, _names, "Parameter names to keep although they are close to a "
          "special field ([typos](#typos-and-duplicate-keys))."),
)
BY_NAME = {f.name: f for f in FIELDS}

RUNTIME_FIELDS = tuple(f.name for f in FIELDS if f.scope == RUNTIME)
JOB_SETTINGS = tuple(f.name for f in FIELDS if f.scope in (JOB, BOTH))
WORKFLOW_SETTINGS = tuple(f.name for f in FIELDS if f.scope in (WORKFLOW, BOTH))
# Every field Batchy gives a meaning to on a job; a name close to one of them is taken for a typo.
SPECIAL_FIELDS = RUNTIME_FIELDS + JOB_SETTINGS
DEFAULTS = {f.name: f.default for f in FIELDS if f.default is not NO_DEFAULT}
INFA_FIELDS = ("infa_section", "infa_date_format")  # control the Informatica file; not written as parameters


def check(name: str, value):
    """Return value checked by the field's rule, or raise ValueError ("<name> must ...")."""
    field = BY_NAME[name]
    return value if field.check is None else field.check(value)


# What an open reads to make a window: a stored value that fails its check is refused where it
# is read (stored_problem). The lateness settings are checked where they are read instead
# (lateness.setting_problem): a bad one is reported for its workflow and the fleet reads go on.
OPEN_SETTINGS = ("reprocess_hours", "trunc_start", "timezone", "max_window_hours", "settle_minutes", "batch_size",
                 "week_start", "auto_backfill", "exclusive", "lease_hours")
STORED_JOB_CHECKS = tuple(name for name in OPEN_SETTINGS if name in JOB_SETTINGS)
STORED_WORKFLOW_CHECKS = tuple(name for name in OPEN_SETTINGS if name in WORKFLOW_SETTINGS)


def stored_problem(values: dict, names: tuple[str, ...]) -> str | None:
    """Return why a stored job's or workflow's settings (names of them) cannot be used, or None.

    A value read from Redis passes the check it passed when loaded; one a hand edit broke
    (settle_minutes "x", reprocess_hours 1e300, a negative window) is refused where it is read,
    never used for a window or a gate. null counts as not set.
    """
    for name in names:
        value = values.get(name)
        if value is not None:
            field = BY_NAME[name]
            if field.check is not None:
                try:
                    field.check(value)
                except (ValueError, TypeError) as exc:
                    return f"has {exc}"
    return None


def _shown(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def markdown_table(scopes: tuple[str, ...]) -> str:
    """Return the docs' table of the fields of these scopes."""
    lines = ["| Field | Set on | Default | Meaning |", "| --- | --- | --- | --- |"]
    for f in FIELDS:
        if f.scope in scopes:
            default = "" if f.default is NO_DEFAULT or f.default is None else f"`{_shown(f.default)}`"
            where = "Batchy" if f.scope == RUNTIME else f.scope
            lines.append(f"| `{f.name}` | {where} | {default} | {f.doc} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print("README.md, Concepts:\n")
    print(markdown_table((RUNTIME, JOB)))
    print("\ndocs/workflows.md, Workflow settings:\n")
    print(markdown_table((WORKFLOW, BOTH)))
