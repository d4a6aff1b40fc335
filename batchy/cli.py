"""The `batchy` command: run the service, or drive it from a shell.

The commands that talk to the service print a table on a terminal and JSON otherwise
(--json / --table choose), nothing with --quiet, and exit with a code per class of
error, so a script can tell "paused" from "failed" (docs/api.md#exit-codes).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import re
import shlex
import sys

import click

from . import settings as settings_mod
from .client import Batchy, ServiceError
from .jobs import BATCH_STATUSES

EXIT_OK = 0
EXIT_ERROR = 1  # anything else: a 500, an unexpected answer, export/import errors
EXIT_USAGE = 2  # click's own: a bad option or argument
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_PAUSED = 5
EXIT_UNAUTHORIZED = 6
EXIT_UNAVAILABLE = 7  # a 503, or the service cannot be reached at all
EXIT_BAD_INPUT = 8
EXIT_BY_STATUS = {
    400: EXIT_BAD_INPUT, 401: EXIT_UNAUTHORIZED, 404: EXIT_NOT_FOUND, 409: EXIT_CONFLICT,
    413: EXIT_BAD_INPUT, 423: EXIT_PAUSED, 503: EXIT_UNAVAILABLE,
}


EXIT_CODES_HELP = """\b
Exit codes: 0 ok, 1 other error, 2 usage, 3 not found, 4 conflict, 5 paused,
6 unauthorized, 7 unavailable (503 or unreachable), 8 bad input (400);
`batchy wait` exits with waitsy's codes. Output: a table on a terminal, JSON
otherwise; --json, --table and --quiet choose."""


@click.group(epilog=EXIT_CODES_HELP)
def cli():
    """Batchy: batch state and incremental-load watermarks for ETL workflows."""


@cli.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to bind.")
@click.option("--port", default=5000, show_default=True, type=int, help="Port to bind.")
@click.option("--workers", type=int, default=None, help="gunicorn worker processes [BATCHY_WORKERS].")
@click.option("--threads", type=int, default=None, help="Threads per worker [BATCHY_THREADS].")
def serve(host, port, workers, threads):
    """Run the service under gunicorn."""
    from gunicorn.app.base import BaseApplication

    from .db import EMBEDDED_WARNING

    conf = settings_mod.load()
    workers = workers or conf["BATCHY_WORKERS"]
    if not conf["BATCHY_REDIS_URL"]:
        click.secho("WARNING: " + EMBEDDED_WARNING, fg="red", bold=True, err=True)
        workers = 1  # the embedded store lives inside one process
    logging.basicConfig(level=conf["BATCHY_LOG_LEVEL"].upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        # gthread: each /wait waiter holds a thread, and /wait admits at most BATCHY_WAIT_MAX_WAITERS,
        # so adding that many keeps BATCHY_THREADS free for everything else (docs/waitsy.md).
        "threads": (threads or conf["BATCHY_THREADS"]) + conf["BATCHY_WAIT_MAX_WAITERS"],
        "timeout": 120,
        "graceful_timeout": 10,
        "keepalive": 5,
        # gunicorn's own 4 KB request-line limit answers an HTML 414 before the app
        # sees the request: allow the longest GET the OpenAPI document admits.
        "limit_request_line": 8190,
        "accesslog": "-",
        "errorlog": "-",
        # gunicorn >= 24 opens a control socket at one fixed path per user: several
        # services on a host would fight over it, and Batchy does not use it.
        "control_socket_disable": True,
    }

    class Server(BaseApplication):
        def load_config(self):
            for key, value in options.items():
                if key in self.cfg.settings:  # older gunicorns lack some settings
                    self.cfg.set(key, value)

        def load(self):
            from . import create_app

            _json_gunicorn_errors()
            return create_app()

    Server().run()


def _json_gunicorn_errors() -> None:
    """Give the requests gunicorn refuses itself Batchy's one JSON error shape.

    A request line over 8190 bytes or a malformed header never reaches Flask: gunicorn
    answers it from its worker with an HTML page (found by fuzzing with schemathesis).
    gunicorn writes those answers through util.write_error only; this replaces it.
    """
    from gunicorn import util

    from .errors import error_body

    def write_error(sock, status_int, reason, mesg):
        body = error_body(status_int, reason.lower().replace(" ", "_"), mesg or reason)
        head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        util.write_nonblock(sock, head.encode("latin1") + body)

    util.write_error = write_error


class Failed(click.ClickException):
    """An error with the exit code of its class (EXIT_*)."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.exit_code = exit_code


