"""`batchy run`: open a batch, run a command with its window in the environment, close or fail it.

The environment of a run is shared with `batchy backfill run` (backfill_run.py), which does
the same per chunk; so is the running of the command (process.py).
"""
from __future__ import annotations

import os
import re
import time
import uuid

import click

from ..client import Batchy, ServiceError
from .output import (EXIT_BAD_INPUT, EXIT_NOT_CAUGHT_UP, EXIT_OUTAGE, PARAMS_VARIABLE, Failed, env_name, params_env,
                     service_errors)
from .process import (DEFAULT_GRACE_SECONDS, DEFAULT_OUTAGE_SECONDS, TAIL_CHARS, Outage, Stop, complain, execute,
                      persist)

# Variables a run sets: the ones inherited from an enclosing run are dropped, never passed on stale.
_WINDOW_VARIABLE = re.compile(r"BATCHY_((\w+_)?(FROM_DATE|TO_DATE)|BATCH_ID|BACKFILL_ID|CHUNK|ATTEMPT|JOB|WORKFLOW|"
                              r"RECORDS_FILE)")


# -- the environment of a run ------------------------------------------------------------

def window_env(wf: str, jobs: dict[str, dict], job: str | None = None) -> dict[str, str]:
    """Return the window variables of a batch: BATCHY_<JOB>_FROM_DATE/_TO_DATE of each job, and
    BATCHY_FROM_DATE/_TO_DATE of job (or of the only job)."""
    env = {"BATCHY_WORKFLOW": wf}
    seen: dict[str, str] = {}
    for name, params in jobs.items():
        part = env_name(name)
        if part in seen:
            raise Failed(f"jobs {seen[part]!r} and {name!r} both become BATCHY_{part}_*: rename one", EXIT_BAD_INPUT)
        seen[part] = name
        env[f"BATCHY_{part}_FROM_DATE"] = params.get("from_date") or ""
        env[f"BATCHY_{part}_TO_DATE"] = params.get("to_date") or ""
    chosen = job if job is not None else (next(iter(jobs)) if len(jobs) == 1 else None)
    if chosen is not None:
        env["BATCHY_FROM_DATE"] = jobs[chosen].get("from_date") or ""
        env["BATCHY_TO_DATE"] = jobs[chosen].get("to_date") or ""
    return env


def base_env() -> dict[str, str]:
    """Return our environment without the window and parameter variables of an enclosing run."""
    inherited = set(os.environ.get(PARAMS_VARIABLE, "").split(",")) | {PARAMS_VARIABLE}
    return {k: v for k, v in os.environ.items() if not _WINDOW_VARIABLE.fullmatch(k) and k not in inherited}


def command_env(window: dict[str, str], params: dict[str, str]) -> dict[str, str]:
    """Return the environment of a command: ours (less an enclosing run's), the window, the parameters."""
    return {**base_env(), **window, **params, PARAMS_VARIABLE: ",".join(params)}


# -- batchy run --------------------------------------------------------------------------

def run_batches(client: Batchy, wf: str, command: list[str], *, job: str | None = None,
                until_caught_up: bool = False, skip_empty: bool = False, max_runs: int = 1000,
                grace: float = DEFAULT_GRACE_SECONDS, outage_seconds: float = DEFAULT_OUTAGE_SECONDS,
                leave_children: bool = False) -> int:
    """Open a batch of wf, run command with its window, close or fail it; return the command's exit code.

    With until_caught_up, again while a job run answers caught_up false (a window policy
    hands out a long outage in pieces), stopping at the first failure. A SIGTERM, SIGINT or
    SIGHUP is passed on to the command (Stop): its batch fails naming the signal, and the
    run exits 128 + its number. The service's calls are retried across an outage of up to
    outage_seconds (EXIT_OUTAGE after that).
    """
    with Stop(grace) as stop:
        try:
            return _run_batches(client, wf, command, stop, job=job, until_caught_up=until_caught_up,
                                skip_empty=skip_empty, max_runs=max_runs, outage_seconds=outage_seconds,
                                leave_children=leave_children)
        except Outage as exc:
            complain(f"batchy run: {wf}: {exc}")
            return stop.exit_code if stop.signum is not None else EXIT_OUTAGE


