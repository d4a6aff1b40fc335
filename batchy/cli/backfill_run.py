"""`batchy backfill run`: N threads lease a backfill's chunks and run a command on each, over HTTP.

The endpoints are called through batchy.client.BackfillClient (the client's URL, token and
retries), as every `batchy backfill` command does (backfill.py).
"""
from __future__ import annotations

import signal
import sys
import threading
import time

from ..client import BackfillClient, ServiceError
from .process import DEFAULT_GRACE_SECONDS, DEFAULT_OUTAGE_SECONDS, Outage, Stop, execute, persist, stop_command
from .output import EXIT_OUTAGE, params_env
from .run import command_env, window_env

POLL_SECONDS = 1.0  # at most, a backfill worker with nothing due waits this long for another's chunk to end
DEFAULT_LEASE_SECONDS = 3600.0  # the service's default, when --lease-seconds is not given
MIN_BEAT_SECONDS = 0.1  # a heartbeat renews every third of the lease, but never more often than this


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
                done = f" [{finished(progress)}/{progress['chunks']} done]" if progress else ""
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
        filled = round(width * finished(progress) / total)
        return (f"[{'#' * filled}{'.' * (width - filled)}] {finished(progress)}/{progress['chunks']} done: "
                f"{progress['success']} success, {progress['failed']} failed, {progress['leased']} leased, "
                f"{progress['pending']} pending")


def finished(progress: dict) -> int:
    """Return how many chunks of a backfill's progress counts have ended, whichever way."""
    return progress["success"] + progress["failed"] + progress["cancelled"]


