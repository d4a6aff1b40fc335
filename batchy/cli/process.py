"""The commands both runners start: each in a session of its own, its outcome decided when it
exits, stopped with everything it started; signals passed on; the service retried across an outage.

Shared by `batchy run` (run.py) and `batchy backfill run` (backfill_run.py).
"""
from __future__ import annotations

import codecs
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import NamedTuple

import click

from ..client import ServiceError
from ..rules import watermark

TAIL_CHARS = 2000  # of the command's stderr, sent as the failure's message
DEFAULT_GRACE_SECONDS = 10.0  # after passing on a signal (or a timeout), SIGKILL the command's session then
DEFAULT_OUTAGE_SECONDS = 120.0  # retry the service for this long (a Sentinel failover takes tens of seconds)
MAX_RECORDS = 10**14 - 1  # the largest count every endpoint keeps (a chunk's: Lua's JSON encoder)
DRAIN_SECONDS = 0.5  # read the command's stderr for this long after it exited, at most


class Ran(NamedTuple):
    """What a command's run left: its exit code, the tail of its stderr, the rows it said it
    loaded (BATCHY_RECORDS_FILE), why that was not sent (None when fine or empty), and what
    it attested of its load (BATCHY_ATTEST_FILE: checksum, dq, dq_message to close with)."""

    code: int
    tail: str
    records: int | None
    note: str | None
    attested: dict


def execute(command: list[str], env: dict[str, str], started=None, *, leave_children: bool = False,
            grace: float = DEFAULT_GRACE_SECONDS, exited=None) -> Ran:
    """Run command with env, a BATCHY_RECORDS_FILE and a BATCHY_ATTEST_FILE; return what it left (Ran).

    The command runs in a session of its own, so the terminal's Ctrl-C reaches batchy
    only, and batchy can stop the command with everything it started (Stop, stop_command).
    Its stderr still reaches ours as it comes; stdout is ours. The outcome is decided when
    the command exits, not when its stderr closes: what it left running is then stopped
    (its session: SIGTERM, SIGKILL after grace), or with leave_children left alone, and
    the rest of its stderr is read for DRAIN_SECONDS at most. A command killed by a signal
    exits 128 + the signal's number, as in a shell. started(proc) and exited(proc), when
    given, are called once the command runs and as soon as it has exited.
    """
    paths = []
    for prefix in ("batchy-records-", "batchy-attest-"):
        fd, path = tempfile.mkstemp(prefix=prefix)
        os.close(fd)
        paths.append(path)
    try:
        try:
            proc = subprocess.Popen(command, env={**env, "BATCHY_RECORDS_FILE": paths[0],
                                                  "BATCHY_ATTEST_FILE": paths[1]},
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            message = f"batchy: cannot run {command[0]!r}: {exc.strerror or exc}"
            complain(message)
            return Ran(127, message, None, None, {})
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
        records, note = _records(paths[0])
        return Ran(128 - code if code < 0 else code, tail, records, note, _attested(paths[1]))
    finally:
        for path in paths:
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
    complain(f"batchy: {note}")
    return None, note


def _attested(path: str, limit: int = 4096) -> dict:
    """Return what the command attested in its attest file: lines `checksum=TEXT`, `dq=pass`
    or `dq=fail`, `dq_message=TEXT` ({} when it wrote nothing). An attestation Batchy cannot
    read is not trusted: the window closes with dq=fail saying why, so it stays a hole until
    a backfill reloads it, rather than counting as covered on a verdict nobody could read."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(limit + 1)
    except OSError:
        return {}
    text = raw.decode("utf-8", "replace")
    if not text.strip():
        return {}
    given: dict[str, str] = {}
    why = None
    if len(raw) > limit:
        why = f"longer than {limit} bytes"
    for line in text.splitlines():
        if why or not line.strip():
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep or name not in watermark.ATTESTED:
            why = f"line {line[:40]!r} is not checksum=, dq= or dq_message="
        elif name in given:
            why = f"{name} is given twice"
        else:
            given[name] = value.strip() if name == "dq" else value.rstrip("\r")
    if why is None:
        try:
            return {name: value for name, value in watermark.attestation(
                given.get("checksum"), given.get("dq"), given.get("dq_message")).items() if value is not None}
        except ValueError as exc:
            why = str(exc)
    note = f"BATCHY_ATTEST_FILE could not be read ({why}): closed with dq=fail"
    complain(f"batchy: {note}")
    return {"dq": "fail", "dq_message": note[:500]}


def complain(message: str) -> None:
    """Say it on stderr."""
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
    """Return whether exc is an outage (no answer, a 503) or a 409 busy (the service says: retry),
    not the service's refusal."""
    return isinstance(exc, OSError) or (isinstance(exc, ServiceError) and (exc.status == 503 or exc.code == "busy"))


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
            (note or complain)(f"batchy: {what}: service unavailable ({getattr(last, 'message', None) or last}); "
                           f"retrying for up to {max(0.0, limit - now):.0f} s")
            told = True
        time.sleep(delay)
        delay = min(delay * 2, 2.0)