def _client() -> Batchy:
    return Batchy()


_OUTPUT = "batchy.output"


def service_command(*args, **kwargs):
    """Declare a command that talks to the service: --json/--table, --quiet, exit codes by error."""

    def decorate(fn):
        @functools.wraps(fn)
        def run(*a, as_json, quiet, **kw):
            click.get_current_context().meta[_OUTPUT] = (as_json, quiet)
            try:
                return fn(*a, **kw)
            except ServiceError as exc:
                code = EXIT_BY_STATUS.get(exc.status, EXIT_ERROR)
                raise Failed(f"{exc.message} ({exc.status} {exc.code})", code) from None
            except OSError as exc:
                raise Failed(f"cannot reach Batchy at {_client().url}: {exc}", EXIT_UNAVAILABLE) from None

        run = click.option("--quiet", "-q", is_flag=True, help="Print nothing on success: the exit code says.")(run)
        run = click.option("--json/--table", "as_json", default=None,
                           help="JSON (the default when stdout is not a terminal) or a table (on a terminal).")(run)
        return cli.command(*args, **kwargs)(run)

    return decorate


def _output() -> tuple[bool, bool]:
    """Return (as_json, quiet) of the running command."""
    as_json, quiet = click.get_current_context().meta.get(_OUTPUT, (None, False))
    return (not sys.stdout.isatty()) if as_json is None else as_json, quiet


def _show(data, human=None) -> None:
    """Print data as JSON, or on a terminal as human(data); nothing with --quiet."""
    as_json, quiet = _output()
    if not quiet:
        _echo(json.dumps(data, indent=2) if as_json or human is None else human(data))


def _text(text: str) -> None:
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


def _pairs(data: dict) -> str:
    return table([{"k": k, "v": v} for k, v in data.items()], ["k", "v"], header=False)


STATE_COLUMNS = ["job", "status", "batch_id", "from_date", "to_date", "records_processed", "message"]
BATCH_COLUMNS = ["batch_id", "status", "batch_start", "batch_end", "duration_seconds", "records_processed"]


def _state_table(state: dict) -> str:
    return table([{"job": job, **fields} for job, fields in state.items()], STATE_COLUMNS)


# -- shell output: open --format env ------------------------------------------------

def env_name(job: str) -> str:
    """Return the part of a job's variable names: upper-cased, every other character `_`."""
    return re.sub(r"[^A-Z0-9_]", "_", job.upper())


def _env_names(jobs) -> dict[str, str]:
    """Return {job: env name}; refuse two jobs that would write the same variables."""
    names: dict[str, str] = {}
    for job in jobs:
        taken = next((other for other, name in names.items() if name == env_name(job)), None)
        if taken is not None:
            raise Failed(f"jobs {taken!r} and {job!r} both become BATCHY_{env_name(job)}_*: --format env cannot "
                         f"tell them apart (rename one, or use --format json)", EXIT_BAD_INPUT)
        names[job] = env_name(job)
    return names


def env_lines(jobs: dict) -> str:
    """Return a batch as `export` lines for `eval "$(batchy open WF --format env)"`."""
    ids = {params.get("batch_id") for params in jobs.values()}
    if len(ids) != 1:
        raise Failed(f"the jobs have different batch ids ({sorted(map(str, ids))}): use --format json")
    values = {"BATCHY_BATCH_ID": ids.pop()}
    for job, name in _env_names(jobs).items():
        values[f"BATCHY_{name}_FROM_DATE"] = jobs[job].get("from_date")
        values[f"BATCHY_{name}_TO_DATE"] = jobs[job].get("to_date")
    if len(jobs) == 1:
        (only,) = jobs.values()
        values["BATCHY_FROM_DATE"], values["BATCHY_TO_DATE"] = only.get("from_date"), only.get("to_date")
    return "".join(f"export {k}={shlex.quote('' if v is None else str(v))}\n" for k, v in values.items())


