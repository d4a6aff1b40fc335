"""What the service commands print, and how they exit.

A table on a terminal and JSON otherwise (--json / --table choose), nothing with
--quiet, and an exit code per class of error, so a script can tell "paused" from
"failed" (docs/api.md#exit-codes).
"""
from __future__ import annotations

import functools
import json
import os
import re
import shlex
import sys
from contextlib import contextmanager

import click

from ..client import BadServiceURL, Batchy, ServiceError
from ..rules.fields import RUNTIME_FIELDS
from ..settings import SETTINGS

SETTING_NAMES = frozenset(setting.name for setting in SETTINGS)

EXIT_OK = 0
EXIT_ERROR = 1  # anything else: a 500, an unexpected answer, export/import errors
EXIT_USAGE = 2  # click's own: a bad option or argument; a service URL that is not http(s)
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_PAUSED = 5
EXIT_UNAUTHORIZED = 6
EXIT_UNAVAILABLE = 7  # a 503, or the service cannot be reached at all
EXIT_BAD_INPUT = 8
EXIT_NOT_CAUGHT_UP = 9  # batchy run --until-caught-up stopped short: --max-runs, or a window that did not move
EXIT_OUTAGE = 75  # a runner gave up on the service after --outage-seconds (sysexits' EX_TEMPFAIL)
EXIT_BY_STATUS = {
    400: EXIT_BAD_INPUT, 401: EXIT_UNAUTHORIZED, 404: EXIT_NOT_FOUND, 409: EXIT_CONFLICT,
    413: EXIT_BAD_INPUT, 423: EXIT_PAUSED, 503: EXIT_UNAVAILABLE,
}


EXIT_CODES_HELP = """\b
Exit codes: 0 ok, 1 other error, 2 usage, 3 not found, 4 conflict, 5 paused,
6 unauthorized, 7 unavailable (503 or unreachable), 8 bad input (400);
`batchy run` and `batchy backfill run`: see their --help; `batchy wait` exits
with waitsy's codes. Output: a table on a terminal, JSON
otherwise; --json, --table and --quiet choose."""


class Failed(click.ClickException):
    """An error with the exit code of its class (EXIT_*)."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.exit_code = exit_code


@contextmanager
def service_errors():
    """Turn the service's errors into `batchy`'s exit codes (EXIT_BY_STATUS)."""
    try:
        yield
    except ServiceError as exc:
        raise Failed(f"{exc.message} ({exc.status} {exc.code})", EXIT_BY_STATUS.get(exc.status, EXIT_ERROR)) from None
    except BadServiceURL as exc:
        raise Failed(str(exc), EXIT_USAGE) from None
    except OSError as exc:
        raise Failed(f"cannot reach Batchy at {Batchy().url}: {exc}", EXIT_UNAVAILABLE) from None


# The client reads BATCHY_URL and BATCHY_API_TOKEN: --url and --token set them while their
# command runs, as `BATCHY_URL=... batchy status wf1` would, and put them back after.
_ENV_OF = {"url": "BATCHY_URL", "token": "BATCHY_API_TOKEN"}


def _connection(ctx, param, value):
    if value is None:
        return
    name = _ENV_OF[param.name]
    before = os.environ.get(name)

    def restore():
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before

    os.environ[name] = value
    ctx.call_on_close(restore)


def output_options(fn):
    """Add --json/--table, --quiet, --url and --token to a command: waitsy's common flags too."""
    fn = click.option("--token", metavar="TOKEN", expose_value=False, callback=_connection,
                      help="API token (default: $BATCHY_API_TOKEN).")(fn)
    fn = click.option("--url", metavar="URL", expose_value=False, callback=_connection,
                      help="The Batchy service (default: $BATCHY_URL, else http://127.0.0.1:5000).")(fn)
    fn = click.option("--quiet", "-q", is_flag=True, help="Print nothing on success: the exit code says.")(fn)
    return click.option("--json/--table", "as_json", default=None,
                        help="JSON (the default when stdout is not a terminal) or a table (on a terminal).")(fn)


