"""The batch lifecycle a script drives: load, list, remove, status, open, close, fail, wait."""
from __future__ import annotations

import click

from ..client import Batchy, ServiceError
from .output import (EXIT_BAD_INPUT, Failed, env_failure_lines, env_lines, env_names, json_flag, pairs,
                     service_command, show, show_text, state_table, table)


@service_command()
@click.argument("wf", required=False)
@click.option("--all", "every", is_flag=True, help="Every file of the service's cfg folder (exit 8 if one fails).")
@click.option("--reset", is_flag=True, help="Load the file verbatim, discarding runtime state (rewind).")
def load(wf, every, reset):
    """Load or reload cfg/<WF>.yaml, or with --all every workflow file."""
    if bool(wf) == every:
        raise click.UsageError("give a workflow, or --all for every file")
    if not every:
        return show(Batchy().load(wf, reset=reset), state_table)
    answer = Batchy().load_all(reset=reset)
    show(answer, _loaded_table)
    if answer.get("failed"):
        failed = "; ".join(f"{name}: {e.get('message')} ({e.get('error')})" for name, e in answer["failed"].items())
        raise Failed(f"{len(answer['failed'])} workflow file(s) failed to load: {failed}", EXIT_BAD_INPUT)


def _loaded_table(answer: dict) -> str:
    rows = [{"workflow": wf, "result": "loaded", "jobs": len(state)} for wf, state in answer["loaded"].items()]
    rows += [{"workflow": wf, "result": "failed", **e} for wf, e in answer["failed"].items()]
    return table(sorted(rows, key=lambda r: r["workflow"]), ["workflow", "result", "jobs", "error", "message"])


@service_command("list")
@click.option("--limit", type=click.IntRange(1, 10000), help="Only this many workflows (default: every one).")
@click.option("--offset", type=click.IntRange(0), default=0, help="Skip this many first (name order).")
def list_(limit, offset):
    """List the loaded workflows in name order: jobs, last batch, paused."""
    if limit is None and not offset:
        rows = Batchy().workflows()
    else:
        rows = Batchy().workflows_page(limit=limit, offset=offset)["workflows"]
    show(rows, lambda rows: table(rows, ["workflow", "jobs", "last_batch_id", "paused"]))


@service_command()
@click.argument("wf")
@click.option("--purge-history", is_flag=True, help="Delete its batch history too (default: kept).")
def remove(wf, purge_history):
    """Remove WF from the service (its open batch is abandoned); cfg/<WF>.yaml stays."""
    show(Batchy().remove(wf, purge_history=purge_history), pairs)


@service_command()
@click.argument("wf")
def status(wf):
    """Print the state of every job of WF."""
    show(Batchy().status(wf), state_table)


@service_command("open")
@click.argument("wf")
@click.option("--format", "fmt", type=click.Choice(["json", "infa", "env"]), default="json", show_default=True,
              help="infa: a parameter file; env: `export` lines for eval in a shell.")
@click.option("--dry-run", is_flag=True, help="Show what open would return; change nothing.")
@click.option("--idempotency-key", metavar="KEY",
              help="The same KEY again answers the batch the first open opened (a rerun of the script).")
@click.option("--job", "jobs", multiple=True, metavar="JOB",
              help="Open only this job (repeatable): a job on its own schedule; the others are left as they are.")
def open_(wf, fmt, dry_run, idempotency_key, jobs):
    """Open a batch of WF (or of --job) and print its parameters (e.g. --format infa > wf1.param)."""
    if fmt != "json" and json_flag() is not None:
        raise click.UsageError(f"--json and --table apply to --format json, not {fmt}")
    client = Batchy()
    if fmt == "env":
        return _open_env(client, wf, dry_run, idempotency_key, list(jobs))
    answer = client.open(wf, fmt="infa" if fmt == "infa" else "json", dry_run=dry_run,
                         idempotency_key=idempotency_key, job=list(jobs) or None)
    if fmt == "json":
        show(answer, state_table)
    else:
        show_text(answer)


def _open_env(client: Batchy, wf: str, dry_run: bool, idempotency_key: str | None, only: list[str]) -> None:
    """Print a batch as `export` lines; when the open fails, lines that make the `eval` fail."""
    jobs = None
    try:
        jobs = client.status(wf)
        env_names(jobs)  # refuse before opening, not after
        answer = client.open(wf, dry_run=dry_run, idempotency_key=idempotency_key, job=only or None)
        # With --job, that job's batch only: the other jobs are not this run's.
        text = env_lines({name: answer[name] for name in only} if only else answer)
    except (ServiceError, OSError, Failed):  # every failure makes the eval fail too
        _echo_unchecked(env_failure_lines(jobs))
        raise
    show_text(text)


def _echo_unchecked(text: str) -> None:
    """Print text to stdout even with --quiet: it is for `eval`, not for people."""
    click.echo(text, nl=False)


def _close_options(fn):
    fn = click.option("--job", help="Only this job step.")(fn)
    fn = click.option("--records-processed", type=click.IntRange(min=0), help="Rows the run processed.")(fn)
    fn = click.option("--message", "-m", help="A note stored on the job(s).")(fn)
    fn = click.option("--batch-id", type=int, help="Refuse (409) if this is no longer the current batch.")(fn)
    return click.argument("wf")(fn)


def attest_options(fn):
    """Add --checksum, --dq and --dq-message: what a successful close attests of its load."""
    fn = click.option("--dq-message", help="Why, with --dq.")(fn)
    fn = click.option("--dq", type=click.Choice(["pass", "fail"]),
                      help="Data quality verdict: fail moves the watermark but leaves the window a hole.")(fn)
    return click.option("--checksum", help="The loaded data's checksum (at most 128 characters), kept in history.")(fn)


@service_command()
@_close_options
@attest_options
def close(wf, job, records_processed, message, batch_id, checksum, dq, dq_message):
    """Mark the open batch of WF (or one job) successful."""
    show(Batchy().close(wf, job=job, records_processed=records_processed, message=message, batch_id=batch_id,
                        checksum=checksum, dq=dq, dq_message=dq_message), state_table)


@service_command()
@_close_options
def fail(wf, job, records_processed, message, batch_id):
    """Mark the open batch of WF (or one job) failed; the next open reruns the same window."""
    show(Batchy().fail(wf, job=job, records_processed=records_processed, message=message, batch_id=batch_id),
         state_table)


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def wait(ctx, args):
    """Wait until workflows succeeded on a date: `waitsy` itself, same arguments and exit codes."""
    from waitsy.cli import main as waitsy_main

    ctx.exit(waitsy_main(list(args)))


COMMANDS = [load, list_, remove, status, open_, close, fail, wait]
