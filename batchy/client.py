"""A Python client for the Batchy service, standard library only, for ETL scripts.

    from batchy.client import Batchy
    client = Batchy("http://batchy:5000")          # token from BATCHY_API_TOKEN
    with client.batch("wf1") as batch:              # opens a batch
        rows = extract(since=batch.from_date, until=batch.to_date)
        batch.records_processed = load(rows)
    # closed on success; on an exception: failed with its message, and re-raised

Answers are the service's JSON, decoded: times are ISO-8601 strings there. Only a Batch
turns the window into datetimes (batch.from_date, batch.window(job)).
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from contextlib import contextmanager
from datetime import datetime
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_URL = "http://127.0.0.1:5000"
log = logging.getLogger("batchy.client")


class ServiceError(Exception):
    """The service answered with an error (status, code and message from its JSON body).

    Not batchy.errors.BatchyError, which the service raises inside itself.
    """

    def __init__(self, status: int, code: str, message: str, body: dict | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body or {}


# The name this class had before 1.1; kept so existing ETL scripts keep working.
BatchyError = ServiceError


class BadServiceURL(ValueError):
    """The service's URL (BATCHY_URL, or the url given) is not an http:// or https:// URL."""


class Batchy:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0,
                 retries: int = 2):
        self.url = (url or os.environ.get("BATCHY_URL") or DEFAULT_URL).rstrip("/")
        if not self.url.lower().startswith(("http://", "https://")):  # 127.0.0.1:5000 was retried as an outage
            raise BadServiceURL(f"the service URL must start with http:// or https://, not {self.url[:80]!r} "
                                f"(BATCHY_URL, or --url)")
        self.token = token if token is not None else os.environ.get("BATCHY_API_TOKEN") or None
        self.timeout = timeout
        self.retries = retries  # extra attempts of a call that is safe to repeat

    def request(self, method: str, path: str, query: dict | None = None, body: dict | None = None,
                headers: dict | None = None, retry: bool = False) -> bytes:
        """Send a request; return the body, or raise ServiceError with the service's error.

        With retry (a call safe to repeat: a read, an open with its Idempotency-Key, a close
        naming its batch_id), a lost connection, a timeout or a 503 is tried again.
        """
        last = self.retries if retry else 0
        for attempt in range(last + 1):
            try:
                return self._request_once(method, path, query, body, headers)
            except (ServiceError, OSError) as exc:
                if attempt == last or (isinstance(exc, ServiceError) and exc.status != 503):
                    raise
                log.warning("batchy: %s %s failed (%s); retrying", method, path, exc)
                time.sleep(0.5 * 2 ** attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def _request_once(self, method: str, path: str, query: dict | None, body: dict | None,
                      extra_headers: dict | None) -> bytes:
        url = self.url + path
        query = {k: v for k, v in (query or {}).items() if v is not None}
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = json.dumps({k: v for k, v in body.items() if v is not None}).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        headers.update(extra_headers or {})
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                err = json.loads(raw)
                raise ServiceError(exc.code, err.get("error", "error"), err.get("message", ""), err) from None
            except (ValueError, AttributeError):
                raise ServiceError(exc.code, "http_error", raw[:200].decode(errors="replace")) from None

    def _json(self, method: str, path: str, query: dict | None = None, body: dict | None = None,
              retry: bool | None = None):
        return json.loads(self.request(method, path, query, body, retry=method == "GET" if retry is None else retry))

    @staticmethod
    def _name(name: str) -> str:
        return urllib.parse.quote(name, safe="")

    def load(self, wf: str, reset: bool = False) -> dict:
        """Load (or reload) cfg/<wf>.yaml into the service; return the resulting state."""
        return self._json("POST", f"/load_cfg/{self._name(wf)}", body={"reset": reset or None})

    def load_all(self, reset: bool = False) -> dict:
        """Load every file of the service's cfg/; return {"loaded": {wf: state}, "failed": {wf: error}}.

        A file that fails does not stop the others: check "failed", the call itself succeeds.
        """
        return self._json("POST", "/load_cfg", body={"reset": reset or None})

    def workflows(self, page_size: int = 1000) -> list[dict]:
        """Return every loaded workflow: its name, number of jobs, last batch id and pause.

        Asked page_size at a time (/workflows?limit=), following next_offset to the last.
        """
        found, offset = [], 0
        while True:
            answer = self.workflows_page(page_size, offset)
            found.extend(answer["workflows"])
            offset = answer.get("next_offset")
            if not offset:
                return found

    def workflows_page(self, limit: int | None = None, offset: int = 0) -> dict:
        """Return one page of /workflows: {"workflows": [...], "next_offset": n or None}."""
        return self._json("GET", "/workflows", {"limit": limit, "offset": offset or None})

    def remove(self, wf: str, purge_history: bool = False) -> dict:
        """Remove a loaded workflow; its batch history is kept unless purge_history."""
        return self._json("POST", f"/remove_workflow/{self._name(wf)}",
                          body={"purge_history": purge_history or None})

    def status(self, wf: str) -> dict:
        return self._json("GET", f"/get_status/{self._name(wf)}")

    def open(self, wf: str, fmt: str = "json", dry_run: bool = False, idempotency_key: str | None = None,
             job: str | list[str] | None = None):
        """Open a batch (of every job, or of job: one name or a list); return {job: {...}} (fmt
        json) or the parameter file text (fmt infa). Jobs not named are left as they are.

        Every attempt of one call carries the same Idempotency-Key (idempotency_key, else a
        new one per call): a retry after a lost answer gets the batch the first attempt
        opened, not a second one. Pass your own key to make a rerun of a whole script safe.
        """
        key = None if dry_run else {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        raw = self.request("POST", f"/open_batch/{self._name(wf)}/{self._name(fmt)}",
                           body={"dry_run": dry_run or None, "job": job}, headers=key, retry=not dry_run)
        return json.loads(raw) if fmt == "json" else raw.decode()

    def close(self, wf: str, job: str | None = None, records_processed: int | None = None,
              message: str | None = None, batch_id: int | None = None, checksum: str | None = None,
              dq: str | None = None, dq_message: str | None = None) -> dict:
        """Mark the open batch (or one job of it) successful; with batch_id, safe to retry.

        checksum, dq ("pass" or "fail") and dq_message attest the load: dq="fail" moves the
        watermark on but leaves the window a hole (failed_quality) until a rerun passes.
        """
        return self._json("POST", f"/close_batch/{self._name(wf)}", body=dict(
            job=job, records_processed=records_processed, message=message, batch_id=batch_id, checksum=checksum,
            dq=dq, dq_message=dq_message), retry=batch_id is not None)

    def invalidate(self, wf: str, start: str | datetime, end: str | datetime, jobs: list[str] | None = None,
                   reason: str | None = None) -> dict:
        """Mark [start, end) of every job (or of jobs) dirty: late data arrived, so it is a hole again."""
        start, end = (t.isoformat() if isinstance(t, datetime) else t for t in (start, end))
        return self._json("POST", f"/invalidate/{self._name(wf)}",
                          body={"from": start, "to": end, "job": list(jobs) if jobs else None, "reason": reason})

    def fail(self, wf: str, job: str | None = None, message: str | None = None,
             records_processed: int | None = None, batch_id: int | None = None) -> dict:
        """Mark the open batch (or one job of it) failed: the next open reruns its window."""
        return self._json("POST", f"/fail_batch/{self._name(wf)}", body=dict(
            job=job, records_processed=records_processed, message=message, batch_id=batch_id),
            retry=batch_id is not None)

    def most_recent(self, wf: str, job: str | None = None, full: bool = False):
        """Return the unix time of the last successful batch start, like the Jobs API's most_recent().

        With full, the whole answer instead: ISO time, batch id, and each job's last success.
        """
        answer = self._json("GET", f"/most_recent/{self._name(wf)}", {"job": job})
        return answer if full else answer["timestamp"]

    def history(self, wf: str, limit: int = 50, before: int | None = None) -> list[dict]:
        """Return the workflow's batches, newest first; before=<the last batch_id> pages on."""
        return self._json("GET", f"/history/{self._name(wf)}", {"limit": limit, "before": before})["batches"]

    def snapshot(self, wf: str, batch_id: int) -> dict:
        """Return one batch's snapshot {job: {...}}."""
        return self._json("GET", f"/batch/{self._name(wf)}/{int(batch_id)}")

    def batches(self, status: str | None = None, workflow: str | None = None,
                start: str | int | datetime | None = None, end: str | int | datetime | None = None,
                limit: int = 50, offset: int = 0) -> list[dict]:
        """Return batches of every workflow by start time (start, end: ISO-8601, unix seconds or datetime)."""
        start, end = (t.isoformat() if isinstance(t, datetime) else t for t in (start, end))
        query = {"status": status, "workflow": workflow, "from": start, "to": end, "limit": limit,
                 "offset": offset or None}
        return self._json("GET", "/batches", query)["batches"]

    def coverage(self, wf: str, job: str | None = None, start: str | int | datetime | None = None,
                 end: str | int | datetime | None = None) -> dict:
        """Return {job: {"covered": [[from, to], ...], "holes": [[from, to], ...]}}: what succeeded, what not.

        A start or end without an offset (a naive datetime, "2024-01-01") is read in each job's timezone.
        """
        start, end = (t.isoformat() if isinstance(t, datetime) else t for t in (start, end))
        return self._json("GET", f"/coverage/{self._name(wf)}", {"job": job, "from": start, "to": end})

    def events(self, wf: str, limit: int = 100, before: str | None = None) -> list[dict]:
        """Return the workflow's audit events, newest first; before=<the last event id> pages on."""
        return self._json("GET", f"/events/{self._name(wf)}", {"limit": limit, "before": before})["events"]

    def set_from_date(self, wf: str, from_date: str | datetime, job: str | None = None, force: bool = False) -> dict:
        """Make the next batch start exactly at from_date (ISO-8601 or an aware datetime)."""
        if isinstance(from_date, datetime):
            from_date = from_date.isoformat()
        return self._json("POST", f"/set_from_date/{self._name(wf)}",
                          body={"from_date": from_date, "job": job, "force": force or None})

    def rewind(self, wf: str, batch_id: int, job: str | None = None, force: bool = False) -> dict:
        """Make the next batch start where batch batch_id started."""
        return self._json("POST", f"/rewind/{self._name(wf)}",
                          body={"batch_id": batch_id, "job": job, "force": force or None})

    def pause(self, wf: str | None = None, message: str = "") -> dict:
        path = "/pause" + (f"/{self._name(wf)}" if wf else "")
        return self._json("POST", path, body={"message": message})

    def resume(self, wf: str | None = None) -> dict:
        return self._json("POST", "/resume" + (f"/{self._name(wf)}" if wf else ""), body={})

    def late(self) -> list[dict]:
        """Return the late jobs and stuck batches: [{workflow, job, kind, reason, since}]."""
        return self._json("GET", "/late")

    def pause_status(self) -> dict:
        """Return {"service": pause or None, "workflows": {wf: pause}}."""
        return self._json("GET", "/pause_status")

    def pause_history(self, limit: int = 100) -> list[dict]:
        """Return every pause and resume, newest first."""
        return self._json("GET", "/pause_history", {"limit": limit})["history"]

    @property
    def backfills(self) -> "BackfillClient":
        """The backfill endpoints: client.backfills.create(...), .lease(...), .finish(...)."""
        return BackfillClient(self)

    @contextmanager
    def batch(self, wf: str, job: str | None = None, open: bool = True):
        """Run one batch: open it (or join the open one), close on success, fail on error.

        With job, only that step is opened and closed or failed (a job on its own schedule:
        the other steps are left as they are); with open=False the batch that is already open
        is used (a step of a workflow opened by someone else). The close or
        fail always names the batch_id, so it is safe to retry and never closes a newer
        batch. batch.records_processed set to an int is sent with that one close (or
        fail); set to {job: n}, each job is closed (or failed) on its own with its count.
        """
        jobs = self.open(wf, job=job) if open else self.status(wf)
        run = Batch(wf, jobs, job)
        try:
            yield run
        except BaseException as exc:
            message = run.message or f"{type(exc).__name__}: {exc}"[:4000]
            for step, records, batch_id in run._outcomes():
                try:
                    self.fail(wf, job=step, message=message, records_processed=records, batch_id=batch_id)
                except (ServiceError, OSError) as fail_error:  # never hide the ETL's own error
                    log.error("batchy: could not record the failure of %s: %s", wf, fail_error)
            raise
        for step, records, batch_id in run._outcomes():
            self.close(wf, job=step, records_processed=records, message=run.message, batch_id=batch_id)


class BackfillClient:
    """Call the backfill endpoints (docs/backfills.md) with a Batchy's URL, token and retries."""

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
        """Return the chunk leased, or None when none is due now (204). Not retried here (the
        workers retry it across an outage): a lost answer leaves a lease that runs out, and
        the chunk is leased again then."""
        return self._call("POST", self._path(wf, backfill_id, "lease"), body={"lease_seconds": lease_seconds})

    def renew(self, wf: str, backfill_id: int, chunk: int, attempt: int, lease_seconds: float | None = None,
              retry: bool = True, lease_token: str | None = None) -> dict:
        """Renew one attempt's lease of a chunk; safe to retry (a heartbeat does not: its next
        beat is the retry)."""
        return self._call("POST", self._path(wf, backfill_id, "renew"), body={
            "chunk": chunk, "attempt": attempt, "lease_token": lease_token, "lease_seconds": lease_seconds},
            retry=retry)

    def finish(self, wf: str, backfill_id: int, chunk: int, attempt: int, outcome: str, *,
               records_processed: int | None = None, message: str | None = None,
               lease_token: str | None = None, checksum: str | None = None, dq: str | None = None,
               dq_message: str | None = None) -> dict:
        """Close (outcome success) or fail one attempt of a chunk; safe to retry, so retried.

        A close may attest its load (checksum, dq, dq_message), as close_batch does.
        """
        action = "close" if outcome == "success" else "fail"
        attested = {"checksum": checksum, "dq": dq, "dq_message": dq_message} if action == "close" else {}
        return self._call("POST", self._path(wf, backfill_id, action), body={
            "chunk": chunk, "attempt": attempt, "lease_token": lease_token, "records_processed": records_processed,
            "message": message, **{k: v for k, v in attested.items() if v is not None}}, retry=True)


class Window(NamedTuple):
    """A job's window as aware datetimes (None where the service has no time yet)."""

    from_date: datetime | None
    to_date: datetime | None


def _time(value: str | None, zone: str | None = None) -> datetime | None:
    """Return an ISO-8601 time as an aware datetime in zone (an IANA name), else at its offset."""
    if not value:
        return None
    moment = datetime.fromisoformat(value)
    try:
        return moment.astimezone(ZoneInfo(zone)) if zone else moment
    except (ZoneInfoNotFoundError, ValueError):  # a machine without that zone's data: the offset is exact too
        return moment


class Batch:
    """One open batch, as handed to the ETL code by Batchy.batch().

    batch.jobs is the service's answer as it came ({job: {...}}, times as ISO-8601
    strings): the same thing client.open() returns, and json.dumps(batch.jobs) works.
    The window as aware datetimes in the job's timezone (a ZoneInfo) is batch.from_date /
    batch.to_date (of job=, or of the only job) and batch.window(name) for any job. Converting inside batch.jobs instead
    would give one field two types depending on where it was read, and break json.dumps.
    """

    def __init__(self, wf: str, jobs: dict, job: str | None = None):
        self.workflow = wf
        self.jobs = jobs
        self.job = job
        if job is not None and job not in jobs:
            raise ServiceError(404, "job_not_found", f"workflow {wf!r} has no job {job!r}")
        self._records: int | dict[str, int] | None = None
        self.message: str | None = None

    @property
    def records_processed(self) -> int | dict[str, int] | None:
        """Rows processed: an int for the whole batch (or job=), or {job: n} for each job."""
        return self._records

    @records_processed.setter
    def records_processed(self, value: int | dict[str, int] | None) -> None:
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(self._covered()))
            if unknown:
                raise ValueError(f"records_processed names {', '.join(map(repr, unknown))}, not a job of "
                                 f"this batch ({', '.join(self._covered())})")
            value = dict(value)
        self._records = value

    def _covered(self) -> list[str]:
        return [self.job] if self.job is not None else list(self.jobs)

    def _outcomes(self) -> list[tuple[str | None, int | None, int | None]]:
        """Return (job, records_processed, batch_id) of each close or fail to send."""
        if not isinstance(self._records, dict):
            return [(self.job, self._records, self.batch_id)]
        # Each job named, and each other job of the batch still open (others closed themselves).
        steps = [name for name in self._covered()
                 if name in self._records or self.jobs[name].get("status") == "open"]
        if not steps:  # nothing to do: one call, so the service says why (409 not_open)
            return [(self.job, None, self.batch_id)]
        return [(name, self._records.get(name), self.jobs[name].get("batch_id")) for name in steps]

    @property
    def params(self) -> dict:
        """The parameters of the job (job=), or of the workflow's only job."""
        if self.job is not None:
            return self.jobs[self.job]
        if len(self.jobs) == 1:
            return next(iter(self.jobs.values()))
        raise ValueError(f"workflow {self.workflow!r} has {len(self.jobs)} jobs: use batch.jobs[name] or job=")

    @property
    def batch_id(self) -> int | None:
        ids = {j.get("batch_id") for j in ([self.jobs[self.job]] if self.job else self.jobs.values())}
        return ids.pop() if len(ids) == 1 else None

    def window(self, job: str | None = None) -> Window:
        """Return (from_date, to_date) of job (default: job=, or the only job), datetimes in its timezone."""
        if job is None:
            params = self.params
        elif job in self.jobs:
            params = self.jobs[job]
        else:
            raise ServiceError(404, "job_not_found", f"workflow {self.workflow!r} has no job {job!r}")
        zone = params.get("timezone")
        return Window(_time(params.get("from_date"), zone), _time(params.get("to_date"), zone))

    @property
    def from_date(self) -> datetime | None:
        return self.window().from_date

    @property
    def to_date(self) -> datetime | None:
        return self.window().to_date