def limit_option(default: int, maximum: int = 1000):
    """Add --limit (1 to maximum) to a command."""
    return click.option("--limit", default=default, show_default=True, type=click.IntRange(1, maximum))


_OUTPUT = "batchy.output"


def service_command(*args, **kwargs):
    """Declare a command that talks to the service: --json/--table, --quiet, exit codes by error."""

    def decorate(fn):
        @functools.wraps(fn)
        def run(*a, as_json, quiet, **kw):
            click.get_current_context().meta[_OUTPUT] = (as_json, quiet)
            with service_errors():
                return fn(*a, **kw)

        return click.command(*args, **kwargs)(output_options(run))

    return decorate


def json_flag() -> bool | None:
    """Return the running command's --json (True) or --table (False), None when neither was given."""
    return click.get_current_context().meta[_OUTPUT][0]


def _output() -> tuple[bool, bool]:
    """Return (as_json, quiet) of the running command."""
    as_json, quiet = click.get_current_context().meta.get(_OUTPUT, (None, False))
    return (not sys.stdout.isatty()) if as_json is None else as_json, quiet


def show(data, human=None) -> None:
    """Print data as JSON, or on a terminal as human(data); nothing with --quiet."""
    as_json, quiet = _output()
    if not quiet:
        _echo(json.dumps(data, indent=2) if as_json or human is None else human(data))


def show_text(text: str) -> None:
    """Print a text answer (a parameter file, export lines) as it is; nothing with --quiet."""
    if not _output()[1]:
        _echo(text)


def _echo(text: str) -> None:
    try:
        click.echo(text, nl=not text.endswith("\n"))
        sys.stdout.flush()
    except BrokenPipeError:  # the reader stopped early (| head): not a service error, and no traceback at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# -- tables: the human output --------------------------------------------------------

def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        value = ",".join(map(str, value))
    elif isinstance(value, dict):
        value = json.dumps(value, separators=(",", ":"))
    text = " ".join(str(value).split())  # one line per row
    return text if len(text) <= 60 else text[:57] + "..."


def table(rows: list[dict], columns: list[str], header: bool = True) -> str:
    """Return rows as aligned columns, under a header of the column names."""
    lines = ([[c.upper() for c in columns]] if header else []) + [[_cell(r.get(c)) for c in columns] for r in rows]
    if not lines:
        return ""
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def pairs(data: dict) -> str:
    """Return data as two aligned columns, key and value, without a header."""
    return table([{"k": k, "v": v} for k, v in data.items()], ["k", "v"], header=False)


STATE_COLUMNS = ["job", "status", "batch_id", "from_date", "to_date", "records_processed", "message"]
BATCH_COLUMNS = ["batch_id", "status", "batch_start", "batch_end", "duration_seconds", "records_processed"]


def state_table(state: dict) -> str:
    """Return a workflow's state ({job: fields}) as a table of its jobs."""
    return table([{"job": job, **fields} for job, fields in state.items()], STATE_COLUMNS)


# -- shell output: open --format env ------------------------------------------------

def env_name(job: str) -> str:
    """Return the part of a job's variable names: upper-cased, every other character `_`."""
    return re.sub(r"[^A-Z0-9_]", "_", job.upper())


def env_names(jobs) -> dict[str, str]:
    """Return {job: env name}; refuse two jobs that would write the same variables."""
    names: dict[str, str] = {}
    for job in jobs:
        taken = next((other for other, name in names.items() if name == env_name(job)), None)
        if taken is not None:
            raise Failed(f"jobs {taken!r} and {job!r} both become BATCHY_{env_name(job)}_*: --format env cannot "
                         f"tell them apart (rename one, or use --format json)", EXIT_BAD_INPUT)
        names[job] = env_name(job)
    return names


