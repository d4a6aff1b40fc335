"""Waitsy: block until Batchy workflows succeeded on a date, or their data covers a range.

Standard library only, and no import from batchy: this package is copied to
scheduler machines that have Python and nothing else.
"""
from __future__ import annotations

import argparse
import os
import queue
import re
import sys
import threading
import time
import urllib.parse
from datetime import date, datetime, timezone

from . import times
from .errors import NoWaitRoute, UsageError
from .readiness import FAILED, MISSED, READY
from .report import Reporter, signature, summary
from .service import Service
from .watch import Gate, Watcher

__all__ = ["main", "build_parser", "DEFAULT_URL", "EXIT_READY", "EXIT_TIMEOUT", "EXIT_FAILED", "EXIT_USAGE",
           "EXIT_MISSED", "EXIT_SKIP", "Watcher", "NoWaitRoute"]

DEFAULT_URL = "http://127.0.0.1:5000"
# The exit codes, one table in docs/waitsy.md: 0-3 as ever, 4 and 5 added with coverage gates.
EXIT_READY = 0  # ready; also --on-deadline proceed at the deadline
EXIT_TIMEOUT = 1  # --timeout passed; also --on-deadline fail at the deadline
EXIT_FAILED = 2  # a selected step failed on the date (--fail-on-error)
EXIT_USAGE = 3  # usage error, unknown workflow or job, refused token, --through on a service without it
EXIT_MISSED = 4  # can never be ready: a hole behind the watermark, or a date that is over
EXIT_SKIP = 5  # --on-deadline skip at the deadline
ON_DEADLINE = ("fail", "proceed", "skip")
# A deadline that passed before every workflow answered once (one already past at the
# start, say) waits this much longer for the first answers: one may well say "ready".
DEADLINE_GRACE = 2.0
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")

