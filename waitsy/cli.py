"""Waitsy: block until every job step of Batchy workflows succeeded on a date.

Standard library only, and no import from batchy: this package is copied to
scheduler machines that have Python and nothing else.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import date, datetime, timezone, tzinfo

EXIT_READY, EXIT_TIMEOUT, EXIT_FAILED, EXIT_USAGE = 0, 1, 2, 3
DEFAULT_URL = "http://127.0.0.1:5000"
PUSH_CHUNK = 55.0  # seconds per /wait request; the service caps it at BATCHY_WAIT_MAX_SECONDS anyway
HTTP_SLACK = 10.0  # extra seconds a /wait answer may take on the wire before we give up on it
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
READY, WAITING, FAILED = "ready", "waiting", "failed"
OUR_404 = ("workflow_not_found", "job_not_found")

EPILOG = """\
exit codes:
  0  ready: every selected step succeeded on the date
  1  timed out (--timeout) before that
  2  a selected step failed on the date and is not being rerun (--fail-on-error)
  3  usage error, unknown workflow or job, or the token was refused

"Ready" means status success with a batch_end on the date in --tz. The date is fixed
when waitsy starts. A service that is down or restarting is not an error: waitsy
says so and keeps trying until --timeout. It waits through GET /wait/<wf> (push)
and falls back to polling /get_status/<wf> every --interval on an older service.
"""


class UsageError(Exception):
    """Bad arguments, an unknown workflow or job, a refused token: exit 3."""


class Unreachable(Exception):
    """The service is down, restarting or overloaded: keep trying."""


class NoWaitRoute(Exception):
    """The service predates GET /wait: poll instead."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse would exit 2, which here means "failed": usage errors are 3.
        raise UsageError(f"{message} (see waitsy --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="waitsy",
        description="Wait until every job step of Batchy workflows has succeeded on a date (default: today).",
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
    parser.add_argument("--tz", default="UTC", metavar="ZONE",
                        help="IANA zone whose calendar --date and batch_end are read in (default: UTC)")
    parser.add_argument("--fail-on-error", action="store_true",
                        help="exit 2 as soon as a selected step failed on the date and is not being rerun")
    parser.add_argument("--token", default=os.environ.get("BATCHY_API_TOKEN") or None,
                        help="API token (default: $BATCHY_API_TOKEN)")
    parser.add_argument("--heartbeat", type=float, default=60.0, metavar="SECONDS",
                        help="print a still-waiting line this often (default: %(default)s)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--quiet", action="store_true", help="print nothing but usage errors")
    output.add_argument("--json", action="store_true", help="print one JSON object per line instead of text")
    return parser


# -- the readiness rule ------------------------------------------------------------
# A deliberate copy of batchy/readiness.py: waitsy may not import batchy. Keep the two
# in step; tests/test_waitsy.py checks that they agree.


def parse_time(value) -> datetime | None:
    """Return an ISO-8601 time as an aware datetime (no offset: UTC), or None."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    text = re.sub(r"([+-]\d\d)(\d\d)$", r"\1:\2", text) if "T" in text or " " in text else text
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def job_verdict(job: dict, day: date, tz: tzinfo) -> tuple[str, str]:
    """Return (ready|waiting|failed, reason) for one job on day in zone tz."""
    status = job.get("status") or "new"
    end = parse_time(job.get("batch_end"))
    end_day = end.astimezone(tz).date() if end else None
    if status == "success":
        if end_day is None:
            return WAITING, "success without a readable batch_end"
        if end_day == day:
            return READY, f"succeeded at {job['batch_end']}"
        when = "earlier" if end_day < day else "later"
        return WAITING, f"last success ended {end_day.isoformat()}, {when} than {day.isoformat()}"
    if status == "failed":
        if end_day == day:
            message = job.get("message")
            return FAILED, f"failed at {job['batch_end']}" + (f": {str(message)[:200]}" if message else "")
        shown = end_day.isoformat() if end_day else "an unknown date"
        return WAITING, f"last run failed on {shown}; waiting for a rerun"
    if status == "open":
        return WAITING, f"batch {job.get('batch_id')} open since {job.get('batch_start')}"
    return WAITING, "never run" if status == "new" else f"status {status!r}"


def verdict(jobs: dict, selected: list[str], day: date, tz: tzinfo, wf: str) -> dict:
    """Return {"state", "ready", "missing", "failed", "jobs"} like the service's /wait."""
    names = selected or list(jobs)
    for name in names:
        if name not in jobs:
            raise UsageError(f"workflow {wf!r} has no job {name!r} (jobs: {', '.join(sorted(jobs))})")
    detail = {}
    for name in names:
        state, reason = job_verdict(jobs[name], day, tz)
        detail[name] = {"state": state, "status": jobs[name].get("status"),
                        "batch_end": jobs[name].get("batch_end"), "reason": reason}
    failed = [n for n, d in detail.items() if d["state"] == FAILED]
    missing = [n for n, d in detail.items() if d["state"] != READY]
    state = FAILED if failed else WAITING if missing else READY
    return {"state": state, "ready": state == READY, "missing": missing, "failed": failed, "jobs": detail}


# -- talking to the service ----------------------------------------------------------


class Service:
    """The Batchy service over urllib: JSON answers, errors sorted into what to do next."""

    def __init__(self, url: str, token: str | None):
        self.url = url.rstrip("/")
        self.token = token

    def get(self, path: str, query: list[tuple[str, str]], timeout: float):
        """Return (status, parsed JSON body or None); raise Unreachable when it is down."""
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {"Accept": "application/json", "User-Agent": "waitsy"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, _json(response.read())
        except urllib.error.HTTPError as exc:
            body = _json(exc.read())
            if exc.code >= 500 or exc.code == 429:
                raise Unreachable(f"{exc.code} {_describe(body) or exc.reason}") from None
            return exc.code, body
        except (urllib.error.URLError, http.client.HTTPException, OSError, socket.timeout) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise Unreachable(str(reason) or type(exc).__name__) from None


def _json(raw: bytes):
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _describe(body) -> str:
    if isinstance(body, dict) and "error" in body:
        return f"{body.get('error')}: {body.get('message', '')}"
    return ""


def _is_batchy_error(body) -> bool:
    return isinstance(body, dict) and isinstance(body.get("error"), str) and "message" in body


class Watcher(threading.Thread):
    """Follow one workflow, push (/wait) first, and report each verdict on a queue."""

    def __init__(self, wf, jobs, day, tz, tz_name, service, interval, deadline, events, stop):
        super().__init__(name=f"waitsy-{wf}", daemon=True)
        self.wf, self.jobs, self.day, self.tz, self.tz_name = wf, jobs, day, tz, tz_name
        self.service, self.interval, self.deadline = service, interval, deadline
        self.events, self.stop = events, stop
        self.push = True
        self.hold = WAITING  # /wait answers once the verdict is no longer this
        self.first = True  # the first /wait returns at once, so the start state is shown
        self.quoted = urllib.parse.quote(wf, safe="")

    def run(self):
        backoff = 0.1
        while not self.stop.is_set():
            try:
                if self.push:
                    found = self._push()
                else:
                    found = self._poll()
                backoff = 0.1
                self.events.put(("verdict", self.wf, found))
                if found["state"] == READY:
                    return
                if self.push:
                    # After a failure, wait for it to change (a rerun), not for it again.
                    self.hold = FAILED if found["state"] == FAILED else WAITING
                else:
                    self.stop.wait(self._pause(self.interval))
            except NoWaitRoute:
                self.push = False
                self.events.put(("notice", self.wf, "the service has no /wait (older version): "
                                 f"polling /get_status every {self.interval:g}s"))
            except Unreachable as exc:
                self.events.put(("down", self.wf, str(exc)))
                self.stop.wait(self._pause(backoff))
                backoff = min(backoff * 2, max(min(self.interval, 2.0), 0.1))
            except UsageError as exc:
                self.events.put(("usage", self.wf, str(exc)))
                return
            except Exception as exc:  # noqa: BLE001 - never a traceback: report and retry
                self.events.put(("down", self.wf, f"unexpected {type(exc).__name__}: {exc}"))
                self.stop.wait(self._pause(backoff))
                backoff = min(backoff * 2, 2.0)

    def _remaining(self) -> float:
        return PUSH_CHUNK if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def _pause(self, seconds: float) -> float:
        return max(0.0, min(seconds, self._remaining()))

    def _query(self) -> list[tuple[str, str]]:
        return [("date", self.day.isoformat()), ("tz", self.tz_name)] + [("job", j) for j in self.jobs]

    def _push(self) -> dict:
        chunk = 0.0 if self.first else min(PUSH_CHUNK, self._remaining())
        started = time.monotonic()
        status, body = self.service.get(
            f"/wait/{self.quoted}", self._query() + [("timeout", f"{chunk:.3f}"), ("while", self.hold)], chunk + HTTP_SLACK
        )
        if status in (404, 405) and not (_is_batchy_error(body) and body["error"] in OUR_404):
            raise NoWaitRoute()
        result = self._checked(status, body)
        if self.first:
            self.first = False
        elif result["state"] == self.hold and time.monotonic() - started < min(chunk, 0.05):
            self.stop.wait(self._pause(0.05))  # a service answering at once must not make us spin
        return result

    def _poll(self) -> dict:
        status, body = self.service.get(f"/get_status/{self.quoted}", [], max(5.0, self.interval))
        jobs = self._checked(status, body, raw=True)
        return verdict(jobs, self.jobs, self.day, self.tz, self.wf)

    def _checked(self, status: int, body, raw: bool = False) -> dict:
        if status == 200 and isinstance(body, dict):
            return body
        if status == 200:
            raise Unreachable("the service answered something that is not JSON")
        if status == 404 and _is_batchy_error(body) and body["error"] in OUR_404:
            raise UsageError(body["message"])
        if status in (401, 403):
            raise UsageError(f"the service refused the token ({_describe(body) or status}): "
                             "pass --token or set BATCHY_API_TOKEN")
        if status == 404:
            raise UsageError(f"{self.service.url} does not look like a Batchy service (404 on /get_status)")
        raise UsageError(f"the service refused the request: {status} {_describe(body)}")


# -- output ---------------------------------------------------------------------------


class Reporter:
    """Print what a person (or, with --json, a program) needs: changes, heartbeats, the end."""

    def __init__(self, mode: str, stream=None):
        self.mode = mode  # text, json or quiet
        self.stream = stream or sys.stdout

    def emit(self, event: str, text: str, **data) -> None:
        if self.mode == "quiet":
            return
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.mode == "json":
            line = json.dumps({"event": event, "time": stamp, "message": text, **data})
        else:
            line = f"{stamp} waitsy: {text}"
        print(line, file=self.stream, flush=True)


def summary(wf: str, found: dict) -> str:
    jobs = found.get("jobs") or {}
    if found.get("state") == READY:
        return f"{wf}: ready ({len(jobs)} step{'s' if len(jobs) != 1 else ''} succeeded)"

    def listed(names):
        return ", ".join(f"{name} ({jobs[name].get('reason', '')})" for name in names if name in jobs)

    failed = found.get("failed") or []
    waiting = [name for name in found.get("missing", []) if name not in failed]
    if not failed:
        return f"{wf}: waiting for {listed(waiting)}"
    return f"{wf}: FAILED {listed(failed)}" + (f"; waiting for {listed(waiting)}" if waiting else "")


def _signature(found: dict):
    jobs = found.get("jobs") or {}
    return found.get("state"), tuple((n, jobs.get(n, {}).get("reason")) for n in found.get("missing", []))


# -- main -----------------------------------------------------------------------------


def _options(args) -> tuple[dict[str, list[str]], date, tzinfo]:
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
    tz = zone(args.tz)
    if args.date:
        try:
            if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", args.date):
                raise ValueError
            day = date.fromisoformat(args.date)
        except ValueError:
            raise UsageError(f"--date must be YYYY-MM-DD, not {args.date!r}") from None
    else:
        day = datetime.now(tz).date()
    if not urllib.parse.urlsplit(args.url).scheme in ("http", "https"):
        raise UsageError(f"--url must start with http:// or https://, not {args.url!r}")
    return selected, day, tz


def zone(name: str) -> tzinfo:
    """Return the IANA zone called name, or raise UsageError."""
    if name in ("UTC", "utc", "Z"):
        return timezone.utc
    try:
        from zoneinfo import ZoneInfo

        if not name or name.startswith(("/", ".")) or ".." in name:
            raise ValueError
        return ZoneInfo(name)
    except Exception:  # noqa: BLE001 - ZoneInfoNotFoundError, ValueError, OSError
        raise UsageError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Paris "
            "(on a machine without /usr/share/zoneinfo: pip install tzdata)"
        ) from None


def main(argv=None) -> int:
    """Run waitsy with argv (default sys.argv[1:]); return the exit code."""
    try:
        args = build_parser().parse_args(argv)
        selected, day, tz = _options(args)
    except UsageError as exc:
        print(f"waitsy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    reporter = Reporter("quiet" if args.quiet else "json" if args.json else "text")
    try:
        return _wait(args, selected, day, tz, reporter)
    except KeyboardInterrupt:
        print("waitsy: interrupted", file=sys.stderr)
        return 130


def _wait(args, selected, day, tz, reporter) -> int:
    started = time.monotonic()
    deadline = None if args.timeout is None else started + args.timeout
    events: queue.Queue = queue.Queue()
    stop = threading.Event()
    service = Service(args.url, args.token)
    what = ", ".join(f"{wf}" + (f" ({', '.join(jobs)})" if jobs else "") for wf, jobs in selected.items())
    until = "forever" if deadline is None else f"up to {args.timeout:g}s"
    reporter.emit("start", f"waiting for {what} to succeed on {day.isoformat()} ({args.tz}) at {service.url}, {until}",
                  workflows=selected, date=day.isoformat(), tz=args.tz)
    for wf, jobs in selected.items():
        Watcher(wf, jobs, day, tz, args.tz, service, args.interval, deadline, events, stop).start()
    latest: dict[str, dict] = {}
    shown: dict[str, tuple] = {}
    down = False
    next_beat = started + args.heartbeat

    def finish(code: int, outcome: str, text: str) -> int:
        stop.set()
        reporter.emit("result", text, outcome=outcome, exit=code, workflows=latest,
                      waited=round(time.monotonic() - started, 3))
        return code

    try:
        while True:
            if len(latest) == len(selected) and all(v.get("state") == READY for v in latest.values()):
                return finish(EXIT_READY, READY, f"ready: {', '.join(selected)} succeeded on {day.isoformat()}")
            failed = [wf for wf, v in latest.items() if v.get("state") == FAILED]
            if failed and args.fail_on_error:
                text = "; ".join(summary(wf, latest[wf]) for wf in failed)
                return finish(EXIT_FAILED, FAILED, f"failed: {text}")
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                pending = [summary(wf, latest[wf]) if wf in latest else f"{wf}: no answer yet" for wf in selected
                           if latest.get(wf, {}).get("state") != READY]
                return finish(EXIT_TIMEOUT, "timeout", f"timed out after {args.timeout:g}s; " + "; ".join(pending))
            wake = min(next_beat, deadline) if deadline is not None else next_beat
            try:
                kind, wf, payload = events.get(timeout=max(0.0, wake - now))
            except queue.Empty:
                if time.monotonic() >= next_beat:
                    next_beat += args.heartbeat
                    waited = int(time.monotonic() - started)
                    pending = [summary(wf, latest[wf]) if wf in latest else f"{wf}: no answer yet"
                               for wf in selected if latest.get(wf, {}).get("state") != READY]
                    reporter.emit("heartbeat", f"still waiting after {waited}s: " + "; ".join(pending), waited=waited)
                continue
            if kind == "usage":
                stop.set()
                print(f"waitsy: {payload}", file=sys.stderr)
                return EXIT_USAGE
            if kind == "down":
                if not down:
                    down = True
                    reporter.emit("unavailable", f"service unavailable ({payload}); retrying until "
                                  + ("the timeout" if deadline is not None else "it answers"), reason=payload)
                continue
            if kind == "notice":
                reporter.emit("notice", f"{wf}: {payload}")
                continue
            if down:
                down = False
                reporter.emit("available", "service answers again")
            latest[wf] = payload
            signature = _signature(payload)
            if shown.get(wf) != signature:
                shown[wf] = signature
                line = summary(wf, payload)
                if payload.get("state") == FAILED and not args.fail_on_error:
                    line += " (a rerun may still succeed; --fail-on-error stops here)"
                reporter.emit("change", line, workflow=wf, state=payload.get("state"))
    finally:
        stop.set()


if __name__ == "__main__":
    sys.exit(main())
