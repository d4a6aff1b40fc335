"""`batchy run` and `batchy backfill`: run a command with its window, over HTTP (batchy.client).

`batchy run` opens a batch, runs the command with the window in its environment, and
closes or fails the batch by the command's exit code. `batchy backfill run` leases a
backfill's chunks from N threads and does the same per chunk. The commands are in
COMMANDS, which cli.py adds to the `batchy` group.
"""
from __future__ import annotations

import codecs
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import urllib.parse
from contextlib import contextmanager

import click

from .client import Batchy, ServiceError

TAIL_CHARS = 2000  # of the command's stderr, sent as the failure's message
POLL_SECONDS = 1.0  # at most, a backfill worker with nothing due waits this long for another's chunk to end
# Variables a run sets: the ones inherited from an enclosing run are dropped, never passed on stale.
_WINDOW_VARIABLE = re.compile(r"BATCHY_((\w+_)?(FROM_DATE|TO_DATE)|BATCH_ID|BACKFILL_ID|CHUNK|ATTEMPT|JOB|WORKFLOW|"
                              r"RECORDS_FILE)")


# -- the environment of a run ------------------------------------------------------------

def _cli():
    """Return batchy.cli, imported at call time: it imports this module to add COMMANDS."""
    from . import cli

    return cli


def window_env(wf: str, jobs: dict[str, dict], job: str | None = None) -> dict[str, str]:
    """Return the window variables of a batch: BATCHY_<JOB>_FROM_DATE/_TO_DATE of each job, and
    BATCHY_FROM_DATE/_TO_DATE of job (or of the only job)."""
    env = {"BATCHY_WORKFLOW": wf}
    seen: dict[str, str] = {}
    for name, params in jobs.items():
        part = _cli().env_name(name)
        if part in seen:
            raise _cli().Failed(f"jobs {seen[part]!r} and {name!r} both become BATCHY_{part}_*: rename one",
                                _cli().EXIT_BAD_INPUT)
        seen[part] = name
        env[f"BATCHY_{part}_FROM_DATE"] = params.get("from_date") or ""
        env[f"BATCHY_{part}_TO_DATE"] = params.get("to_date") or ""
    chosen = job if job is not None else (next(iter(jobs)) if len(jobs) == 1 else None)
    if chosen is not None:
        env["BATCHY_FROM_DATE"] = jobs[chosen].get("from_date") or ""
        env["BATCHY_TO_DATE"] = jobs[chosen].get("to_date") or ""
    return env


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not _WINDOW_VARIABLE.fullmatch(k)}


def execute(command: list[str], env: dict[str, str]) -> tuple[int, str, int | None]:
    """Run command with env and a BATCHY_RECORDS_FILE; return (exit code, stderr tail, records written).

    Its stderr still reaches ours as it comes; stdout is ours. A command killed by a
    signal exits 128 + the signal's number, as in a shell.
    """
    fd, path = tempfile.mkstemp(prefix="batchy-records-")
    os.close(fd)
    try:
        try:
            proc = subprocess.Popen(command, env={**env, "BATCHY_RECORDS_FILE": path}, stderr=subprocess.PIPE)
        except OSError as exc:
            message = f"batchy: cannot run {command[0]!r}: {exc.strerror or exc}"
            _err(message)
            return 127, message, None
        tail = _pass_through(proc.stderr)
        code = proc.wait()
        return (128 - code if code < 0 else code), tail, _records(path)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


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
            env = {**_base_env(), **window_env(wf, jobs, job), "BATCHY_BATCH_ID": str(batch_id)}
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


# -- the backfill endpoints, over the client's transport (its URL, token and retries) -------