EPILOG = """\
exit codes:
  0  ready (or --on-deadline proceed, after a warning on stderr)
  1  timed out (--timeout), or the deadline passed with --on-deadline fail
  2  a selected step failed on the date and is not being rerun (--fail-on-error)
  3  usage error, unknown workflow or job, refused token, or --through on a service without it
  4  missed: it can never be ready (a hole behind the watermark: rewind or backfill; a date that is over)
  5  the deadline passed with --on-deadline skip (mark the step skipped)

A date gate (the default, or --date) is ready when every selected step has status
success with a batch_end on the date in --tz; the date is fixed when waitsy starts.
A coverage gate (--through) is ready when every selected step's successful windows
cover all of [--since, --through). A service that is down or restarting is not an
error: waitsy says so and keeps trying until --timeout or --deadline. It waits through
GET /wait/<wf> (push) and, for a date gate, falls back to polling /get_status/<wf>
every --interval on an older service.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse would exit 2, which here means "failed": usage errors are 3.
        raise UsageError(f"{message} (see waitsy --help)")


def build_parser() -> argparse.ArgumentParser:
    """Return waitsy's argument parser."""
    parser = _Parser(
        prog="waitsy",
        description="Wait until every job step of Batchy workflows has succeeded on a date (default: today), "
                    "or until their data covers a range of time (--through).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-wf", "--workflow", action="append", required=True, metavar="NAME",
                        help="workflow to wait for (repeat to wait for all of them)")
    parser.add_argument("--job", action="append", default=[], metavar="[WF:]NAME",
                        help="only this step (repeatable); a bare NAME applies to every workflow given")
    parser.add_argument("--url", default=os.environ.get("BATCHY_URL") or DEFAULT_URL,
                        help="Batchy service (default: $BATCHY_URL, else %(default)s)")
    parser.add_argument("--interval", type=float, default=10.0, metavar="SECONDS",
                        help="poll period against a service without /wait (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="give up (exit 1) after this long (default: wait forever)")
    parser.add_argument("--date", metavar="YYYY-MM-DD", help="the date the steps must succeed on (default: today in --tz)")
    parser.add_argument("--through", metavar="T",
                        help="a coverage gate instead: wait until the steps' data covers [--since, T); "
                             "T is ISO-8601 (no offset: in --tz), today (midnight), yesterday or now")
    parser.add_argument("--since", metavar="S", help="the start of the range (default: 24 h before --through)")
    parser.add_argument("--max-hole-minutes", type=float, default=0, metavar="N",
                        help="with --through: tolerate holes (gaps, invalidated ranges, failed quality checks) no "
                             "longer than N minutes (default 0: none)")
    parser.add_argument("--tz", default="UTC", metavar="ZONE",
                        help="IANA zone of the calendar: --date, today, times without an offset (default: UTC)")
    parser.add_argument("--deadline", metavar="T",
                        help="stop waiting at T (HH:MM today in --tz, or ISO-8601) and do --on-deadline")
    parser.add_argument("--on-deadline", choices=ON_DEADLINE, default=None,
                        help="at the deadline: fail (exit 1, default), proceed (exit 0 after a warning) "
                             "or skip (exit 5)")
    parser.add_argument("--fail-on-error", action="store_true",
                        help="exit 2 as soon as a selected step failed on the date and is not being rerun")
    parser.add_argument("--token", default=os.environ.get("BATCHY_API_TOKEN") or None,
                        help="API token (default: $BATCHY_API_TOKEN)")
    parser.add_argument("--heartbeat", type=float, default=60.0, metavar="SECONDS",
                        help="print a still-waiting line this often (default: %(default)s)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("-q", "--quiet", action="store_true", help="print nothing but errors and warnings (stderr)")
    output.add_argument("--json", action="store_true", help="print one JSON object per line instead of text")
    return parser


def _options(args) -> tuple[dict[str, list[str]], Gate]:
    workflows = list(dict.fromkeys(args.workflow))
    for wf in workflows:
        if not NAME_RE.fullmatch(wf):
            raise UsageError(f"invalid workflow name {wf!r}")
    selected: dict[str, list[str]] = {wf: [] for wf in workflows}
    for item in args.job:
        wf, _, job = item.rpartition(":")
        if not NAME_RE.fullmatch(job):
            raise UsageError(f"invalid job name {job!r}")
        if wf and wf not in selected:
            raise UsageError(f"--job {item}: workflow {wf!r} is not one of the -wf given")
        for name in [wf] if wf else workflows:
            if job not in selected[name]:
                selected[name].append(job)
    if not (args.interval > 0) or args.interval != args.interval or args.interval == float("inf"):
        raise UsageError("--interval must be a number of seconds > 0")
    if args.timeout is not None and not (0 <= args.timeout < float("inf")):
        raise UsageError("--timeout must be a number of seconds >= 0")
    if not (args.heartbeat > 0):
        raise UsageError("--heartbeat must be a number of seconds > 0")
    if not urllib.parse.urlsplit(args.url).scheme in ("http", "https"):
        raise UsageError(f"--url must start with http:// or https://, not {args.url!r}")
    tz = times.zone(args.tz)
    gate = Gate(tz=tz, tz_name=args.tz)
    if args.through is not None:
        if args.date:
            raise UsageError("--date and --through are two kinds of gate: give one")
        gate.through = times.gate_time(args.through, "--through", tz)
        gate.since = times.gate_time(args.since, "--since", tz) if args.since is not None else None
        if not (args.max_hole_minutes >= 0) or args.max_hole_minutes == float("inf"):
            raise UsageError("--max-hole-minutes must be a number of minutes >= 0")
        gate.max_hole_minutes = args.max_hole_minutes
    elif args.since is not None:
        raise UsageError("--since needs --through, the end of the range to wait for")
    elif args.max_hole_minutes:
        raise UsageError("--max-hole-minutes needs --through: it loosens a coverage gate")
    elif args.date:
        try:
            if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", args.date):
                raise ValueError
            gate.day = date.fromisoformat(args.date)
        except ValueError:
            raise UsageError(f"--date must be YYYY-MM-DD, not {args.date!r}") from None
    else:
        gate.day = datetime.now(tz).date()
    if args.deadline is not None:
        gate.deadline = times.deadline(args.deadline, tz, datetime.now(timezone.utc))
        gate.on_deadline = args.on_deadline or "fail"
    elif args.on_deadline is not None:
        raise UsageError("--on-deadline needs --deadline")
    return selected, gate


def main(argv=None) -> int:
    """Run waitsy with argv (default sys.argv[1:]); return the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # --wf, as -wf is spelt with the one dash long options do not have: taken, not "-wf is required"
    argv = ["--workflow" if a == "--wf" else "--workflow=" + a[5:] if a.startswith("--wf=") else a for a in argv]
    try:
        args = build_parser().parse_args(argv)
        selected, gate = _options(args)
    except UsageError as exc:
        print(f"waitsy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    reporter = Reporter("quiet" if args.quiet else "json" if args.json else "text")
    try:
        return _wait(args, selected, gate, reporter)
    except KeyboardInterrupt:
        print("waitsy: interrupted", file=sys.stderr)
        return 130


def _goal(gate: Gate, latest: dict | None = None, done: bool = False) -> str:
    """Return what the gate waits for, in words (with the service's resolved range once known)."""
    if not gate.coverage:
        return f"{'succeeded' if done else 'succeed'} on {gate.day.isoformat()}"
    answer = next((v for v in (latest or {}).values() if v.get("through")), None)
    if answer:
        return f"{'covered' if done else 'cover'} {answer.get('since')} to {answer['through']}"
    start = f"from {gate.since}" if gate.since else "the 24 h"
    return f"cover {start} up to {gate.through}"


def _wait(args, selected: dict[str, list[str]], gate: Gate, reporter: Reporter) -> int:
    started = time.monotonic()
    timeout_end = None if args.timeout is None else started + args.timeout
    deadline_end = grace_end = None
    if gate.deadline is not None:
        deadline_end = started + (gate.deadline - datetime.now(timezone.utc)).total_seconds()
        grace_end = max(deadline_end, started) + DEADLINE_GRACE
    ends = [end for end in (timeout_end, deadline_end) if end is not None]
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    service = Service(args.url, args.token)
    what = ", ".join(f"{wf}" + (f" ({', '.join(jobs)})" if jobs else "") for wf, jobs in selected.items())
    until = "forever" if timeout_end is None else f"up to {args.timeout:g}s"
    if gate.deadline is not None:
        until += f", deadline {gate.deadline.isoformat()} (then {gate.on_deadline})"
    reporter.emit("start", f"waiting for {what} to {_goal(gate)} ({args.tz}) at {service.url}, {until}",
                  workflows=selected, date=gate.day.isoformat() if gate.day else None, through=gate.through,
                  since=gate.since, tz=args.tz, deadline=gate.deadline.isoformat() if gate.deadline else None,
                  on_deadline=gate.on_deadline if gate.deadline else None)
    for wf, jobs in selected.items():
        Watcher(wf, jobs, gate, service, args.interval, min(ends) if ends else None, events, stop).start()
    latest: dict[str, dict] = {}
    shown: dict[str, tuple] = {}
    down = False
    next_beat = started + args.heartbeat

    def finish(code: int, outcome: str, text: str, **data) -> int:
        stop.set()
        reporter.emit("result", text, outcome=outcome, exit=code, workflows=latest,
                      waited=round(time.monotonic() - started, 3), **data)
        return code

    def pending() -> str:
        return "; ".join(summary(wf, latest[wf]) if wf in latest else f"{wf}: no answer yet" for wf in selected
                         if latest.get(wf, {}).get("state") != READY)

    def at_deadline() -> int:
        action, at = gate.on_deadline, gate.deadline.isoformat()
        if action == "proceed":
            # The step runs on incomplete data: say so where a scheduler's log keeps it, even with --quiet.
            print(f"waitsy: WARNING: deadline {at} passed before {what} was ready; proceeding with the data "
                  f"that is there (--on-deadline proceed): {pending()}", file=sys.stderr, flush=True)
            return finish(EXIT_READY, "deadline", f"deadline {at} passed: proceeding; {pending()}", action=action)
        if action == "skip":
            return finish(EXIT_SKIP, "deadline", f"deadline {at} passed: skipping the step; {pending()}",
                          action=action)
        return finish(EXIT_TIMEOUT, "deadline", f"deadline {at} passed; {pending()}", action=action)

    try:
        while True:
            if len(latest) == len(selected) and all(v.get("state") == READY for v in latest.values()):
                return finish(EXIT_READY, READY, f"ready: {', '.join(selected)} {_goal(gate, latest, done=True)}")
            missed = [wf for wf, v in latest.items() if v.get("state") == MISSED]
            if missed:
                text = "; ".join(summary(wf, latest[wf]) for wf in missed)
                return finish(EXIT_MISSED, MISSED, f"missed, it can never be ready: {text}")
            failed = [wf for wf, v in latest.items() if v.get("state") == FAILED]
            if failed and args.fail_on_error:
                text = "; ".join(summary(wf, latest[wf]) for wf in failed)
                return finish(EXIT_FAILED, FAILED, f"failed: {text}")
            now = time.monotonic()
            if any((v.get("deadline") or {}).get("passed") for v in latest.values()):
                return at_deadline()  # by the service's clock
            if deadline_end is not None and now >= deadline_end and (
                    len(latest) == len(selected) or down or now >= grace_end):
                return at_deadline()
            if timeout_end is not None and now >= timeout_end:
                return finish(EXIT_TIMEOUT, "timeout", f"timed out after {args.timeout:g}s; {pending()}")
            wakes = [next_beat] + ([timeout_end] if timeout_end is not None else [])
            if deadline_end is not None:
                wakes.append(deadline_end if now < deadline_end else grace_end)
            try:
                kind, wf, payload = events.get(timeout=max(0.0, min(wakes) - now))
            except queue.Empty:
                if time.monotonic() >= next_beat:
                    next_beat += args.heartbeat
                    waited = int(time.monotonic() - started)
                    reporter.emit("heartbeat", f"still waiting after {waited}s: {pending()}", waited=waited)
                continue
            if kind == "usage":
                stop.set()
                print(f"waitsy: {payload}", file=sys.stderr)
                return EXIT_USAGE
            if kind == "down":
                if not down:
                    down = True
                    reporter.emit("unavailable", f"service unavailable ({payload}); retrying until "
                                  + ("the timeout" if timeout_end is not None else "the deadline" if deadline_end is not None
                                     else "it answers"), reason=payload)
                continue
            if kind == "notice":
                reporter.emit("notice", f"{wf}: {payload}")
                continue
            if down:
                down = False
                reporter.emit("available", "service answers again")
            latest[wf] = payload
            seen = signature(payload)
            if shown.get(wf) != seen:
                shown[wf] = seen
                line = summary(wf, payload)
                if payload.get("state") == FAILED and not args.fail_on_error:
                    line += " (a rerun may still succeed; --fail-on-error stops here)"
                reporter.emit("change", line, workflow=wf, state=payload.get("state"))
    finally:
        stop.set()


if __name__ == "__main__":
    sys.exit(main())
