"""Follow one workflow on the service, push (GET /wait) first, and report each verdict on a queue."""
from __future__ import annotations

import threading
import time
import urllib.parse
from dataclasses import dataclass
from datetime import date, datetime, tzinfo

from . import readiness
from .errors import NoWaitRoute, Unreachable, UsageError
from .readiness import FAILED, MISSED, READY, WAITING
from .service import describe, is_batchy_error

PUSH_CHUNK = 55.0  # seconds per /wait request; the service caps it at BATCHY_WAIT_MAX_SECONDS anyway
HTTP_SLACK = 10.0  # extra seconds a /wait answer may take on the wire before we give up on it
# Requests of one workflow start at least MIN_GAP apart; answers that come back at once
# without being final double it up to MAX_GAP, so a service that never blocks is not
# asked in a tight loop.
MIN_GAP, MAX_GAP = 0.1, 2.0
OUR_404 = ("workflow_not_found", "job_not_found")


@dataclass
class Gate:
    """What every workflow is asked: a date, or a range of coverage; in a zone; with a deadline."""

    tz: tzinfo
    tz_name: str
    day: date | None = None  # the date form
    through: str | None = None  # a coverage gate, as given (today, an ISO time...)
    since: str | None = None
    max_hole_minutes: float = 0  # a coverage gate tolerates holes no longer than this
    deadline: datetime | None = None
    on_deadline: str = "fail"

    @property
    def coverage(self) -> bool:
        return self.through is not None


def final(found: dict) -> bool:
    """Return True if no later answer can differ: ready, missed, or past the deadline."""
    return found.get("state") in (READY, MISSED) or bool((found.get("deadline") or {}).get("passed"))