def _run_batches(client: Batchy, wf: str, command: list[str], stop: Stop, *, job, until_caught_up, skip_empty,
                 max_runs, outage_seconds, leave_children) -> int:
    def retried(call, what):
        return persist(call, f"{what} of {wf}", outage_seconds, stop=stop)

    if job is not None and job not in retried(lambda: client.status(wf), "status"):
        raise ServiceError(404, "job_not_found", f"workflow {wf!r} has no job {job!r}")
    last_ends = None
    for _ in range(max_runs):
        if stop.signum is not None:
            complain(f"batchy run: {wf}: stopped by {stop.name} before opening a batch")
            return stop.exit_code
        # The client sends one Idempotency-Key for every attempt: a retried open is the same batch.
        key = uuid.uuid4().hex
        # --job: a batch of that job only; the workflow's other jobs (maybe running now, each
        # on its own schedule) are left as they are.
        jobs = retried(lambda: client.open(wf, idempotency_key=key, job=job), "the open")
        ran = [job] if job is not None else list(jobs)
        batch_id = jobs[ran[0]].get("batch_id")
        spans = {name: (jobs[name].get("from_date"), jobs[name].get("to_date")) for name in ran}
        shown = ", ".join(f"{name} [{low}, {high})" for name, (low, high) in spans.items())
        empty = all(low == high for low, high in spans.values())

        def finish(outcome: str, **fields):
            call = client.close if outcome == "success" else client.fail
            return retried(lambda: call(wf, job=job, batch_id=batch_id, **fields), f"the {outcome} of batch {batch_id}")

        if stop.signum is not None:  # the signal came during the open: the batch is ours to fail
            finish("failed", message=f"batchy run stopped by {stop.name} before the command started")
            complain(f"batchy run: {wf} batch {batch_id}: {shown}: stopped by {stop.name} before the command started")
            return stop.exit_code
        if empty and skip_empty:
            finish("success", message="empty window: not run (--skip-empty)")
            complain(f"batchy run: {wf} batch {batch_id}: {shown}: empty window, not run (--skip-empty)")
        else:
            opened = {name: jobs[name] for name in ran}  # with --job, the other jobs' batches are not ours
            window = {**window_env(wf, opened, job), "BATCHY_BATCH_ID": str(batch_id)}
            env = command_env(window, params_env(opened, job, taken=window))
            ended: list[float] = []  # when the command exited: a signal after that does not fail it
            try:
                code, tail, records, note, attested = execute(command, env, stop.started,
                                                              leave_children=leave_children, grace=stop.grace,
                                                              exited=lambda proc: ended.append(time.monotonic()))
            finally:
                stop.running.clear()
            if stop.when is not None and (not ended or stop.when <= ended[0]):  # it came while the command ran
                why = (f"stopped by {stop.name} (batchy run passed it on to the command, exit code {code})"
                       + (f": {tail.strip()}" if tail.strip() else ""))
                finish("failed", message=why[-TAIL_CHARS:])
                complain(f"batchy run: {wf} batch {batch_id}: {shown}: failed: stopped by {stop.name}")
                return stop.exit_code
            if code != 0:
                finish("failed", message=tail.strip() or f"exit code {code}")
                complain(f"batchy run: {wf} batch {batch_id}: {shown}: failed (exit code {code})")
                return stop.exit_code if stop.signum is not None else code
            try:
                finish("success", records_processed=records, message=note, **attested)
            except ServiceError as exc:
                if exc.status != 400 or exc.body.get("parameter") != "records_processed":
                    raise
                note = f"records_processed {records} refused ({exc.message}): not sent"
                complain(f"batchy: {note}")
                records = None
                finish("success", message=note, **attested)
            done = "" if records is None else f" ({records} records)"
            complain(f"batchy run: {wf} batch {batch_id}: {shown}: success{done}")
            if stop.signum is not None:  # a signal after the command exited: its outcome is recorded, then stop
                complain(f"batchy run: {wf}: stopped by {stop.name} after the command exited")
                return stop.exit_code
        behind = [name for name in ran if jobs[name].get("caught_up") is False]
        if not until_caught_up or not behind:
            return 0
        if stop.signum is not None:
            complain(f"batchy run: {wf}: stopped by {stop.name} before the next batch")
            return stop.exit_code
        ends = [high for _, high in spans.values()]
        if ends == last_ends:
            complain(f"batchy run: {wf}: the window of {', '.join(behind)} did not move on (still ending at "
                 f"{', '.join(ends)}): stopping rather than looping")
            return EXIT_NOT_CAUGHT_UP
        last_ends = ends
    complain(f"batchy run: {wf}: still not caught up after --max-runs {max_runs} batches")
    return EXIT_NOT_CAUGHT_UP