class BackfillRun:
    """Worker threads leasing one backfill's chunks and running command on each."""

    def __init__(self, api: BackfillClient, wf: str, backfill_id: int, command: list[str], *,
                 lease_seconds: float | None = None, chunk_timeout: float | None = None, poll: float | None = None,
                 progress: Progress | None = None, grace: float = DEFAULT_GRACE_SECONDS,
                 outage_seconds: float = DEFAULT_OUTAGE_SECONDS, leave_children: bool = False):
        self.api = api
        self.wf = wf
        self.backfill_id = backfill_id
        self.command = command
        self.lease_seconds = lease_seconds
        self.chunk_timeout = chunk_timeout
        self.poll = POLL_SECONDS if poll is None else poll
        self.progress = progress or Progress()
        self.outage_seconds = outage_seconds
        self.leave_children = leave_children
        self.changed = threading.Condition()  # a worker finished a chunk, or stopped
        self.busy = 0  # workers leasing or running a chunk now
        self.stop = threading.Event()
        self.error: Exception | None = None
        self.signals = Stop(grace)  # a SIGTERM, SIGINT or SIGHUP, passed on to every command running
        self.jobs: dict | None = None  # the workflow's jobs, read once for their parameters

    def parameters(self, job: str) -> dict:
        """Return the job's parameters (BATCHY_<PARAM> for its commands), read once per run."""
        with self.changed:
            if self.jobs is None:
                try:
                    self.jobs = self.api.client.status(self.wf)
                except (ServiceError, OSError) as exc:  # the window is what matters: run without them
                    self.progress.note(f"batchy backfill run: the jobs' parameters could not be read ({exc})")
                    self.jobs = {}
            return self.jobs.get(job) or {}

    def halt(self, error: Exception | None = None) -> None:
        """Stop every worker: no more leases; the chunks running end and are recorded."""
        if error is not None and self.error is None:
            self.error = error
        self.stop.set()
        with self.changed:
            self.changed.notify_all()

    def run(self, parallel: int = 1) -> None:
        """Run parallel workers until no chunk is due and none is leased by this run, or a signal."""
        threads = [threading.Thread(target=self.worker, name=f"backfill-{i}", daemon=True) for i in range(parallel)]
        with self.signals:
            for thread in threads:
                thread.start()
            for thread in threads:
                # Short joins: the signal handler runs in this thread, between them.
                while thread.is_alive():
                    if self.signals.signum is not None and not self.stop.is_set():
                        self.progress.note(f"batchy backfill run: {self.signals.name}: stopping the running "
                                           "commands and failing their chunks")
                        self.halt()
                    thread.join(0.1)

    def stopping(self) -> bool:
        return self.stop.is_set() or self.signals.signum is not None

    def worker(self) -> None:
        while not self.stopping():
            with self.changed:
                self.busy += 1
            try:
                lease = persist(lambda: self.api.lease(self.wf, self.backfill_id, self.lease_seconds),
                                f"lease a chunk of backfill {self.backfill_id}", self.outage_seconds,
                                stop=self.signals, note=self.progress.note)
            except (ServiceError, OSError, Outage) as exc:
                self.halt(exc)  # no lease can be had: stop every worker
                lease = None
            if lease is not None and self.stopping():  # leased as a signal came: give it back at once
                self.finish(lease, "failed", None, f"batchy backfill run stopped by {self.signals.name or 'an error'} "
                                                   "before the command started", time.monotonic())
                lease = None
            if lease is None:
                with self.changed:
                    self.busy -= 1
                    self.changed.notify_all()
                    if self.busy == 0 or self.stopping():
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

    def heartbeat(self, lease: dict, done: threading.Event, running: list, held: list) -> None:
        """While the command runs, renew the chunk's lease every third of it, so a command that
        runs longer than its lease keeps its chunk: nobody else is handed it meanwhile.

        A renewal refused (409: another worker took the chunk after this lease ran out, the
        service having been unreachable for a whole lease) stops the command: the chunk is
        the other worker's now. A renewal that fails otherwise is tried again next beat.
        held[0] is when the lease ends (monotonic), as far as this worker knows.
        """
        seconds = self.lease_seconds or DEFAULT_LEASE_SECONDS
        while not done.wait(max(MIN_BEAT_SECONDS, seconds / 3)):
            sent = time.monotonic()
            try:
                self.api.renew(self.wf, self.backfill_id, lease["chunk"], lease["attempt"], seconds, retry=False,
                               lease_token=lease.get("lease_token"))
                held[0] = sent + seconds
            except (ServiceError, OSError) as exc:
                if done.is_set():
                    return  # the command ended meanwhile: its close says what happened
                lost = isinstance(exc, ServiceError) and exc.status == 409
                self.progress.note(f"chunk {lease['chunk']} attempt {lease['attempt']}: lease not renewed: "
                                   f"{getattr(exc, 'message', exc)}" + ("; stopping its command" if lost else ""))
                if lost:
                    for proc in running:
                        stop_command(proc, signal.SIGTERM, self.signals.grace)
                    return

    def run_chunk(self, lease: dict) -> None:
        name = lease["job"]
        window = {**window_env(self.wf, {name: lease}, name), "BATCHY_JOB": name,
                  "BATCHY_BACKFILL_ID": str(self.backfill_id), "BATCHY_CHUNK": str(lease["chunk"]),
                  "BATCHY_ATTEMPT": str(lease["attempt"])}
        env = command_env(window, params_env({name: self.parameters(name)}, name, taken=window))
        held = [time.monotonic() + (self.lease_seconds or DEFAULT_LEASE_SECONDS)]
        done = threading.Event()
        running: list = []  # the command's process, once started: the heartbeat may stop it
        timers: list[threading.Timer] = []
        timed_out = threading.Event()

        def started(proc) -> None:
            running.append(proc)
            self.signals.started(proc)
            if self.chunk_timeout is not None:
                def stop() -> None:
                    if proc.poll() is None:
                        timed_out.set()
                        stop_command(proc, signal.SIGTERM, self.signals.grace)
                timer = threading.Timer(self.chunk_timeout, stop)
                timer.daemon = True
                timer.start()
                timers.append(timer)

        beat = threading.Thread(target=self.heartbeat, args=(lease, done, running, held), name="backfill-heartbeat",
                                daemon=True)
        beat.start()
        try:
            code, tail, records, note, attested = execute(self.command, env, started,
                                                          leave_children=self.leave_children, grace=self.signals.grace)
        finally:
            done.set()  # the heartbeat stops; a renewal in flight does not hold up the close
            for timer in timers:
                timer.cancel()
            for proc in running:
                self.signals.ended(proc)
        if self.signals.signum is not None and running and code != 0:
            tail = f"stopped by {self.signals.name} (batchy backfill run passed it on)" + (
                f": {tail.strip()}" if tail.strip() else "")
        elif timed_out.is_set():
            tail = f"stopped after --chunk-timeout {self.chunk_timeout:g} s" + (
                f": {tail.strip()}" if tail.strip() else "")
        outcome = "success" if code == 0 else "failed"
        answer = self.finish(lease, outcome, records if code == 0 else None,
                             note if code == 0 else tail.strip() or f"exit code {code}", held[0],
                             attested if code == 0 else {})
        if answer is None:
            return
        if code == 0:
            what = "success" + ("" if records is None else f" ({records} records)")
        else:
            what = f"failed (exit code {code}), now {answer['status']}"
        self.progress.chunk(lease, what, answer.get("progress"))

    def finish(self, lease: dict, outcome: str, records: int | None, message: str | None,
               held_until: float, attested: dict | None = None) -> dict | None:
        """Close or fail a chunk's attempt, retried across an outage until its lease ends; None
        when it could not be recorded (said so)."""
        try:
            return persist(lambda: self.api.finish(self.wf, self.backfill_id, lease["chunk"], lease["attempt"],
                                                   outcome, records_processed=records, message=message,
                                                   lease_token=lease.get("lease_token"), **(attested or {})),
                           f"the {outcome} of chunk {lease['chunk']} attempt {lease['attempt']}", self.outage_seconds,
                           until=max(held_until, time.monotonic() + 1), stop=self.signals, note=self.progress.note)
        except Outage as exc:
            # The chunk stays leased until its lease runs out, then is due again.
            self.progress.note(f"chunk {lease['chunk']} attempt {lease['attempt']}: {outcome}, but not recorded: "
                               f"{exc}")
            self.halt(exc)
        except ServiceError as exc:
            if outcome == "success" and exc.status == 400 and exc.body.get("parameter") == "records_processed":
                note = f"records_processed {records} refused ({exc.message}): not sent"
                return self.finish(lease, outcome, None, note, held_until, attested)
            # Stale: its lease ran out and another worker has the chunk.
            self.progress.note(f"chunk {lease['chunk']} attempt {lease['attempt']}: {outcome}, but not recorded: "
                               f"{exc.message}")
        return None


