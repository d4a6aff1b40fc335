"""`batchy backfill run`: N threads lease a backfill's chunks and run a command on each, over HTTP.

BackfillClient calls the backfill endpoints through batchy.client's transport (its URL,
token and retries); every `batchy backfill` command uses it (backfill.py).
"""
from __future__ import annotations

import json
import sys
import threading
import urllib.parse

from ..client import Batchy, ServiceError
from .run import base_env, execute, stop_command, window_env

POLL_SECONDS = 1.0  # at most, a backfill worker with nothing due waits this long for another's chunk to end
DEFAULT_LEASE_SECONDS = 3600.0  # the service's default, when --lease-seconds is not given
MIN_BEAT_SECONDS = 0.1  # a heartbeat renews every third of the lease, but never more often than this


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

    def renew(self, wf: str, backfill_id: int, chunk: int, attempt: int, lease_seconds: float | None = None,
              retry: bool = True) -> dict:
        """Renew one attempt's lease of a chunk; safe to retry (a heartbeat does not: its next
        beat is the retry)."""
        return self._call("POST", self._path(wf, backfill_id, "renew"), body={
            "chunk": chunk, "attempt": attempt, "lease_seconds": lease_seconds}, retry=retry)

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
                 progress: Progress | None = None):
        self.api = api
        self.wf = wf
        self.backfill_id = backfill_id
        self.command = command
        self.lease_seconds = lease_seconds
        self.chunk_timeout = chunk_timeout
        self.poll = POLL_SECONDS if poll is None else poll
        self.progress = progress or Progress()
        self.changed = threading.Condition()  # a worker finished a chunk, or stopped
        self.busy = 0  # workers leasing or running a chunk now
        self.stop = threading.Event()
        self.error: Exception | None = None
        self.running: set = set()  # the commands running now, each in a session of its own

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
            self.stop.set()
            for proc in list(self.running):  # in sessions of their own: Ctrl-C reached us only
                stop_command(proc)  # their chunks fail
            with self.changed:  # a join interrupted once may return early: wait for the workers' own word
                while self.busy and self.changed.wait(5):
                    pass
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

    def heartbeat(self, lease: dict, done: threading.Event, running: list) -> None:
        """While the command runs, renew the chunk's lease every third of it, so a command that
        runs longer than its lease keeps its chunk: nobody else is handed it meanwhile.

        A renewal refused (409: another worker took the chunk after this lease ran out, the
        service having been unreachable for a whole lease) stops the command: the chunk is
        the other worker's now. A renewal that fails otherwise is tried again next beat.
        """
        seconds = self.lease_seconds or DEFAULT_LEASE_SECONDS
        while not done.wait(max(MIN_BEAT_SECONDS, seconds / 3)):
            try:
                self.api.renew(self.wf, self.backfill_id, lease["chunk"], lease["attempt"], seconds, retry=False)
            except (ServiceError, OSError) as exc:
                if done.is_set():
                    return  # the command ended meanwhile: its close says what happened
                lost = isinstance(exc, ServiceError) and exc.status == 409
                self.progress.note(f"chunk {lease['chunk']} attempt {lease['attempt']}: lease not renewed: "
                                   f"{getattr(exc, 'message', exc)}" + ("; stopping its command" if lost else ""))
                if lost:
                    for proc in running:
                        stop_command(proc)
                    return

    def run_chunk(self, lease: dict) -> None:
        name = lease["job"]
        env = {**base_env(), **window_env(self.wf, {name: lease}, name), "BATCHY_JOB": name,
               "BATCHY_BACKFILL_ID": str(self.backfill_id), "BATCHY_CHUNK": str(lease["chunk"]),
               "BATCHY_ATTEMPT": str(lease["attempt"])}
        done = threading.Event()
        running: list = []  # the command's process, once started: the heartbeat may stop it
        timers: list[threading.Timer] = []
        timed_out = threading.Event()

        def started(proc) -> None:
            running.append(proc)
            self.running.add(proc)
            if self.chunk_timeout is not None:
                def stop() -> None:
                    if proc.poll() is None:
                        timed_out.set()
                        stop_command(proc)
                timer = threading.Timer(self.chunk_timeout, stop)
                timer.daemon = True
                timer.start()
                timers.append(timer)

        beat = threading.Thread(target=self.heartbeat, args=(lease, done, running), name="backfill-heartbeat",
                                daemon=True)
        beat.start()
        try:
            code, tail, records = execute(self.command, env, started)
        finally:
            done.set()  # the heartbeat stops; a renewal in flight does not hold up the close
            for timer in timers:
                timer.cancel()
            self.running.difference_update(running)
        if timed_out.is_set():
            tail = f"stopped after --chunk-timeout {self.chunk_timeout:g} s" + (
                f": {tail.strip()}" if tail.strip() else "")
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
                 lease_seconds: float | None = None, chunk_timeout: float | None = None, poll: float | None = None,
                 progress: Progress | None = None) -> int:
    """Run a backfill's chunks with parallel workers; return 0 when every chunk succeeded, else 1."""
    progress = progress or Progress()
    before = api.status(wf, backfill_id)
    due = before["progress"]["pending"] + before["progress"]["leased"]
    progress.note(f"backfill {backfill_id} of {wf}: {before['progress']['chunks']} chunk(s), {due} to run, "
                  f"{parallel} worker(s)")
    job = BackfillRun(api, wf, backfill_id, command, lease_seconds=lease_seconds, chunk_timeout=chunk_timeout,
                      poll=poll, progress=progress)
    job.run(parallel)
    progress.end()
    if job.error is not None:
        progress.note(f"batchy backfill run: stopped: {getattr(job.error, 'message', job.error)}")
    after = api.status(wf, backfill_id)
    counts = after["progress"]
    progress.note(f"backfill {backfill_id} of {wf}: {after['status']}: " + ", ".join(
        f"{counts[s]} {s}" for s in ("success", "failed", "cancelled", "leased", "pending") if counts[s]))
    return 0 if after["status"] == "success" else 1