class BackfillClient:
    """Call the backfill endpoints with a batchy.client.Batchy."""

    def __init__(self, client: Batchy):
        self.client = client

    def _call(self, method: str, path: str, query: dict | None = None, body: dict | None = None,
              retry: bool = False):
        raw = self.client.request(method, path, query, body, retry=retry)
        return json.loads(raw) if raw else None

    @staticmethod
    def _path(wf: str, backfill_id: int | None = None, action: str = "") -> str:
        path = "/backfill/" + urllib.parse.quote(wf, safe="")
        if backfill_id is not None:
            path += f"/{int(backfill_id)}"
        return path + (f"/{action}" if action else "")

    def create(self, wf: str, start: str, end: str, *, jobs: list[str] | None = None, batch_size: str | None = None,
               chunk_hours: float | None = None, max_attempts: int | None = None) -> dict:
        return self._call("POST", self._path(wf), body={
            "from": start, "to": end, "job": jobs or None, "batch_size": batch_size, "chunk_hours": chunk_hours,
            "max_attempts": max_attempts})

    def status(self, wf: str, backfill_id: int) -> dict:
        return self._call("GET", self._path(wf, backfill_id), retry=True)

    def list(self, wf: str, limit: int = 50) -> list[dict]:
        return self._call("GET", "/backfills/" + urllib.parse.quote(wf, safe=""), {"limit": limit},
                          retry=True)["backfills"]

    def cancel(self, wf: str, backfill_id: int) -> dict:
        return self._call("POST", self._path(wf, backfill_id, "cancel"), body={}, retry=True)

    def lease(self, wf: str, backfill_id: int, lease_seconds: float | None = None) -> dict | None:
        """Return the chunk leased, or None when none is due now (204). Not retried: a lost
        answer leaves a lease that runs out, and the chunk is leased again then."""
        return self._call("POST", self._path(wf, backfill_id, "lease"), body={"lease_seconds": lease_seconds})

    def finish(self, wf: str, backfill_id: int, chunk: int, attempt: int, outcome: str, *,
               records_processed: int | None = None, message: str | None = None) -> dict:
        """Close (outcome success) or fail one attempt of a chunk; safe to retry, so retried."""
        action = "close" if outcome == "success" else "fail"
        return self._call("POST", self._path(wf, backfill_id, action), body={
            "chunk": chunk, "attempt": attempt, "records_processed": records_processed, "message": message},
            retry=True)


# -- batchy backfill run --------------------------------------------------------------------