def runner_options(fn):
    """Add --grace-seconds, --outage-seconds and --leave-children (both runners)."""
    fn = click.option("--leave-children", is_flag=True,
                      help="Leave what COMMAND started in the background running when it exits (default: its "
                           "session is stopped: SIGTERM, then SIGKILL after --grace-seconds).")(fn)
    fn = click.option("--outage-seconds", type=click.FloatRange(min=0), default=DEFAULT_OUTAGE_SECONDS,
                      show_default=True, envvar="BATCHY_RUN_OUTAGE_SECONDS",
                      help="Retry the service across an outage (no answer, or 503) this long; then exit "
                           f"{EXIT_OUTAGE} [env BATCHY_RUN_OUTAGE_SECONDS].")(fn)
    return click.option("--grace-seconds", type=click.FloatRange(min=0), default=DEFAULT_GRACE_SECONDS,
                        show_default=True, envvar="BATCHY_RUN_GRACE_SECONDS",
                        help="After passing SIGTERM/SIGINT/SIGHUP on to COMMAND's session, SIGKILL it this "
                             "much later [env BATCHY_RUN_GRACE_SECONDS].")(fn)


@click.command("run")
@click.argument("wf")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--job", help="Only this job step, on its own schedule: only it is opened (its window is "
                            "BATCHY_FROM_DATE / BATCHY_TO_DATE) and closed; other jobs are left as they are.")
@click.option("--until-caught-up", is_flag=True,
              help="Run batch after batch while the answer says caught_up: false (a window policy); stop at a failure.")
@click.option("--skip-empty", is_flag=True, help="Do not run the command for an empty window (from = to); close it.")
@click.option("--max-runs", type=click.IntRange(min=1), default=1000, show_default=True,
              help=f"With --until-caught-up: at most this many batches; still behind after them: exit "
                   f"{EXIT_NOT_CAUGHT_UP}.")
@runner_options
@click.pass_context
def run(ctx, wf, command, job, until_caught_up, skip_empty, max_runs, grace_seconds, outage_seconds,
        leave_children):
    """Open a batch of WF, run COMMAND (after --) with its window in the environment, close or fail it.

    \b
    Synopsis: batchy run WF [--job J] [--until-caught-up [--max-runs N]] [--skip-empty]
              [--grace-seconds S] [--outage-seconds S] [--leave-children] -- COMMAND...
    Environment: BATCHY_WORKFLOW, BATCHY_BATCH_ID, BATCHY_<JOB>_FROM_DATE and _TO_DATE
    of each job, BATCHY_FROM_DATE and BATCHY_TO_DATE (one job, or --job), each job's
    parameters as BATCHY_<JOB>_<PARAM> (and BATCHY_<PARAM>), and BATCHY_RECORDS_FILE:
    write the number of rows loaded into it.
    Exit code: COMMAND's; 128+N when signal N (TERM, INT, HUP) stopped the run (the
    batch fails); 9 still not caught up (--max-runs); 75 the service stayed unreachable
    past --outage-seconds (docs/backfills.md#signals-outages-and-exit-codes).
    """
    with service_errors():
        code = run_batches(Batchy(retries=0), wf, list(command), job=job, until_caught_up=until_caught_up,
                           skip_empty=skip_empty, max_runs=max_runs, grace=grace_seconds,
                           outage_seconds=outage_seconds, leave_children=leave_children)
    ctx.exit(code)


COMMANDS = [run]