# -- the commands ---------------------------------------------------------------------

@service_command()
@click.argument("wf", required=False)
@click.option("--all", "every", is_flag=True, help="Every file of the service's cfg folder (exit 8 if one fails).")
@click.option("--reset", is_flag=True, help="Load the file verbatim, discarding runtime state (rewind).")
def load(wf, every, reset):
    """Load or reload cfg/<WF>.yaml, or with --all every workflow file."""
    if bool(wf) == every:
        raise click.UsageError("give a workflow, or --all for every file")
    if not every:
        return _show(_client().load(wf, reset=reset), _state_table)
    answer = _client().load_all(reset=reset)
    _show(answer, _loaded_table)
    if answer.get("failed"):
        failed = "; ".join(f"{name}: {e.get('message')} ({e.get('error')})" for name, e in answer["failed"].items())
        raise Failed(f"{len(answer['failed'])} workflow file(s) failed to load: {failed}", EXIT_BAD_INPUT)


def _loaded_table(answer: dict) -> str:
    rows = [{"workflow": wf, "result": "loaded", "jobs": len(state)} for wf, state in answer["loaded"].items()]
    rows += [{"workflow": wf, "result": "failed", **e} for wf, e in answer["failed"].items()]
    return table(sorted(rows, key=lambda r: r["workflow"]), ["workflow", "result", "jobs", "error", "message"])


@service_command("list")
def list_():
    """List the loaded workflows: jobs, last batch, paused."""
    _show(_client().workflows(), lambda rows: table(rows, ["workflow", "jobs", "last_batch_id", "paused"]))


@service_command()
@click.argument("wf")
@click.option("--purge-history", is_flag=True, help="Delete its batch history too (default: kept).")
def remove(wf, purge_history):
    """Remove WF from the service (its open batch is abandoned); cfg/<WF>.yaml stays."""
    _show(_client().remove(wf, purge_history=purge_history), _pairs)


@service_command()
@click.argument("wf")
def status(wf):
    """Print the state of every job of WF."""
    _show(_client().status(wf), _state_table)


@service_command("open")
@click.argument("wf")
@click.option("--format", "fmt", type=click.Choice(["json", "infa", "env"]), default="json", show_default=True,
              help="infa: a parameter file; env: `export` lines for eval in a shell.")
@click.option("--dry-run", is_flag=True, help="Show what open would return; change nothing.")
@click.option("--idempotency-key", metavar="KEY",
              help="The same KEY again answers the batch the first open opened (a rerun of the script).")
def open_(wf, fmt, dry_run, idempotency_key):
    """Open a batch of WF and print its parameters (e.g. --format infa > wf1.param)."""
    if fmt != "json" and click.get_current_context().meta[_OUTPUT][0] is not None:
        raise click.UsageError(f"--json and --table apply to --format json, not {fmt}")
    client = _client()
    if fmt == "env":
        _env_names(client.status(wf))  # refuse before opening, not after
    answer = client.open(wf, fmt="infa" if fmt == "infa" else "json", dry_run=dry_run,
                         idempotency_key=idempotency_key)
    if fmt == "json":
        _show(answer, _state_table)
    else:
        _text(answer if fmt == "infa" else env_lines(answer))


def _close_options(fn):
    fn = click.option("--job", help="Only this job step.")(fn)
    fn = click.option("--records-processed", type=click.IntRange(min=0), help="Rows the run processed.")(fn)
    fn = click.option("--message", "-m", help="A note stored on the job(s).")(fn)
    fn = click.option("--batch-id", type=int, help="Refuse (409) if this is no longer the current batch.")(fn)
    return click.argument("wf")(fn)


@service_command()
@_close_options
def close(wf, job, records_processed, message, batch_id):
    """Mark the open batch of WF (or one job) successful."""
    _show(_client().close(wf, job=job, records_processed=records_processed, message=message, batch_id=batch_id),
          _state_table)


@service_command()
@_close_options
def fail(wf, job, records_processed, message, batch_id):
    """Mark the open batch of WF (or one job) failed; the next open reruns the same window."""
    _show(_client().fail(wf, job=job, records_processed=records_processed, message=message, batch_id=batch_id),
          _state_table)


