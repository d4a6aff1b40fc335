"""`batchy backfill`: reload a past range of a workflow in chunks (create, status, list, cancel, lease, close,
fail, run)."""
from __future__ import annotations

import json
import sys

import click

from ..client import BackfillClient, Batchy
from .backfill_run import finished, run_backfill
from .commands import attest_options
from .output import output_options, service_errors, table
from .run import runner_options


def _show(data, human, as_json: bool | None, quiet: bool) -> None:
    if quiet:
        return
    if as_json is None:
        as_json = not sys.stdout.isatty()
    click.echo(json.dumps(data, indent=2) if as_json else human(data))


def _backfill_text(answer: dict) -> str:
    counts = answer["progress"]
    head = (f"backfill {answer['backfill_id']} of {answer['workflow']}: {answer['status']}, "
            f"{finished(counts)}/{counts['chunks']} done ({counts['success']} success, {counts['failed']} failed, "
            f"{counts['cancelled']} cancelled, {counts['leased']} leased, {counts['pending']} pending)")
    if "chunks" not in answer:
        return head
    columns = ["chunk", "job", "from_date", "to_date", "status", "attempts", "records_processed", "message"]
    return head + "\n" + table(answer["chunks"], columns)


def _fields_text(answer: dict) -> str:
    return "\n".join(f"{key}: {'-' if value is None else value}" for key, value in answer.items()
                     if not isinstance(value, dict))


def _list_text(rows: list[dict]) -> str:
    rows = [{**r, "done": f"{finished(r['progress'])}/{r['progress']['chunks']}"} for r in rows]
    return table(rows, ["backfill_id", "status", "from", "to", "done", "created"])


@click.group("backfill")
def backfill_group():
    """Reload a past range of a workflow in chunks, beside its watermark (docs/backfills.md)."""


@backfill_group.command("create")
@click.argument("wf")
@click.option("--from", "start", required=True, metavar="TIME", help="Start (ISO-8601; no offset: each job's zone).")
@click.option("--to", "end", required=True, metavar="TIME", help="End, excluded; not later than now.")
@click.option("--job", "jobs", multiple=True, help="Only this job (repeatable; default every job).")
@click.option("--batch-size", type=click.Choice(["hour", "day", "week", "month"]),
              help="Chunks of whole units in each job's timezone (default: the job's own batch_size, else day).")
@click.option("--chunk-hours", type=float, help="Chunks this many hours long instead.")
@click.option("--max-attempts", type=click.IntRange(1, 100), help="Runs of a chunk before it stays failed [3].")
@output_options
def backfill_create(wf, start, end, jobs, batch_size, chunk_hours, max_attempts, as_json, quiet):
    """Create a backfill of WF from --from to --to; print it with its chunks."""
    with service_errors():
        answer = BackfillClient(Batchy()).create(wf, start, end, jobs=list(jobs), batch_size=batch_size,
                                                 chunk_hours=chunk_hours, max_attempts=max_attempts)
    _show(answer, _backfill_text, as_json, quiet)


@backfill_group.command("status")
@click.argument("wf")
@click.argument("backfill_id", type=int)
@output_options
def backfill_status(wf, backfill_id, as_json, quiet):
    """Print a backfill's progress and every chunk."""
    with service_errors():
        answer = BackfillClient(Batchy()).status(wf, backfill_id)
    _show(answer, _backfill_text, as_json, quiet)


@backfill_group.command("list")
@click.argument("wf")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@output_options
def backfill_list(wf, limit, as_json, quiet):
    """Print WF's backfills, newest first."""
    with service_errors():
        answer = BackfillClient(Batchy()).list(wf, limit)
    _show(answer, _list_text, as_json, quiet)


@backfill_group.command("cancel")
@click.argument("wf")
@click.argument("backfill_id", type=int)
@output_options
def backfill_cancel(wf, backfill_id, as_json, quiet):
    """Cancel a backfill: its pending chunks are cancelled; leased ones may still close."""
    with service_errors():
        answer = BackfillClient(Batchy()).cancel(wf, backfill_id)
    _show(answer, _backfill_text, as_json, quiet)


@backfill_group.command("lease")
@click.argument("wf")
@click.argument("backfill_id", type=int)
@click.option("--lease-seconds", type=click.FloatRange(min=0, min_open=True), help="How long to hold it [3600].")
@output_options
def backfill_lease(wf, backfill_id, lease_seconds, as_json, quiet):
    """Lease the next chunk due and print it; print nothing when none is due now (a worker of your own)."""
    with service_errors():
        answer = BackfillClient(Batchy()).lease(wf, backfill_id, lease_seconds)
    if answer is not None:
        _show(answer, _fields_text, as_json, quiet)


def lease_token_option(fn):
    return click.option("--lease-token", metavar="TOKEN",
                        help="The lease_token the lease answered (a missing or wrong one: exit 4, "
                             "wrong_lease_token).")(fn)


