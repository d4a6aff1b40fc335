"""GET /wait/<wf>: answer a workflow's readiness as soon as it is final, woken by pub/sub.

The date gate (every step succeeded on a date: readiness.py) and the coverage gate (the
ledger covers a range: gates.py) both wait on notifier.Notifier, which wakes them when
the workflow changes.
"""
from __future__ import annotations

import logging
import math
import re
import time
from datetime import date, timedelta

from flask import Blueprint, current_app, request

from ..rules import gates, names, readiness, repair, times
from .db import get_store, services
from ..errors import InvalidParameter, JobNotFound
from .auth import check_wait_token
from .http import endpoint, json_response, params
from .schema import param
from ..storage.notifier import Notifier

log = logging.getLogger("batchy")
bp = Blueprint("wait", __name__)

MAX_JOBS = 1000
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")



def notifier() -> Notifier:
    return services().notifier


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


@endpoint(bp, "/wait/<wf>", summary="Block until the workflow is done for a date, or the timeout", schema="Verdict",
          auth=check_wait_token, params=[
              param("date", schema={"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}),
              param("tz", example="UTC"),
              {**param("job", schema={"type": "array", "items": {"type": "string"}},
                       description="Only these jobs: the parameter repeated, or names separated by commas"),
               "style": "form", "explode": True},
              param("timeout", schema={"type": "number", "minimum": 0, "maximum": 60}),
              param("while", schema={"type": "string", "enum": ["waiting", "failed"]}),
              param("through", description="a coverage gate: ISO-8601, today, yesterday or now", example="today"),
              param("since", description="start of the range (default: 24 h before through)"),
              param("deadline", description="ISO-8601 or HH:MM today in tz"),
              param("on_deadline", schema={"type": "string", "enum": list(ON_DEADLINE)}),
              param("max_hole_minutes", schema={"type": "number", "minimum": 0},
                    description="A coverage gate tolerates holes no longer than this (default 0: none)")])
def wait(wf):
    """Return wf's readiness for a date once it is no longer `while` (waiting), or at the timeout."""
    params()
    day, tz_name, jobs, timeout, hold = _params(request.args)
    for job in jobs:
        names.check_job(job, wf)
    tz = times.zone(tz_name)
    store = get_store()
    started = time.monotonic()
    now = store.now()
    since, through, gate_deadline, action = _gate_params(request.args, now, tz)
    tolerance = _max_hole_minutes(request.args) * 60
    if gate_deadline is not None:  # wait no longer than the deadline
        timeout = max(0.0, min(timeout, (gate_deadline - now).total_seconds()))
    deadline = started + timeout
    if day is None:
        day = readiness.today(now, tz)
    today = readiness.today(now, tz)
    hub = notifier()

    def judge(state):
        if through is not None:
            found, ledgers, settings = state
            selected = _selected(wf, found, jobs)
            result = gates.coverage_verdict(found, ledgers, selected, since, through, tz, settings, tolerance,
                                            lambda: _given_up(wf, ledgers))
            if result["state"] != gates.MISSED:
                return result
            # What backfills fill is read before the ledger is read again: a chunk that
            # succeeds in between is in one of them.
            filling = _filling(wf)
            again = read()
            if again != state:  # changed meanwhile (rarely): judge what is there now
                found, ledgers, settings = again
                selected = _selected(wf, found, jobs)
                result = gates.coverage_verdict(found, ledgers, selected, since, through, tz, settings, tolerance,
                                                lambda: _given_up(wf, ledgers))
            return gates.refilled(result, filling)
        return gates.date_missed(readiness.verdict(state, jobs, day, tz, wf), day, today)

    def read():
        return services().history.gate_state(wf) if through is not None else store.status(wf)

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
            if deadline - time.monotonic() <= 0:
                break  # time is up: answer now with the verdict we have, never later
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


def _max_hole_minutes(args) -> float:
    """Return the longest hole a coverage gate tolerates, in minutes (0: none)."""
    raw = args.get("max_hole_minutes", "")
    if raw == "":
        return 0.0
    try:
        minutes = float(raw)
        if not math.isfinite(minutes) or minutes < 0 or len(raw) > 30:
            raise ValueError
    except ValueError:
        raise InvalidParameter(f"max_hole_minutes must be a number of minutes >= 0, not {raw[:40]!r}",
                               parameter="max_hole_minutes") from None
    if args.get("through") is None:
        raise InvalidParameter("max_hole_minutes needs through: it loosens a coverage gate", parameter="max_hole_minutes")
    return minutes


def _filling(wf: str) -> dict[str, list]:
    """Return {job: merged [[start, end], ...]} running backfills of wf fill or may still fill."""
    return services().backfills.filling(wf)


def _given_up(wf: str, ledgers: dict) -> dict[str, list]:
    """Return {job: ranges} auto_backfill gave up on (the gate asks only over a hole it would repair)."""
    return repair.given_up(services().backfills.list(wf), ledgers)


def _selected(wf: str, found: dict, jobs: list[str]) -> list[str]:
    names_ = list(dict.fromkeys(jobs)) if jobs else list(found)
    for name in names_:
        if name not in found:
            raise JobNotFound(f"workflow {wf!r} has no job {name!r} (jobs: {', '.join(sorted(found))})",
                              workflow=wf, job=name)
    return names_