def run_backfill(api: BackfillClient, wf: str, backfill_id: int, command: list[str], *, parallel: int = 1,
                 lease_seconds: float | None = None, chunk_timeout: float | None = None, poll: float | None = None,
                 progress: Progress | None = None, grace: float = DEFAULT_GRACE_SECONDS,
                 outage_seconds: float = DEFAULT_OUTAGE_SECONDS, leave_children: bool = False) -> int:
    """Run a backfill's chunks with parallel workers; return 0 when every chunk succeeded, else 1;
    128 + N after signal N (every command stopped, its attempt failed); EXIT_OUTAGE when the
    service stayed unreachable past outage_seconds."""
    progress = progress or Progress()
    before = persist(lambda: api.status(wf, backfill_id), f"backfill {backfill_id}", outage_seconds)
    due = before["progress"]["pending"] + before["progress"]["leased"]
    progress.note(f"backfill {backfill_id} of {wf}: {before['progress']['chunks']} chunk(s), {due} to run, "
                  f"{parallel} worker(s)")
    job = BackfillRun(api, wf, backfill_id, command, lease_seconds=lease_seconds, chunk_timeout=chunk_timeout,
                      poll=poll, progress=progress, grace=grace, outage_seconds=outage_seconds,
                      leave_children=leave_children)
    job.run(parallel)
    progress.end()
    if job.error is not None:
        progress.note(f"batchy backfill run: stopped: {getattr(job.error, 'message', job.error)}")
    try:
        after = persist(lambda: api.status(wf, backfill_id), f"backfill {backfill_id}",
                        0 if job.signals.signum or isinstance(job.error, Outage) else outage_seconds)
    except (ServiceError, OSError, Outage):
        after = None
    if after is not None:
        counts = after["progress"]
        progress.note(f"backfill {backfill_id} of {wf}: {after['status']}: " + ", ".join(
            f"{counts[s]} {s}" for s in ("success", "failed", "cancelled", "leased", "pending") if counts[s]))
    if job.signals.signum is not None:
        return job.signals.exit_code
    if isinstance(job.error, Outage):
        return EXIT_OUTAGE
    return 0 if after is not None and after["status"] == "success" else 1
