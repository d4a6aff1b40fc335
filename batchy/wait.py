"""GET /wait/<wf>: answer a workflow's readiness as soon as it is final, woken by pub/sub.

Every state change PUBLISHes on keys.channel(wf). One listener thread per process
PSUBSCRIBEs keys.CHANNEL_PATTERN; when a workflow somebody waits on changes, it reads
the workflow once and wakes that workflow's waiters through a Condition, so N waiters
cost one Redis connection and one read per change, not N of each.
"""
from __future__ import annotations

import logging
import math
import os
import re
import signal
import threading
import time
from contextlib import contextmanager
from datetime import date, timedelta

import redis
from flask import Blueprint, current_app, request

from . import gates, keys, names, readiness, times
from .http import check_wait_token, json_response, unknown_parameter
from .db import get_store
from .errors import BatchyError, InvalidParameter, JobNotFound, TooManyWaiters, Unavailable

log = logging.getLogger("batchy")
bp = Blueprint("wait", __name__)

EXTENSION = "batchy_wait"
SLICE = 0.5  # seconds the listener blocks on pub/sub before checking for shutdown
MAX_JOBS = 1000
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")



class _Watch:
    """The waiters of one workflow: how many, the change count, the last state read."""

    def __init__(self, lock: threading.Lock):
        self.waiters = 0
        self.generation = 0
        self.jobs: dict | None = None
        self.changed = threading.Condition(lock)