class Progress:
    """Report chunks as they end: a one-line bar on a terminal, a line per chunk otherwise."""

    def __init__(self, stream=None, bar: bool | None = None):
        self.stream = stream or sys.stderr
        self.bar = self.stream.isatty() if bar is None else bar
        self.lock = threading.Lock()
        self.drawn = False

    def chunk(self, lease: dict, what: str, progress: dict | None) -> None:
        line = (f"chunk {lease['chunk']} {lease['job']} [{lease['from_date']}, {lease['to_date']}) "
                f"attempt {lease['attempt']}: {what}")
        with self.lock:
            if self.bar and progress:
                self.stream.write("\r\033[K" + self._bar(progress))
                self.drawn = True
            else:
                done = f" [{_finished(progress)}/{progress['chunks']} done]" if progress else ""
                self.stream.write(line + done + "\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        with self.lock:
            self.stream.write(("\r\033[K" if self.bar and self.drawn else "") + text + "\n")
            self.drawn = False
            self.stream.flush()

    def end(self) -> None:
        with self.lock:
            if self.drawn:
                self.stream.write("\n")
                self.drawn = False

    @staticmethod
    def _bar(progress: dict, width: int = 30) -> str:
        total = progress["chunks"] or 1
        filled = round(width * _finished(progress) / total)
        return (f"[{'#' * filled}{'.' * (width - filled)}] {_finished(progress)}/{progress['chunks']} done: "
                f"{progress['success']} success, {progress['failed']} failed, {progress['leased']} leased, "
                f"{progress['pending']} pending")


def _finished(progress: dict) -> int:
    return progress["success"] + progress["failed"] + progress["cancelled"]


class BackfillRun:
    """Worker threads leasing one backfill's chunks and running command on each."""

    def __init__(self, api: BackfillClient, wf: str, backfill_id: int, command: list[str], *,
                 lease_seconds: float | None = None, poll: float | None = None, progress: Progress | None = None):
        self.api = api
        self.wf = wf
        self.backfill_id = backfill_id
        self.command = command
        self.lease_seconds = lease_seconds
        self.poll = POLL_SECONDS if poll is None else poll
        self.progress = progress or Progress()
        self.changed = threading.Condition()  # a worker finished a chunk, or stopped
        self.busy = 0  # workers leasing or running a chunk now
        self.stop = threading.Event()
        self.error: Exception | None = None

    def run(self, parallel: int = 1) -> None:
        """Run parallel workers until no chunk is due and none is leased by this run."""
        threads = [threading.Thread(target=self.worker, name=f"backfill-{i}", daemon=True) for i in range(parallel)]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                while thread.is_alive():
                    thread.join(0.2)
        except KeyboardInterrupt:
            self.stop.set()  # the commands got the terminal's SIGINT too; their chunks fail
            for thread in threads:
                thread.join()
            raise

    def worker(self) -> None:
        while not self.stop.is_set():
            with self.changed:
                self.busy += 1
            try:
                lease = self.api.lease(self.wf, self.backfill_id, self.lease_seconds)
            except (ServiceError, OSError) as exc:
                self.error = exc  # no lease can be had: stop every worker
                self.stop.set()
                lease = None
            if lease is None:
                with self.changed:
                    self.busy -= 1
                    self.changed.notify_all()
                    if self.busy == 0 or self.stop.is_set():
                        return
                    # Another worker's chunk may fail and be due again: wait until it ends.
                    self.changed.wait(self.poll)
                continue
            try:
                self.run_chunk(lease)
            finally:
                with self.changed:
                    self.busy -= 1
                    self.changed.notify_all()

    def run_chunk(self, lease: dict) -> None:
        name = lease["job"]
        env = {**_base_env(), **window_env(self.wf, {name: lease}, name), "BATCHY_JOB": name,
               "BATCHY_BACKFILL_ID": str(self.backfill_id), "BATCHY_CHUNK": str(lease["chunk"]),
               "BATCHY_ATTEMPT": str(lease["attempt"])}
        code, tail, records = execute(self.command, env)
        outcome = "success" if code == 0 else "failed"
        try:
            answer = self.api.finish(self.wf, self.backfill_id, lease["chunk"], lease["attempt"], outcome,
                                     records_processed=records if code == 0 else None,
                                     message=None if code == 0 else tail.strip() or f"exit code {code}")
        except (ServiceError, OSError) as exc:
            # Stale (its lease ran out and another worker has the chunk), or the service is
            # unreachable: the chunk stays leased until its lease runs out, then is due again.
            self.progress.note(f"chunk {lease['chunk']} attempt {lease['attempt']}: {outcome}, but not recorded: "
                               f"{getattr(exc, 'message', exc)}")
            return
        if code == 0:
            what = "success" + ("" if records is None else f" ({records} records)")
        else:
            what = f"failed (exit code {code}), now {answer['status']}"
        self.progress.chunk(lease, what, answer.get("progress"))


def run_backfill(api: BackfillClient, wf: str, backfill_id: int, command: list[str], *, parallel: int = 1,
                 lease_seconds: float | None = None, poll: float | None = None,
                 progress: Progress | None = None) -> int:
    """Run a backfill's chunks with parallel workers; return 0 when every chunk succeeded, else 1."""
    progress = progress or Progress()
    before = api.status(wf, backfill_id)
    due = before["progress"]["pending"] + before["progress"]["leased"]
    progress.note(f"backfill {backfill_id} of {wf}: {before['progress']['chunks']} chunk(s), {due} to run, "
                  f"{parallel} worker(s)")
    job = BackfillRun(api, wf, backfill_id, command, lease_seconds=lease_seconds, poll=poll, progress=progress)
    job.run(parallel)
    progress.end()
    if job.error is not None:
        progress.note(f"batchy backfill run: stopped: {getattr(job.error, 'message', job.error)}")
    after = api.status(wf, backfill_id)
    counts = after["progress"]
    progress.note(f"backfill {backfill_id} of {wf}: {after['status']}: " + ", ".join(
        f"{counts[s]} {s}" for s in ("success", "failed", "cancelled", "leased", "pending") if counts[s]))
    return 0 if after["status"] == "success" else 1


# -- the click commands -------------------------------------------------------------------------

@contextmanager
def _service_errors():
    """Turn the service's errors into `batchy`'s exit codes (cli.EXIT_BY_STATUS)."""
    try:
        yield
    except ServiceError as exc:
        cli = _cli()
        raise cli.Failed(f"{exc.message} ({exc.status} {exc.code})",
                         cli.EXIT_BY_STATUS.get(exc.status, cli.EXIT_ERROR)) from None
    except OSError as exc:
        cli = _cli()
        raise cli.Failed(f"cannot reach Batchy at {Batchy().url}: {exc}", cli.EXIT_UNAVAILABLE) from None


def _output_options(fn):
    fn = click.option("--quiet", "-q", is_flag=True, help="Print nothing on success: the exit code says.")(fn)
    return click.option("--json/--table", "as_json", default=None,
                        help="JSON (the default when stdout is not a terminal) or a table (on a terminal).")(fn)


def _show(data, human, as_json: bool | None, quiet: bool) -> None:
    if quiet:
        return
    if as_json is None:
        as_json = not sys.stdout.isatty()
    click.echo(json.dumps(data, indent=2) if as_json else human(data))


def _backfill_text(answer: dict) -> str:
    counts = answer["progress"]
    head = (f"backfill {answer['backfill_id']} of {answer['workflow']}: {answer['status']}, "
            f"{_finished(counts)}/{counts['chunks']} done ({counts['success']} success, {counts['failed']} failed, "
            f"{counts['cancelled']} cancelled, {counts['leased']} leased, {counts['pending']} pending)")
    if "chunks" not in answer:
        return head
    columns = ["chunk", "job", "from_date", "to_date", "status", "attempts", "records_processed", "message"]
    return head + "\n" + _cli().table(answer["chunks"], columns)


def _pairs(answer: dict) -> str:
    return "\n".join(f"{key}: {'-' if value is None else value}" for key, value in answer.items()
                     if not isinstance(value, dict))


def _list_text(rows: list[dict]) -> str:
    rows = [{**r, "done": f"{_finished(r['progress'])}/{r['progress']['chunks']}"} for r in rows]
    return _cli().table(rows, ["backfill_id", "status", "from", "to", "done", "created"])


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
    with _service_errors():
        code = run_batches(Batchy(), wf, list(command), job=job, until_caught_up=until_caught_up,
                           skip_empty=skip_empty, max_runs=max_runs)
    ctx.exit(code)


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
@_output_options
def backfill_create(wf, start, end, jobs, batch_size, chunk_hours, max_attempts, as_json, quiet):
    """Create a backfill of WF from --from to --to; print it with its chunks."""
    with _service_errors():
        answer = BackfillClient(Batchy()).create(wf, start, end, jobs=list(jobs), batch_size=batch_size,
                                                 chunk_hours=chunk_hours, max_attempts=max_attempts)
    _show(answer, _backfill_text, as_json, quiet)


@backfill_group.command("status")
@click.argument("wf")
@click.argument("backfill_id", type=int)
@_output_options
def backfill_status(wf, backfill_id, as_json, quiet):
    """Print a backfill's progress and every chunk."""
    with _service_errors():
        answer = BackfillClient(Batchy()).status(wf, backfill_id)
    _show(answer, _backfill_text, as_json, quiet)


@backfill_group.command("list")
@click.argument("wf")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@_output_options
def backfill_list(wf, limit, as_json, quiet):
    """Print WF's backfills, newest first."""
    with _service_errors():
        answer = BackfillClient(Batchy()).list(wf, limit)
    _show(answer, _list_text, as_json, quiet)


@backfill_group.command("cancel")
@click.argument("wf")
@click.argument("backfill_id", type=int)
@_output_options
def backfill_cancel(wf, backfill_id, as_json, quiet):
    """Cancel a backfill: its pending chunks are cancelled; leased ones may still close."""
    with _service_errors():
        answer = BackfillClient(Batchy()).cancel(wf, backfill_id)
    _show(answer, _backfill_text, as_json, quiet)


@backfill_group.command("lease")
@click.argument("wf")
@click.argument("backfill_id", type=int)
@click.option("--lease-seconds", type=click.FloatRange(min=0, min_open=True), help="How long to hold it [3600].")
@_output_options
def backfill_lease(wf, backfill_id, lease_seconds, as_json, quiet):
    """Lease the next chunk due and print it; print nothing when none is due now (a worker of your own)."""
    with _service_errors():
        answer = BackfillClient(Batchy()).lease(wf, backfill_id, lease_seconds)
    if answer is not None:
        _show(answer, _pairs, as_json, quiet)


def _finish_options(fn):
    fn = click.option("--message", "-m", help="A note kept on the chunk (a failure's reason).")(fn)
    fn = click.option("--records-processed", type=click.IntRange(min=0), help="Rows the chunk loaded.")(fn)
    fn = click.option("--attempt", type=click.IntRange(min=1), required=True,
                      help="The attempt the lease answered.")(fn)
    fn = click.option("--chunk", type=click.IntRange(min=0), required=True, help="The chunk the lease answered.")(fn)
    fn = click.argument("backfill_id", type=int)(fn)
    return click.argument("wf")(_output_options(fn))


@backfill_group.command("close")
@_finish_options
def backfill_close(wf, backfill_id, chunk, attempt, records_processed, message, as_json, quiet):
    """Mark a leased chunk's attempt successful (its window goes into the coverage ledger)."""
    with _service_errors():
        answer = BackfillClient(Batchy()).finish(wf, backfill_id, chunk, attempt, "success",
                                                 records_processed=records_processed, message=message)
    _show(answer, _pairs, as_json, quiet)


@backfill_group.command("fail")
@_finish_options
def backfill_fail(wf, backfill_id, chunk, attempt, records_processed, message, as_json, quiet):
    """Mark a leased chunk's attempt failed: it is due again until max_attempts are used."""
    with _service_errors():
        answer = BackfillClient(Batchy()).finish(wf, backfill_id, chunk, attempt, "failed",
                                                 records_processed=records_processed, message=message)
    _show(answer, _pairs, as_json, quiet)


@backfill_group.command("run")
@click.argument("wf")
@click.argument("backfill_id", type=int)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--parallel", type=click.IntRange(1, 64), default=1, show_default=True, help="Chunks run at once.")
@click.option("--lease-seconds", type=click.FloatRange(min=0, min_open=True),
              help="How long a chunk is held before another worker may take it [3600]: longer than a chunk runs.")
@click.pass_context
def backfill_run(ctx, wf, backfill_id, command, parallel, lease_seconds):
    """Run COMMAND (after --) on each chunk of a backfill; exit 0 when every chunk succeeded, else 1.

    \b
    Environment per chunk: BATCHY_WORKFLOW, BATCHY_BACKFILL_ID, BATCHY_CHUNK,
    BATCHY_ATTEMPT, BATCHY_JOB, BATCHY_FROM_DATE, BATCHY_TO_DATE, BATCHY_<JOB>_FROM_DATE
    and _TO_DATE, BATCHY_RECORDS_FILE.
    """
    with _service_errors():
        code = run_backfill(BackfillClient(Batchy()), wf, backfill_id, list(command), parallel=parallel,
                            lease_seconds=lease_seconds)
    ctx.exit(code)


COMMANDS = [run, backfill_group]
