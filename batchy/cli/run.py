"""`batchy run`: open a batch, run a command with its window in the environment, close or fail it.

The environment of a run and the running of the command (execute) are shared with
`batchy backfill run` (backfill_run.py), which does the same per chunk.
"""
from __future__ import annotations

import codecs
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import click

from ..client import Batchy, ServiceError
from .output import EXIT_BAD_INPUT, EXIT_NOT_CAUGHT_UP, EXIT_OUTAGE, Failed, env_name, params_env, service_errors

TAIL_CHARS = 2000  # of the command's stderr, sent as the failure's message
DEFAULT_GRACE_SECONDS = 10.0  # after passing on a signal (or a timeout), SIGKILL the command's session then
DEFAULT_OUTAGE_SECONDS = 120.0  # retry the service for this long (a Sentinel failover takes tens of seconds)
MAX_RECORDS = 10**14 - 1  # the largest count every endpoint keeps (a chunk's: Lua's JSON encoder)
DRAIN_SECONDS = 0.5  # read the command's stderr for this long after it exited, at most
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


def execute(command: list[str], env: dict[str, str], started=None, *, leave_children: bool = False,
            grace: float = DEFAULT_GRACE_SECONDS, exited=None) -> tuple[int, str, int | None, str | None]:
    """Run command with env and a BATCHY_RECORDS_FILE; return (exit code, stderr tail, records
    written, why the records file was not read: None when it was fine or empty).

    The command runs in a session of its own, so the terminal's Ctrl-C reaches batchy
    only, and batchy can stop the command with everything it started (Stop, stop_command).
    Its stderr still reaches ours as it comes; stdout is ours. The outcome is decided when
    the command exits, not when its stderr closes: what it left running is then stopped
    (its session: SIGTERM, SIGKILL after grace), or with leave_children left alone, and
    the rest of its stderr is read for DRAIN_SECONDS at most. A command killed by a signal
    exits 128 + the signal's number, as in a shell. started(proc) and exited(proc), when
    given, are called once the command runs and as soon as it has exited.
    """
    fd, path = tempfile.mkstemp(prefix="batchy-records-")
    os.close(fd)
    try:
        try:
            proc = subprocess.Popen(command, env={**env, "BATCHY_RECORDS_FILE": path}, stderr=subprocess.PIPE,
                                    start_new_session=True)
        except OSError as exc:
            message = f"batchy: cannot run {command[0]!r}: {exc.strerror or exc}"
            _err(message)
            return 127, message, None, None
        reader = _Tail(proc.stderr)
        reader.start()
        if started is not None:
            started(proc)
        code = proc.wait()
        if exited is not None:
            exited(proc)
        if not leave_children:
            end_session(proc.pid, grace)
        tail = reader.finish(DRAIN_SECONDS)
        return (128 - code if code < 0 else code, tail, *_records(path))
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def signal_session(pid: int, signum: int) -> bool:
    """Send signum to the session (process group) pid leads; return whether anyone was left in it."""
    try:
        os.killpg(pid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False  # it ended already


def end_session(pid: int, grace: float) -> None:
    """Stop what is left of a command's session once it exited: SIGTERM, SIGKILL after grace."""
    if not signal_session(pid, signal.SIGTERM):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        time.sleep(0.02)
        _reap(pid)
        if not _alive(pid):
            return
    signal_session(pid, signal.SIGKILL)
    _reap(pid)


def _alive(pgid: int) -> bool:
    """Return whether a process of group pgid still runs: a zombie waiting for an init that
    reaps slowly (or never) does not count. Without /proc, whether the group exists."""
    if not signal_session(pgid, 0):
        return False
    try:
        names = os.listdir("/proc")
    except OSError:
        return True
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] != b"Z":
            return True
    return False