def _limit(default: int, maximum: int = 1000):
    return click.option("--limit", default=default, show_default=True, type=click.IntRange(1, maximum))


@service_command()
@click.argument("wf")
@_limit(20)
@click.option("--before", type=int, metavar="BATCH_ID", help="Only batches older than this one (the next page).")
def history(wf, limit, before):
    """Print WF's batches, newest first."""
    _show(_client().history(wf, limit=limit, before=before), lambda rows: table(rows, BATCH_COLUMNS))


@service_command()
@click.argument("wf")
@click.argument("batch_id", type=int)
def batch(wf, batch_id):
    """Print one batch's snapshot: each job's window and outcome."""
    _show(_client().snapshot(wf, batch_id), _state_table)


@service_command()
@click.option("--status", type=click.Choice([s.value for s in BATCH_STATUSES]), help="Only batches in this status.")
@click.option("--workflow", metavar="WF", help="Only this workflow's batches.")
@click.option("--from", "start", metavar="TIME", help="Started at or after TIME (ISO-8601 or unix seconds).")
@click.option("--to", "end", metavar="TIME", help="Started at or before TIME (ISO-8601 or unix seconds).")
@_limit(20)
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many (the next page).")
def batches(status, workflow, start, end, limit, offset):
    """Print the batches of every workflow by start time."""
    _show(_client().batches(status=status, workflow=workflow, start=start, end=end, limit=limit, offset=offset),
          lambda rows: table(rows, ["workflow", *BATCH_COLUMNS]))


@service_command()
@click.argument("wf")
@click.option("--job", help="Only this job step.")
@click.option("--from", "start", metavar="TIME", help="From TIME (ISO-8601 or unix seconds).")
@click.option("--to", "end", metavar="TIME", help="Up to TIME (ISO-8601 or unix seconds).")
def coverage(wf, job, start, end):
    """Print the time each job of WF has loaded successfully, and the holes in it."""
    _show(_client().coverage(wf, job=job, start=start, end=end), _coverage_table)


def _coverage_table(answer: dict) -> str:
    rows = [{"job": job, "kind": kind, "from": span[0], "to": span[1]}
            for job, parts in answer.items()
            for key, kind in (("covered", "covered"), ("holes", "hole")) for span in parts.get(key) or []]
    return table(sorted(rows, key=lambda r: (r["job"], r["from"])), ["job", "kind", "from", "to"])


@service_command("most-recent")
@click.argument("wf")
@click.option("--job", help="Only this job step.")
def most_recent(wf, job):
    """Print the start of WF's (or one job's) last successful batch."""
    _show(_client().most_recent(wf, job=job, full=True), _most_recent_text)


def _most_recent_text(answer: dict) -> str:
    head = {k: answer.get(k) for k in ("workflow", "job", "most_recent", "batch_id")}
    jobs = [{"job": job, **(mark or {})} for job, mark in (answer.get("jobs") or {}).items()]
    return _pairs(head) + "\n\n" + table(jobs, ["job", "batch_id", "start", "end"])


@service_command()
@click.argument("wf")
@_limit(20)
@click.option("--before", metavar="EVENT_ID", help="Only events older than this one (the next page).")
def events(wf, limit, before):
    """Print WF's audit log, newest first."""
    _show(_client().events(wf, limit=limit, before=before),
          lambda rows: table(rows, ["id", "time", "action", "batch_id", "actor", "jobs", "message"]))


@service_command("set-from-date")
@click.argument("wf")
@click.argument("from_date")
@click.option("--job", help="Only this job step.")
@click.option("--force", is_flag=True, help="Even while a batch is open.")
def set_from_date(wf, from_date, job, force):
    """Make the next batch of WF extract from FROM_DATE exactly (ISO-8601)."""
    _show(_client().set_from_date(wf, from_date, job=job, force=force), _state_table)


@service_command()
@click.argument("wf")
@click.argument("batch_id", type=int)
@click.option("--job", help="Only this job step.")
@click.option("--force", is_flag=True, help="Even while a batch is open.")
def rewind(wf, batch_id, job, force):
    """Make the next batch of WF extract from where BATCH_ID started."""
    _show(_client().rewind(wf, batch_id, job=job, force=force), _state_table)