def _finish_options(fn):
    fn = click.option("--message", "-m", help="A note kept on the chunk (a failure's reason).")(fn)
    fn = click.option("--records-processed", type=click.IntRange(min=0), help="Rows the chunk loaded.")(fn)
    fn = lease_token_option(fn)
    fn = click.option("--attempt", type=click.IntRange(min=1), required=True,
                      help="The attempt the lease answered.")(fn)
    fn = click.option("--chunk", type=click.IntRange(min=0), required=True, help="The chunk the lease answered.")(fn)
    fn = click.argument("backfill_id", type=int)(fn)
    return click.argument("wf")(output_options(fn))


@backfill_group.command("renew")
@click.argument("wf")
@click.argument("backfill_id", type=int)
@click.option("--chunk", type=click.IntRange(min=0), required=True, help="The chunk the lease answered.")
@click.option("--attempt", type=click.IntRange(min=1), required=True, help="The attempt the lease answered.")
@lease_token_option
@click.option("--lease-seconds", type=click.FloatRange(min=0, min_open=True), help="From now on [3600].")
@output_options
def backfill_renew(wf, backfill_id, chunk, attempt, lease_token, lease_seconds, as_json, quiet):
    """Renew a leased chunk's lease while its work goes on (a worker of your own's heartbeat)."""
    with service_errors():
        answer = BackfillClient(Batchy()).renew(wf, backfill_id, chunk, attempt, lease_seconds,
                                                lease_token=lease_token)
    _show(answer, _fields_text, as_json, quiet)


@backfill_group.command("close")
@_finish_options
@attest_options
def backfill_close(wf, backfill_id, chunk, attempt, lease_token, records_processed, message, as_json, quiet,
                   checksum, dq, dq_message):
    """Mark a leased chunk's attempt successful (its window goes into the coverage ledger; with --dq fail,
    as a quality failure)."""
    with service_errors():
        answer = BackfillClient(Batchy()).finish(wf, backfill_id, chunk, attempt, "success",
                                                 records_processed=records_processed, message=message,
                                                 lease_token=lease_token, checksum=checksum, dq=dq,
                                                 dq_message=dq_message)
    _show(answer, _fields_text, as_json, quiet)


@backfill_group.command("fail")
@_finish_options
def backfill_fail(wf, backfill_id, chunk, attempt, lease_token, records_processed, message, as_json, quiet):
    """Mark a leased chunk's attempt failed: it is due again until max_attempts are used."""
    with service_errors():
        answer = BackfillClient(Batchy()).finish(wf, backfill_id, chunk, attempt, "failed",
                                                 records_processed=records_processed, message=message,
                                                 lease_token=lease_token)
    _show(answer, _fields_text, as_json, quiet)


@backfill_group.command("run")
@click.argument("wf")
@click.argument("backfill_id", type=int)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--parallel", type=click.IntRange(1, 64), default=1, show_default=True, help="Chunks run at once.")
@click.option("--lease-seconds", type=click.FloatRange(min=0, min_open=True),
              help="How long a chunk is held without news from its worker [3600]; renewed every third of it "
                   "while the command runs, so a chunk may run longer.")
@click.option("--chunk-timeout", type=click.FloatRange(min=0, min_open=True),
              help="Stop a chunk's command (its whole session) after this many seconds: its attempt fails "
                   "(default: no limit).")
@runner_options
@click.pass_context
def backfill_run(ctx, wf, backfill_id, command, parallel, lease_seconds, chunk_timeout, grace_seconds,
                 outage_seconds, leave_children):
    """Run COMMAND (after --) on each chunk of a backfill; exit 0 when every chunk succeeded, else 1.

    \b
    Environment per chunk: BATCHY_WORKFLOW, BATCHY_BACKFILL_ID, BATCHY_CHUNK,
    BATCHY_ATTEMPT, BATCHY_JOB, BATCHY_FROM_DATE, BATCHY_TO_DATE, BATCHY_<JOB>_FROM_DATE
    and _TO_DATE, BATCHY_RECORDS_FILE.
    Exit code: 0 every chunk succeeded, 1 otherwise; 128+N when signal N (TERM, INT,
    HUP) stopped the run (each running command is stopped, its attempt failed); 75 the
    service stayed unreachable past --outage-seconds
    (docs/backfills.md#signals-outages-and-exit-codes).
    """
    with service_errors():
        code = run_backfill(BackfillClient(Batchy(retries=0)), wf, backfill_id, list(command), parallel=parallel,
                            lease_seconds=lease_seconds, chunk_timeout=chunk_timeout, grace=grace_seconds,
                            outage_seconds=outage_seconds, leave_children=leave_children)
    ctx.exit(code)


COMMANDS = [backfill_group]
