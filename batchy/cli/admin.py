"""Steering the service: set-from-date, rewind, pause, resume, pause-status, pause-history."""
from __future__ import annotations

import click

from ..client import Batchy
from .output import limit_option, pairs, service_command, show, table

PAUSE_COLUMNS = ["scope", "since", "actor", "message"]
# What set-from-date and rewind change: where the next batch of each job starts.
WATERMARK_COLUMNS = ["job", "status", "batch_id", "from_date", "to_date", "next_from_date"]


def _watermark_table(state: dict) -> str:
    return table([{"job": job, **fields} for job, fields in state.items()], WATERMARK_COLUMNS)


@service_command("set-from-date")
@click.argument("wf")
@click.argument("from_date")
@click.option("--job", help="Only this job step.")
@click.option("--force", is_flag=True, help="Even while a batch is open.")
def set_from_date(wf, from_date, job, force):
    """Make the next batch of WF extract from FROM_DATE exactly (ISO-8601)."""
    show(Batchy().set_from_date(wf, from_date, job=job, force=force), _watermark_table)


@service_command()
@click.argument("wf")
@click.option("--from", "start", required=True, help="Start of the range (ISO-8601; no offset: each job's zone).")
@click.option("--to", "end", required=True, help="End of the range (exclusive).")
@click.option("--job", "jobs", multiple=True, metavar="JOB", help="Only this job (repeat for several; default: every job).")
@click.option("--reason", help="Why, for the audit log.")
def invalidate(wf, start, end, jobs, reason):
    """Late data: mark [--from, --to) of WF's coverage dirty, a hole until a window covers it again."""
    show(Batchy().invalidate(wf, start, end, jobs=list(jobs) or None, reason=reason), _watermark_table)


@service_command()
@click.argument("wf")
@click.argument("batch_id", type=int)
@click.option("--job", help="Only this job step.")
@click.option("--force", is_flag=True, help="Even while a batch is open.")
def rewind(wf, batch_id, job, force):
    """Make the next batch of WF extract from where BATCH_ID started."""
    show(Batchy().rewind(wf, batch_id, job=job, force=force), _watermark_table)


@service_command()
@click.argument("wf", required=False)
@click.option("--message", "-m", default="", help="Why; shown to whoever is refused.")
def pause(wf, message):
    """Refuse new batches of WF (or of every workflow) until resumed."""
    show(Batchy().pause(wf, message=message), pairs)


@service_command()
@click.argument("wf", required=False)
def resume(wf):
    """Allow new batches of WF (or of the whole service) again."""
    show(Batchy().resume(wf), pairs)


@service_command("pause-status")
def pause_status():
    """Print what is paused: the whole service, and each paused workflow."""
    show(Batchy().pause_status(), _pause_status_text)


def _pause_status_text(answer: dict) -> str:
    rows = ([answer["service"]] if answer.get("service") else []) + list((answer.get("workflows") or {}).values())
    return table(rows, PAUSE_COLUMNS) if rows else "nothing is paused"


@service_command("pause-history")
@limit_option(20)
def pause_history(limit):
    """Print every pause and resume, newest first."""
    show(Batchy().pause_history(limit=limit),
         lambda rows: table(rows, ["id", "time", "action", "scope", "actor", "message"]))


COMMANDS = [set_from_date, rewind, invalidate, pause, resume, pause_status, pause_history]