@service_command()
@click.argument("wf", required=False)
@click.option("--message", "-m", default="", help="Why; shown to whoever is refused.")
def pause(wf, message):
    """Refuse new batches of WF (or of every workflow) until resumed."""
    _show(_client().pause(wf, message=message), _pairs)


@service_command()
@click.argument("wf", required=False)
def resume(wf):
    """Allow new batches of WF (or of the whole service) again."""
    _show(_client().resume(wf), _pairs)


@service_command("late")
def late():
    """Print late jobs and stuck batches (expected_by, max_age_hours, max_open_hours)."""
    _show(_client().late(), lambda rows: table(rows, ["workflow", "job", "kind", "since", "reason"])
          if rows else "nothing is late")


PAUSE_COLUMNS = ["scope", "since", "actor", "message"]


@service_command("pause-status")
def pause_status():
    """Print what is paused: the whole service, and each paused workflow."""
    _show(_client().pause_status(), _pause_status_text)


def _pause_status_text(answer: dict) -> str:
    rows = ([answer["service"]] if answer.get("service") else []) + list((answer.get("workflows") or {}).values())
    return table(rows, PAUSE_COLUMNS) if rows else "nothing is paused"


@service_command("pause-history")
@_limit(20)
def pause_history(limit):
    """Print every pause and resume, newest first."""
    _show(_client().pause_history(limit=limit),
          lambda rows: table(rows, ["id", "time", "action", "scope", "actor", "message"]))


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def wait(ctx, args):
    """Wait until workflows succeeded on a date: `waitsy` itself, same arguments and exit codes."""
    from waitsy.cli import main as waitsy_main

    ctx.exit(waitsy_main(list(args)))


def _direct_store():
    from .connections import connect
    from .store import BatchStore

    conf = settings_mod.load()
    if not conf["BATCHY_REDIS_URL"]:
        raise click.ClickException("export and import talk to Redis directly: set BATCHY_REDIS_URL")
    return BatchStore(connect(conf["BATCHY_REDIS_URL"], conf["BATCHY_REDIS_TIMEOUT"]), conf)


@cli.command()
@click.argument("workflows", nargs=-1)
@click.option("--output", "-o", type=click.File("w"), default="-", help="File to write (default: stdout).")
@click.option("--no-history", is_flag=True, help="Only the current state, not the batch snapshots.")
def export(workflows, output, no_history):
    """Dump the state of WORKFLOWS (default: all) from BATCHY_REDIS_URL as JSON."""
    from .errors import BatchyError

    try:
        doc = _direct_store().export(list(workflows) or None, history=not no_history)
    except BatchyError as exc:
        raise click.ClickException(exc.message) from None
    json.dump(doc, output, indent=1)
    output.write("\n")
    click.echo(f"exported {len(doc['workflows'])} workflow(s)", err=True)


@cli.command("import")
@click.argument("source", type=click.File("r"))
@click.option("--replace", is_flag=True, help="Overwrite workflows that already exist.")
def import_(source, replace):
    """Restore workflows from an export file into BATCHY_REDIS_URL."""
    from .errors import BatchyError

    try:
        doc = json.load(source)
        done = _direct_store().import_(doc, replace=replace)
    except ValueError as exc:
        raise click.ClickException(f"not a JSON export file: {exc}") from None
    except BatchyError as exc:
        raise click.ClickException(exc.message) from None
    click.echo(f"imported {len(done)} workflow(s): {', '.join(done)}", err=True)


def main(argv=None) -> int:
    """Run batchy with argv (default sys.argv[1:]); return the exit code (EXIT_*)."""
    try:
        code = cli.main(args=argv, prog_name="batchy", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted!", err=True)
        return EXIT_ERROR
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return code if isinstance(code, int) else EXIT_OK  # an int: ctx.exit(code), as `wait` does


from . import runner  # noqa: E402 - run and backfill, which reuse this module's helpers

for _command in runner.COMMANDS:
    cli.add_command(_command)


if __name__ == "__main__":
    sys.exit(main())