def _reap(pgid: int) -> None:
    """Reap what of the session pgid ended as our child: as PID 1 (a container without an
    init) the command's orphans are ours, and a zombie would look alive for ever. Only
    this process group: another command's exit status is its own Popen's to collect."""
    try:
        while os.waitpid(-pgid, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def stop_command(proc, signum: int = signal.SIGTERM, grace: float | None = None) -> None:
    """Send signum to a command execute() started and all it started (its session); SIGKILL
    them after grace seconds if the command still runs then."""
    signal_session(proc.pid, signum)
    if grace is None:
        return

    def kill() -> None:
        if proc.poll() is None:
            signal_session(proc.pid, signal.SIGKILL)

    timer = threading.Timer(grace, kill)
    timer.daemon = True
    timer.start()


class _Tail(threading.Thread):
    """Copy a child's stderr to ours as it comes, keeping its last TAIL_CHARS characters.

    finish() gives it a deadline: a background child that still holds the pipe (a
    stranger: --leave-children, or one that left the session) cannot hold up the run.
    """

    def __init__(self, stream):
        super().__init__(name="batchy-stderr", daemon=True)
        self.stream = stream
        self.deadline: float | None = None
        self.tail = ""

    def run(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        fd = self.stream.fileno()
        poller = select.poll()  # not select.select: a busy runner's descriptors may pass 1024
        poller.register(fd, select.POLLIN)
        try:
            while self.deadline is None or time.monotonic() < self.deadline:
                if not poller.poll(50):
                    continue
                block = os.read(fd, 65536)
                if not block:
                    break
                text = decoder.decode(block)
                try:
                    sys.stderr.write(text)
                    sys.stderr.flush()
                except (OSError, ValueError):  # our stderr is gone: keep the tail anyway
                    pass
                self.tail = (self.tail + text)[-TAIL_CHARS:]
        finally:
            self.tail = (self.tail + decoder.decode(b"", final=True))[-TAIL_CHARS:]
            self.stream.close()

    def finish(self, seconds: float) -> str:
        """Read on for seconds at most (until end of file, if sooner); return the tail."""
        self.deadline = time.monotonic() + seconds
        self.join()
        return self.tail


def _records(path: str, limit: int = MAX_RECORDS) -> tuple[int | None, str | None]:
    """Return (the whole number the command wrote into its records file, None) or, when the
    file holds something else, (None, why it was not sent): a bad count never costs the success."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(101)
    except OSError:
        return None, None
    text = raw.decode("utf-8", "replace").strip()
    if not text:
        return None, None
    if text.isascii() and text.isdigit() and len(text) <= 30 and int(text) <= limit:
        return int(text), None
    shown = text[:40] + ("..." if len(text) > 40 else "")
    why = "too large" if text.isascii() and text.isdigit() else "not a whole number"
    note = f"BATCHY_RECORDS_FILE held {shown!r} ({why}, at most {limit}): records_processed not sent"
    _err(f"batchy: {note}")
    return None, note


def _err(message: str) -> None:
    click.echo(message, err=True)


# -- signals and outages: what both runners do -------------------------------------------

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Stop:
    """The first SIGTERM, SIGINT or SIGHUP batchy got (systemd's stop, a pod eviction, an
    Airflow timeout, Ctrl-C, a closed terminal), passed on to every command it runs.

    Each command gets the same signal in its whole session, and SIGKILL grace seconds
    later if it still runs. Used as a context manager: the handlers are batchy's while
    it runs, and a signal never raises inside it (no KeyboardInterrupt half-way).
    """

    def __init__(self, grace: float = DEFAULT_GRACE_SECONDS):
        self.grace = grace
        self.signum: int | None = None
        self.when: float | None = None
        self.event = threading.Event()
        self.running: set = set()  # the commands running now
        self._saved: dict = {}

    def __enter__(self) -> "Stop":
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._saved[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a command a signal stopped."""
        return 128 + int(self.signum)

    def _handle(self, signum, frame) -> None:
        self.request(signum)

    def request(self, signum: int) -> None:
        """Stop: pass signum on to every command running, and keep any new one from running long."""
        if self.signum is None:  # set before looking at the commands: started() looks the other way round
            self.signum, self.when = signum, time.monotonic()
            self.event.set()
        for proc in list(self.running):
            stop_command(proc, signum, self.grace)

    def started(self, proc) -> None:
        """Track a command that just started; one started after the signal is stopped at once."""
        self.running.add(proc)
        if self.signum is not None:
            stop_command(proc, self.signum, self.grace)

    def ended(self, proc) -> None:
        self.running.discard(proc)


class Outage(Exception):
    """The service stayed unreachable (or answered 503) longer than a runner may wait."""

    def __init__(self, what: str, seconds: float, last: Exception):
        super().__init__(f"{what}: the service was unreachable for {seconds:.0f} s "
                         f"(--outage-seconds): {getattr(last, 'message', None) or last}")
        self.last = last


def unavailable(exc: Exception) -> bool:
    """Return whether exc is an outage (no answer, or a 503), not the service's refusal."""
    return isinstance(exc, OSError) or (isinstance(exc, ServiceError) and exc.status == 503)


def persist(call, what: str, seconds: float, *, until: float | None = None, stop: Stop | None = None,
            note=None):
    """Return call(), tried again across an outage for up to seconds (and not past until, a
    monotonic time: a lease's end); raise Outage once that is over. Only for calls that are
    safe to repeat: an open with its Idempotency-Key, a close or fail naming its batch_id or
    its chunk, attempt and lease_token, a renewal. After a stop signal, for grace seconds more
    at most: a supervisor's SIGKILL follows."""
    started = time.monotonic()
    deadline = started + seconds if until is None else min(started + seconds, until)
    delay, told = 0.2, False
    while True:
        try:
            return call()
        except (ServiceError, OSError) as exc:
            if not unavailable(exc):
                raise
            last = exc
        now = time.monotonic()
        limit = deadline if stop is None or stop.when is None else min(deadline, stop.when + stop.grace)
        if now + delay > limit:
            raise Outage(what, now - started, last)
        if not told:
            (note or _err)(f"batchy: {what}: service unavailable ({getattr(last, 'message', None) or last}); "
                           f"retrying for up to {max(0.0, limit - now):.0f} s")
            told = True
        time.sleep(delay)
        delay = min(delay * 2, 2.0)


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
            _err(f"batchy run: {wf}: {exc}")
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
            _err(f"batchy run: {wf}: stopped by {stop.name} before opening a batch")
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
            _err(f"batchy run: {wf} batch {batch_id}: {shown}: stopped by {stop.name} before the command started")
            return stop.exit_code
        if empty and skip_empty:
            finish("success", message="empty window: not run (--skip-empty)")
            _err(f"batchy run: {wf} batch {batch_id}: {shown}: empty window, not run (--skip-empty)")
        else:
            opened = {name: jobs[name] for name in ran}  # with --job, the other jobs' batches are not ours
            window = {**window_env(wf, opened, job), "BATCHY_BATCH_ID": str(batch_id)}
            env = {**base_env(), **window, **params_env(opened, job, taken=window)}
            ended: list[float] = []  # when the command exited: a signal after that does not fail it
            try:
                code, tail, records, note = execute(command, env, stop.started, leave_children=leave_children,
                                                    grace=stop.grace,
                                                    exited=lambda proc: ended.append(time.monotonic()))
            finally:
                stop.running.clear()
            if stop.when is not None and (not ended or stop.when <= ended[0]):  # it came while the command ran
                why = (f"stopped by {stop.name} (batchy run passed it on to the command, exit code {code})"
                       + (f": {tail.strip()}" if tail.strip() else ""))
                finish("failed", message=why[-TAIL_CHARS:])
                _err(f"batchy run: {wf} batch {batch_id}: {shown}: failed: stopped by {stop.name}")
                return stop.exit_code
            if code != 0:
                finish("failed", message=tail.strip() or f"exit code {code}")
                _err(f"batchy run: {wf} batch {batch_id}: {shown}: failed (exit code {code})")
                return stop.exit_code if stop.signum is not None else code
            try:
                finish("success", records_processed=records, message=note)
            except ServiceError as exc:
                if exc.status != 400 or exc.body.get("parameter") != "records_processed":
                    raise
                note = f"records_processed {records} refused ({exc.message}): not sent"
                _err(f"batchy: {note}")
                records = None
                finish("success", message=note)
            done = "" if records is None else f" ({records} records)"
            _err(f"batchy run: {wf} batch {batch_id}: {shown}: success{done}")
            if stop.signum is not None:  # a signal after the command exited: its outcome is recorded, then stop
                _err(f"batchy run: {wf}: stopped by {stop.name} after the command exited")
                return stop.exit_code
        behind = [name for name in ran if jobs[name].get("caught_up") is False]
        if not until_caught_up or not behind:
            return 0
        if stop.signum is not None:
            _err(f"batchy run: {wf}: stopped by {stop.name} before the next batch")
            return stop.exit_code
        ends = [high for _, high in spans.values()]
        if ends == last_ends:
            _err(f"batchy run: {wf}: the window of {', '.join(behind)} did not move on (still ending at "
                 f"{', '.join(ends)}): stopping rather than looping")
            return EXIT_NOT_CAUGHT_UP
        last_ends = ends
    _err(f"batchy run: {wf}: still not caught up after --max-runs {max_runs} batches")
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
