"""What the service knows about past batches: history, batch, batches, coverage, most-recent, events, late."""
from __future__ import annotations

import click

from ..client import Batchy
from ..rules.jobs import BATCH_STATUSES
from .output import BATCH_COLUMNS, limit_option, pairs, service_command, show, state_table, table


@service_command()
@click.argument("wf")
@limit_option(20)
@click.option("--before", type=int, metavar="BATCH_ID", help="Only batches older than this one (the next page).")
def history(wf, limit, before):
    """Print WF's batches, newest first."""
    show(Batchy().history(wf, limit=limit, before=before), lambda rows: table(rows, BATCH_COLUMNS))


@service_command()
@click.argument("wf")
@click.argument("batch_id", type=int)
def batch(wf, batch_id):
    """Print one batch's snapshot: each job's window and outcome."""
    show(Batchy().snapshot(wf, batch_id), state_table)


@service_command()
@click.option("--status", type=click.Choice([s.value for s in BATCH_STATUSES]), help="Only batches in this status.")
@click.option("--workflow", metavar="WF", help="Only this workflow's batches.")
@click.option("--from", "start", metavar="TIME", help="Started at or after TIME (ISO-8601 or unix seconds).")
@click.option("--to", "end", metavar="TIME", help="Started at or before TIME (ISO-8601 or unix seconds).")
@limit_option(20)
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many (the next page).")
def batches(status, workflow, start, end, limit, offset):
    """Print the batches of every workflow by start time."""
    show(Batchy().batches(status=status, workflow=workflow, start=start, end=end, limit=limit, offset=offset),
         lambda rows: table(rows, ["workflow", *BATCH_COLUMNS]))


@service_command()
@click.argument("wf")
@click.option("--job", help="Only this job step.")
@click.option("--from", "start", metavar="TIME",
              help="From TIME (ISO-8601 or unix seconds; without an offset, in each job's timezone).")
@click.option("--to", "end", metavar="TIME", help="Up to TIME (as --from).")
def coverage(wf, job, start, end):
    """Print the time each job of WF has loaded successfully, and the holes in it."""
    show(Batchy().coverage(wf, job=job, start=start, end=end), _coverage_table)


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
    show(Batchy().most_recent(wf, job=job, full=True), _most_recent_text)


def _most_recent_text(answer: dict) -> str:
    head = {k: answer.get(k) for k in ("workflow", "job", "most_recent", "batch_id")}
    jobs = [{"job": job, **(mark or {})} for job, mark in (answer.get("jobs") or {}).items()]
    return pairs(head) + "\n\n" + table(jobs, ["job", "batch_id", "start", "end"])


@service_command()
@click.argument("wf")
@limit_option(20)
@click.option("--before", metavar="EVENT_ID", help="Only events older than this one (the next page).")
def events(wf, limit, before):
    """Print WF's audit log, newest first."""
    show(Batchy().events(wf, limit=limit, before=before),
         lambda rows: table(rows, ["id", "time", "action", "batch_id", "actor", "jobs", "message"]))


@service_command("late")
def late():
    """Print late jobs and stuck batches (expected_by, max_age_hours, max_open_hours)."""
    show(Batchy().late(), lambda rows: table(rows, ["workflow", "job", "kind", "since", "reason"])
         if rows else "nothing is late")


COMMANDS = [history, batch, batches, coverage, most_recent, events, late]