class Watcher(threading.Thread):
    """Ask the service about one workflow until its verdict is final; put each verdict on events."""

    def __init__(self, wf: str, jobs: list[str], gate: Gate, service, interval: float, end: float | None,
                 events, stop: threading.Event):
        super().__init__(name=f"waitsy-{wf}", daemon=True)
        self.wf, self.jobs, self.gate, self.service = wf, jobs, gate, service
        self.interval, self.end, self.events, self.stop = interval, end, events, stop
        self.push = True
        self.hold = WAITING  # /wait answers once the verdict is no longer this
        self.first = True  # the first /wait returns at once, so the start state is shown
        # A coverage gate's today/now is pinned by the first answer: a gate started at
        # 23:55 keeps waiting for that day's data, as a date gate does.
        self.through, self.since = gate.through, gate.since
        self.send_deadline = gate.deadline is not None
        self.gap = MIN_GAP
        self.last: float | None = None  # when the previous request started
        self.quoted = urllib.parse.quote(wf, safe="")

    def run(self):
        backoff = 0.1
        while not self.stop.is_set():
            try:
                found = self._push() if self.push else self._poll()
                backoff = 0.1
                self.events.put(("verdict", self.wf, found))
                if final(found):
                    return
                if self.push:
                    # After a failure, wait for it to change (a rerun), not for it again.
                    self.hold = FAILED if found["state"] == FAILED else WAITING
                else:
                    self.stop.wait(self._pause(self.interval))
            except NoWaitRoute:
                if self.gate.coverage:
                    self.events.put(("usage", self.wf, f"--through needs GET /wait, which {self.service.url} "
                                     "does not have (an older Batchy): upgrade the service, or wait with --date"))
                    return
                self.push = False
                self.events.put(("notice", self.wf, "the service has no /wait (older version): "
                                 f"polling /get_status every {max(self.interval, MIN_GAP):g}s"))
            except Unreachable as exc:
                self.events.put(("down", self.wf, str(exc)))
                self.stop.wait(self._pause(backoff))
                backoff = min(backoff * 2, max(min(self.interval, MAX_GAP), MIN_GAP))
            except UsageError as exc:
                self.events.put(("usage", self.wf, str(exc)))
                return
            except Exception as exc:  # noqa: BLE001 - never a traceback: report and retry
                self.events.put(("down", self.wf, f"unexpected {type(exc).__name__}: {exc}"))
                self.stop.wait(self._pause(backoff))
                backoff = min(backoff * 2, MAX_GAP)

    def _remaining(self) -> float:
        return PUSH_CHUNK if self.end is None else max(0.0, self.end - time.monotonic())

    def _pause(self, seconds: float) -> float:
        return max(0.0, min(seconds, self._remaining()))

    def _throttle(self) -> float:
        """Wait until the previous request started at least self.gap ago; return now."""
        if self.last is not None:
            self.stop.wait(max(0.0, self.last + self.gap - time.monotonic()))
        self.last = time.monotonic()
        return self.last

    def _query(self) -> list[tuple[str, str]]:
        gate = self.gate
        query = [("tz", gate.tz_name)]
        if gate.coverage:
            query += [("through", self.through)] + ([("since", self.since)] if self.since else [])
            if gate.max_hole_minutes:
                query.append(("max_hole_minutes", f"{gate.max_hole_minutes:g}"))
        else:
            query.append(("date", gate.day.isoformat()))
        if self.send_deadline:
            query += [("deadline", gate.deadline.isoformat()), ("on_deadline", gate.on_deadline)]
        return query + [("job", j) for j in self.jobs]

    def _push(self) -> dict:
        chunk = 0.0 if self.first else min(PUSH_CHUNK, self._remaining())
        started = self._throttle()
        status, body = self.service.get(
            f"/wait/{self.quoted}", self._query() + [("timeout", f"{chunk:.3f}"), ("while", self.hold)], chunk + HTTP_SLACK
        )
        if status in (404, 405) and not is_batchy_error(body, *OUR_404):
            raise NoWaitRoute()
        if status == 400 and is_batchy_error(body, "invalid_parameter") and \
                str(body["message"]).startswith("unknown parameter"):
            return self._older(body.get("parameter"), body)
        result = self._checked(status, body)
        quick = time.monotonic() - started < MIN_GAP
        self.gap = min(self.gap * 2, MAX_GAP) if quick and not self.first and not final(result) else MIN_GAP
        self.first = False
        if self.gate.coverage and result.get("through"):
            self.through, self.since = result["through"], result.get("since")
        return result

    def _older(self, parameter, body) -> dict:
        """Ask again without what an older /wait does not take, or say what it lacks."""
        if parameter in ("deadline", "on_deadline") and self.send_deadline:
            self.send_deadline = False
            self.events.put(("notice", self.wf, "the service's /wait takes no deadline (older version): "
                             "the deadline is kept here only"))
            return self._push()
        if parameter == "max_hole_minutes":
            raise UsageError(f"--max-hole-minutes needs a /wait that takes max_hole_minutes, which {self.service.url} "
                             "does not (an older Batchy): upgrade the service, or leave it out")
        if parameter in ("through", "since"):
            raise UsageError(f"--through needs a /wait that takes through, which {self.service.url} does not "
                             "(an older Batchy): upgrade the service, or wait with --date")
        raise UsageError(f"the service refused the request: 400 {describe(body)}")

    def _poll(self) -> dict:
        self._throttle()
        status, body = self.service.get(f"/get_status/{self.quoted}", [], max(5.0, self.interval))
        jobs = self._checked(status, body)
        gate = self.gate
        found = readiness.verdict(jobs, self.jobs, gate.day, gate.tz, self.wf)
        # The service's rule, with this machine's clock for "today".
        return readiness.date_missed(found, gate.day, datetime.now(gate.tz).date())

    def _checked(self, status: int, body) -> dict:
        if status == 200 and isinstance(body, dict):
            return body
        if status == 200:
            raise Unreachable("the service answered something that is not JSON")
        if status == 404 and is_batchy_error(body, *OUR_404):
            raise UsageError(body["message"])
        if status in (401, 403):
            raise UsageError(f"the service refused the token ({describe(body) or status}): "
                             "pass --token or set BATCHY_API_TOKEN")
        if status == 404:
            raise UsageError(f"{self.service.url} does not look like a Batchy service (404 on /get_status)")
        raise UsageError(f"the service refused the request: {status} {describe(body)}")
