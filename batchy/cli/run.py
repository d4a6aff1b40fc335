"""`batchy run`: open a batch, run a command with its window in the environment, close or fail it.

The environment of a run and the running of the command (execute) are shared with
`batchy backfill run` (backfill_run.py), which does the same per chunk.
"""
from __future__ import annotations

import codecs
import os
import re
import signal
import subprocess
import sys
import tempfile

import click

from ..client import Batchy, ServiceError
from .output import EXIT_BAD_INPUT, Failed, env_name, service_errors

TAIL_CHARS = 2000  # of the command's stderr, sent as the failure's message
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
    """Return our environment without the window variables of an enclosing run."""
    return {k: v for k, v in os.environ.items() if not _WINDOW_VARIABLE.fullmatch(k)}


def execute(command: list[str], env: dict[str, str], started=None) -> tuple[int, str, int | None]:
    """Run command with env and a BATCHY_RECORDS_FILE; return (exit code, stderr tail, records written).

    Its stderr still reaches ours as it comes; stdout is ours. A command killed by a
    signal exits 128 + the signal's number, as in a shell. started(proc), when given, is
    called once the command runs; the command then runs in a session of its own, so the
    caller can stop it with everything it started (stop_command), and the terminal's
    Ctrl-C reaches the caller only.
    """
    fd, path = tempfile.mkstemp(prefix="batchy-records-")
    os.close(fd)
    try:
        try:
            proc = subprocess.Popen(command, env={**env, "BATCHY_RECORDS_FILE": path}, stderr=subprocess.PIPE,
                                    start_new_session=started is not None)
        except OSError as exc:
            message = f"batchy: cannot run {command[0]!r}: {exc.strerror or exc}"
            _err(message)
            return 127, message, None
        if started is not None:
            started(proc)
        tail = _pass_through(proc.stderr)
        code = proc.wait()
        return (128 - code if code < 0 else code), tail, _records(path)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def stop_command(proc) -> None:
    """SIGTERM a command execute() started in a session of its own, and all it started: a
    shell's children too, which would otherwise hold its stderr open after it ended."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass  # it ended already


def _pass_through(stream) -> str:
    """Copy a child's stderr to ours as it comes; return its last TAIL_CHARS characters."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tail = ""
    for block in iter(lambda: stream.read1(65536), b""):
        text = decoder.decode(block)
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
        except (OSError, ValueError):  # our stderr is gone: keep the tail anyway
            pass
        tail = (tail + text)[-TAIL_CHARS:]
    stream.close()
    return (tail + decoder.decode(b"", final=True))[-TAIL_CHARS:]


def _records(path: str) -> int | None:
    """Return the whole number the command wrote into its records file, or None."""
    try:
        with open(path) as fh:
            text = fh.read(100).strip()
    except OSError:
        return None
    if not text:
        return None
    if text.isascii() and text.isdigit():
        return int(text)
    _err(f"batchy: BATCHY_RECORDS_FILE holds {text[:40]!r}, not a whole number: records_processed not sent")
    return None


def _err(message: str) -> None:
    click.echo(message, err=True)


# -- batchy run --------------------------------------------------------------------------

def run_batches(client: Batchy, wf: str, command: list[str], *, job: str | None = None,
                until_caught_up: bool = False, skip_empty: bool = False, max_runs: int = 1000) -> int:
    """Open a batch of wf, run command with its window, close or fail it; return the command's exit code.

    With until_caught_up, again while a job run answers caught_up false (a window policy
    hands out a long outage in pieces), stopping at the first failure.
    """
    if job is not None and job not in client.status(wf):
        raise ServiceError(404, "job_not_found", f"workflow {wf!r} has no job {job!r}")
    last_ends = None
    for _ in range(max_runs):
        jobs = client.open(wf)  # the client sends an Idempotency-Key: a retried open is the same batch
        ran = [job] if job is not None else list(jobs)
        batch_id = jobs[ran[0]].get("batch_id")
        spans = {name: (jobs[name].get("from_date"), jobs[name].get("to_date")) for name in ran}
        shown = ", ".join(f"{name} [{low}, {high})" for name, (low, high) in spans.items())
        empty = all(low == high for low, high in spans.values())
        if empty and skip_empty:
            client.close(wf, job=job, batch_id=batch_id, message="empty window: not run (--skip-empty)")
            _err(f"batchy run: {wf} batch {batch_id}: {shown}: empty window, not run (--skip-empty)")
        else:
            env = {**base_env(), **window_env(wf, jobs, job), "BATCHY_BATCH_ID": str(batch_id)}
            code, tail, records = execute(command, env)
            if code != 0:
                client.fail(wf, job=job, batch_id=batch_id, message=tail.strip() or f"exit code {code}")
                _err(f"batchy run: {wf} batch {batch_id}: {shown}: failed (exit code {code})")
                return code
            client.close(wf, job=job, batch_id=batch_id, records_processed=records)
            done = "" if records is None else f" ({records} records)"
            _err(f"batchy run: {wf} batch {batch_id}: {shown}: success{done}")
        behind = [name for name in ran if jobs[name].get("caught_up") is False]
        if not until_caught_up or not behind:
            return 0
        ends = [high for _, high in spans.values()]
        if ends == last_ends:
            raise click.ClickException(f"the window of {', '.join(behind)} did not move on (still ending at "
                                       f"{', '.join(ends)}): stopping rather than looping")
        last_ends = ends
    _err(f"batchy run: {wf}: still not caught up after --max-runs {max_runs} batches")
    return 1


@click.command("run")
@click.argument("wf")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--job", help="Only this job step: its window is BATCHY_FROM_DATE / BATCHY_TO_DATE; only it is closed.")
@click.option("--until-caught-up", is_flag=True,
              help="Run batch after batch while the answer says caught_up: false (a window policy); stop at a failure.")
@click.option("--skip-empty", is_flag=True, help="Do not run the command for an empty window (from = to); close it.")
@click.option("--max-runs", type=click.IntRange(min=1), default=1000, show_default=True,
              help="With --until-caught-up: at most this many batches.")
@click.pass_context
def run(ctx, wf, command, job, until_caught_up, skip_empty, max_runs):
    """Open a batch of WF, run COMMAND (after --) with its window in the environment, close or fail it.

    \b
    Environment: BATCHY_WORKFLOW, BATCHY_BATCH_ID, BATCHY_<JOB>_FROM_DATE and _TO_DATE
    of each job, BATCHY_FROM_DATE and BATCHY_TO_DATE (one job, or --job), and
    BATCHY_RECORDS_FILE: write the number of rows loaded into it. Exit code: COMMAND's.
    """
    with service_errors():
        code = run_batches(Batchy(), wf, list(command), job=job, until_caught_up=until_caught_up,
                           skip_empty=skip_empty, max_runs=max_runs)
    ctx.exit(code)


COMMANDS = [run]