class Notifier:
    """One pub/sub listener per process that wakes the requests waiting on a workflow."""

    def __init__(self, store, subscribe_timeout: float, max_waiters: int):
        self.store = store
        self.subscribe_timeout = subscribe_timeout
        self.max_waiters = max_waiters
        self.waiters = 0
        self.closing = False
        self._lock = threading.Lock()
        self._watches: dict[str, _Watch] = {}
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._worker = None

    def start(self) -> None:
        """Start the listener thread in this process unless it runs already."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive() and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._subscribed.clear()
            self._worker = _gunicorn_worker()
            self._thread = threading.Thread(target=self._run, name="batchy-wait-listener", daemon=True)
            self._thread.start()

    def subscribe(self) -> None:
        """Make sure changes reach us from now on, else raise Unavailable."""
        self.start()
        if not self._subscribed.wait(self.subscribe_timeout):
            raise Unavailable("Redis pub/sub is not reachable; try again shortly.")

    @contextmanager
    def watch(self, wf: str):
        """Register a waiter on wf for the duration of the block, or raise TooManyWaiters."""
        with self._lock:
            if self.waiters >= self.max_waiters:
                # Each waiter holds a worker thread: past the cap it would take one that
                # open/close needs. Waitsy retries a 503 after a pause.
                raise TooManyWaiters(
                    f"this service process already holds {self.max_waiters} /wait requests "
                    "(BATCHY_WAIT_MAX_WAITERS); retry shortly"
                )
            self.waiters += 1
            watch = self._watches.get(wf)
            if watch is None:
                watch = self._watches[wf] = _Watch(self._lock)
            watch.waiters += 1
        try:
            yield watch
        finally:
            with self._lock:
                self.waiters -= 1
                watch.waiters -= 1
                if watch.waiters == 0 and self._watches.get(wf) is watch:
                    del self._watches[wf]

    def wait(self, watch: _Watch, seen: int, timeout: float) -> tuple[int, dict | None]:
        """Block until the workflow changed after generation seen (or timeout); return (generation, jobs)."""
        with self._lock:
            if watch.generation == seen and not self.closing:
                watch.changed.wait(timeout)
            return watch.generation, watch.jobs

    # -- the listener thread ---------------------------------------------------

    def _run(self) -> None:
        backoff = 0.1
        lost = False
        while not self._stopping():
            pubsub = None
            try:
                pubsub = self.store.redis.pubsub()
                pubsub.psubscribe(keys.CHANNEL_PATTERN)
                while not self._stopping():
                    message = pubsub.get_message(timeout=SLICE)
                    if message is None:
                        continue
                    if message["type"] == "psubscribe":
                        self._subscribed.set()
                        backoff = 0.1
                        if lost:
                            log.warning("wait listener: pub/sub is back")
                            lost = False
                        # Changes published while we were not subscribed were missed.
                        self._refresh(None)
                    elif message["type"] == "pmessage":
                        changed = {keys.workflow_from_channel(message["channel"])}
                        # Drain a burst first: one read per workflow, however many changes.
                        while (more := pubsub.get_message(timeout=0)) is not None:
                            if more["type"] == "pmessage":
                                changed.add(keys.workflow_from_channel(more["channel"]))
                        self._refresh(changed)
            except (redis.RedisError, OSError, ValueError) as exc:
                if not lost:
                    log.warning("wait listener lost Redis pub/sub (%s); reconnecting", exc)
                    lost = True
                self._subscribed.clear()
                self._refresh(None, read=False)
                self._sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            except Exception:  # noqa: BLE001 - the listener must outlive any surprise
                log.exception("wait listener failed; restarting it")
                self._subscribed.clear()
                self._sleep(1.0)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001 - closing a dead connection
                        pass
        self._subscribed.clear()
        with self._lock:
            self.closing = True
            for watch in self._watches.values():
                watch.changed.notify_all()

    def _stopping(self) -> bool:
        # gunicorn's graceful stop waits for in-flight requests: answer waiters at once
        # so a restart takes a moment, not graceful_timeout.
        return self.closing or (self._worker is not None and not getattr(self._worker, "alive", True))

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping() and time.monotonic() < deadline:
            time.sleep(min(SLICE, max(0.0, deadline - time.monotonic())))

    def _refresh(self, changed: set[str] | None, read: bool = True) -> None:
        """Read each changed workflow somebody waits on once, then wake its waiters."""
        with self._lock:
            wanted = [wf for wf in self._watches if changed is None or wf in changed]
        for wf in wanted:
            jobs = None
            if read:
                try:
                    jobs = self.store.status(wf)
                except (BatchyError, redis.RedisError, OSError, ValueError):
                    jobs = None  # each waiter reads for itself and answers the error
            with self._lock:
                watch = self._watches.get(wf)
                if watch is not None:
                    watch.generation += 1
                    watch.jobs = jobs
                    watch.changed.notify_all()


def _gunicorn_worker():
    """Return the gunicorn worker running this process, if any (its SIGTERM handler's owner)."""
    owner = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
    if owner is not None and type(owner).__module__.startswith("gunicorn.workers") and hasattr(owner, "alive"):
        return owner
    return None


def notifier() -> Notifier:
    app = current_app
    found = app.extensions.get(EXTENSION)
    if found is None:
        found = app.extensions.setdefault(
            EXTENSION,
            Notifier(get_store(), app.config["BATCHY_REDIS_TIMEOUT"] + 1.0, app.config["BATCHY_WAIT_MAX_WAITERS"]),
        )
    return found


# -- the endpoint ------------------------------------------------------------------


def _params(args) -> tuple[date | None, str, list[str], float, str]:
    """Return (date, tz name, jobs, timeout, while) from the query, or raise InvalidParameter."""
    day = None
    raw_date = args.get("date", "")
    if raw_date:
        try:
            if not _DATE_RE.fullmatch(raw_date):
                raise ValueError
            day = date.fromisoformat(raw_date)
        except ValueError:
            raise InvalidParameter(f"date must be YYYY-MM-DD, not {raw_date[:40]!r}", parameter="date") from None
    tz_name = args.get("tz", "") or "UTC"
    try:
        times.zone(tz_name)
    except (ValueError, TypeError) as exc:
        raise InvalidParameter(str(exc), parameter="tz") from None
    jobs = [name for value in args.getlist("job") for name in value.split(",") if name]
    if len(jobs) > MAX_JOBS:
        raise InvalidParameter(f"at most {MAX_JOBS} job parameters", parameter="job")
    limit = current_app.config["BATCHY_WAIT_MAX_SECONDS"]
    raw_timeout = args.get("timeout", "")
    timeout = limit
    if raw_timeout != "":
        try:
            timeout = float(raw_timeout)
            if not math.isfinite(timeout) or timeout < 0:
                raise ValueError
        except ValueError:
            raise InvalidParameter(
                f"timeout must be a number of seconds >= 0, not {raw_timeout[:40]!r}", parameter="timeout"
            ) from None
    hold = args.get("while", "") or readiness.WAITING
    if hold not in (readiness.WAITING, readiness.FAILED):
        raise InvalidParameter(f"while must be waiting or failed, not {hold[:40]!r}", parameter="while")
    return day, tz_name, jobs, min(timeout, limit), hold


PARAMETERS = ("date", "tz", "job", "timeout", "while", "through", "since", "deadline", "on_deadline")
ON_DEADLINE = ("fail", "proceed", "skip")


def _gate_params(args, now, tz) -> tuple:
    """Return (since, through, deadline, on_deadline) from the query (None when not asked)."""
    through = since = deadline = None
    try:
        if args.get("through"):
            through = gates.moment(args["through"], now, tz, "through")
            since = gates.moment(args["since"], now, tz, "since") if args.get("since") else \
                through - timedelta(hours=24)
        elif args.get("since"):
            raise InvalidParameter("since needs through: the end of the range to wait for", parameter="since")
        if args.get("deadline"):
            text = args["deadline"]
            if re.fullmatch(r"[0-9]{1,2}:[0-9]{2}", text):  # HH:MM today in tz
                hour, minute = (int(x) for x in text.split(":"))
                deadline = now.astimezone(tz).replace(hour=hour, minute=minute, second=0, microsecond=0)
            else:
                deadline = gates.moment(text, now, tz, "deadline")
    except ValueError as exc:
        raise InvalidParameter(str(exc), parameter="through") from None
    if through is not None and since >= through:
        raise InvalidParameter("since must be earlier than through", parameter="since")
    action = args.get("on_deadline") or "fail"
    if action not in ON_DEADLINE:
        raise InvalidParameter(f"on_deadline must be one of {', '.join(ON_DEADLINE)}, not {action[:40]!r}",
                               parameter="on_deadline")
    return since, through, deadline, action


@bp.get("/wait/<wf>")
def wait(wf):
    """Return wf's readiness for a date once it is no longer `while` (waiting), or at the timeout."""
    check_wait_token()
    names.check_workflow(wf)
    for name in request.args:
        if name not in PARAMETERS:
            raise unknown_parameter(name, PARAMETERS)
    day, tz_name, jobs, timeout, hold = _params(request.args)
    for job in jobs:
        names.check_job(job, wf)
    tz = times.zone(tz_name)
    store = get_store()
    started = time.monotonic()
    now = store.now()
    since, through, gate_deadline, action = _gate_params(request.args, now, tz)
    if gate_deadline is not None:  # wait no longer than the deadline
        timeout = max(0.0, min(timeout, (gate_deadline - now).total_seconds()))
    deadline = started + timeout
    if day is None:
        day = readiness.today(now, tz)
    today = readiness.today(now, tz)
    hub = notifier()

    def judge(state):
        if through is not None:
            found, ledgers = state
            selected = _selected(wf, found, jobs)
            return gates.coverage_verdict(found, ledgers, selected, since, through)
        return gates.date_missed(readiness.verdict(state, jobs, day, tz, wf), day, today)

    def read():
        return store.gate_state(wf) if through is not None else store.status(wf)

    with hub.watch(wf) as watch:
        if timeout > 0:
            hub.subscribe()  # before the first read, so no change can slip between
        seen = watch.generation
        state = read()
        while True:
            result = judge(state)
            remaining = deadline - time.monotonic()
            if result["state"] != hold or remaining <= 0 or hub.closing:
                break
            generation, fresh = hub.wait(watch, seen, remaining)
            if generation != seen:
                seen = generation
                # The listener read the jobs once for every waiter; None (or a coverage
                # gate, which needs the ledger too): read here.
                state = fresh if fresh is not None and through is None else read()
    waited = time.monotonic() - started
    body = {
        "workflow": wf,
        "date": day.isoformat(),
        "tz": tz_name,
        **result,
        "waited": round(waited, 3),
        "timeout": timeout,
        "timed_out": result["state"] == hold and not hub.closing,
    }
    if through is not None:
        body.update(since=times.format_time(since, tz), through=times.format_time(through, tz))
    if gate_deadline is not None:
        passed = not result["ready"] and store.now() >= gate_deadline.replace(microsecond=0)
        body["deadline"] = {"at": times.format_time(gate_deadline, tz), "passed": passed,
                            "action": action if passed else None}
    return json_response(body)


def _selected(wf: str, found: dict, jobs: list[str]) -> list[str]:
    names_ = list(dict.fromkeys(jobs)) if jobs else list(found)
    for name in names_:
        if name not in found:
            raise JobNotFound(f"workflow {wf!r} has no job {name!r} (jobs: {', '.join(sorted(found))})",
                              workflow=wf, job=name)
    return names_