# The state of a job in an open's answer (jobs.RUNTIME_FIELDS): every other field is a parameter.
STATE_FIELDS = frozenset(RUNTIME_FIELDS)  # what Batchy maintains is no parameter
# Names the parameter variables a run (or an eval of open --format env) set, so that a run inside
# it drops them: never passed on stale.
PARAMS_VARIABLE = "BATCHY_RUN_PARAMS"
# Variables batchy itself sets or reads: a parameter never takes one of these names.
RESERVED = re.compile(r"BATCHY_(BATCH_ID|FROM_DATE|TO_DATE|WORKFLOW|JOB|CHUNK|ATTEMPT|BACKFILL_ID|RECORDS_FILE|"
                      r"URL|API_TOKENS?|RUN_\w+|REDIS_\w+|\w+_(FROM|TO)_DATE)")


def _shell_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def params_env(jobs: dict, job: str | None = None, taken=()) -> dict[str, str]:
    """Return each job's parameters as BATCHY_<JOB>_<PARAM>, and those of job (or of the only
    job) as BATCHY_<PARAM> too.

    Names are upper-cased, every character other than A-Z, 0-9 and `_` becoming `_`. First
    come, first served: a name batchy sets or reads itself (RESERVED, taken) is never given
    to a parameter, every BATCHY_<JOB>_<PARAM> comes before any BATCHY_<PARAM>, jobs and
    parameters in the answer's order; a parameter whose name is taken is left out (it is
    still in --format json).
    """
    values: dict[str, str] = {}
    chosen = job if job is not None else (next(iter(jobs)) if len(jobs) == 1 else None)
    named = [(f"BATCHY_{env_name(name)}_{env_name(key)}", value) for name, params in jobs.items()
             for key, value in params.items() if key not in STATE_FIELDS]
    if chosen is not None:
        named += [(f"BATCHY_{env_name(key)}", value) for key, value in jobs[chosen].items()
                  if key not in STATE_FIELDS]
    for variable, value in named:
        if variable in values or variable in taken or variable in SETTING_NAMES or RESERVED.fullmatch(variable):
            continue
        values[variable] = _shell_value(value)
    return values


def env_lines(jobs: dict) -> str:
    """Return a batch as `export` lines for `eval "$(batchy open WF --format env)"`."""
    values = _window_values(jobs)
    params = params_env(jobs, taken=values)
    # Named, so that a batchy run started from this shell does not pass them on as its own.
    values.update(params, **{PARAMS_VARIABLE: ",".join(params)})
    return "".join(f"export {k}={shlex.quote('' if v is None else str(v))}\n" for k, v in values.items())


def _window_values(jobs: dict) -> dict:
    ids = {params.get("batch_id") for params in jobs.values()}
    if len(ids) != 1:
        raise Failed(f"the jobs have different batch ids ({sorted(map(str, ids))}): use --format json")
    values = {"BATCHY_BATCH_ID": ids.pop()}
    for job, name in env_names(jobs).items():
        values[f"BATCHY_{name}_FROM_DATE"] = jobs[job].get("from_date")
        values[f"BATCHY_{name}_TO_DATE"] = jobs[job].get("to_date")
    if len(jobs) == 1:
        (only,) = jobs.values()
        values["BATCHY_FROM_DATE"], values["BATCHY_TO_DATE"] = only.get("from_date"), only.get("to_date")
    return values


def env_failure_lines(jobs: dict | None) -> str:
    """Return what a failed `open --format env` prints: shell that unsets the variables a
    previous open set (so no stale batch id survives) and ends in `false`, so that
    `eval "$(batchy open WF --format env)"` itself fails (set -e stops the script)."""
    names = {"BATCHY_BATCH_ID", "BATCHY_FROM_DATE", "BATCHY_TO_DATE"}
    names |= {k for k in os.environ if re.fullmatch(r"BATCHY_\w+_(FROM|TO)_DATE", k)}
    if jobs:
        try:
            names |= set(_window_values({name: {"batch_id": 0} for name in jobs})) | set(params_env(jobs))
        except Failed:  # job names that clash: the batch id and the dates are unset all the same
            pass
    return f"unset {' '.join(sorted(names))}\nfalse\n"
