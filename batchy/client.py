"""A Python client for the Batchy service, standard library only, for ETL scripts.

    from batchy.client import Batchy
    client = Batchy("http://batchy:5000")          # token from BATCHY_API_TOKEN
    with client.batch("wf1") as batch:              # opens a batch
        rows = extract(since=batch.from_date, until=batch.to_date)
        batch.records_processed = load(rows)
    # closed on success; on an exception: failed with its message, and re-raised
"""
from __future__ import annotations

import json
import logging
import os
import time
import uuid
from contextlib import contextmanager
from datetime import datetime
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


class Batchy:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0,
                 retries: int = 2):
        self.url = (url or os.environ.get("BATCHY_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("BATCHY_API_TOKEN") or None
        self.timeout = timeout
        self.retries = retries  # extra attempts of a call that is safe to repeat

    def request(self, method: str, path: str, query: dict | None = None, body: dict | None = None,
                headers: dict | None = None, retry: bool = False) -> bytes:
        """Send a request; return the body, or raise ServiceError with the service's error.

        With retry (a call safe to repeat: a read, an open with its Idempotency-Key, a close
        naming its batch_id), a lost connection, a timeout or a 503 is tried again.
        """
        for attempt in range(self.retries + 1 if retry else 1):
            try:
                return self._request_once(method, path, query, body, headers)
            except (ServiceError, OSError) as exc:
                if attempt == self.retries or (isinstance(exc, ServiceError) and exc.status != 503):
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

    def status(self, wf: str) -> dict:
        return self._json("GET", f"/get_status/{self._name(wf)}")

    def open(self, wf: str, fmt: str = "json", dry_run: bool = False):
        """Open a batch; return {job: {...}} (fmt json) or the parameter file text (fmt infa).

        Every attempt of one call carries the same Idempotency-Key: a retry after a lost
        answer gets the batch the first attempt opened, not a second one.
        """
        key = None if dry_run else {"Idempotency-Key": uuid.uuid4().hex}
        raw = self.request("POST", f"/open_batch/{self._name(wf)}/{self._name(fmt)}",
                           body={"dry_run": dry_run or None}, headers=key, retry=not dry_run)
        return json.loads(raw) if fmt == "json" else raw.decode()

    def close(self, wf: str, job: str | None = None, records_processed: int | None = None,
              message: str | None = None, batch_id: int | None = None) -> dict:
        """Mark the open batch (or one job of it) successful; with batch_id, safe to retry."""
        return self._json("POST", f"/close_batch/{self._name(wf)}", body=dict(
            job=job, records_processed=records_processed, message=message, batch_id=batch_id),
            retry=batch_id is not None)

    def fail(self, wf: str, job: str | None = None, message: str | None = None,
             records_processed: int | None = None, batch_id: int | None = None) -> dict:
        """Mark the open batch (or one job of it) failed: the next open reruns its window."""
        return self._json("POST", f"/fail_batch/{self._name(wf)}", body=dict(
            job=job, records_processed=records_processed, message=message, batch_id=batch_id),
            retry=batch_id is not None)

    def most_recent(self, wf: str, job: str | None = None) -> int | None:
        """Return the unix time of the last successful batch start, like the Jobs API's most_recent()."""
        return self._json("GET", f"/most_recent/{self._name(wf)}", {"job": job})["timestamp"]

    def history(self, wf: str, limit: int = 50, before: int | None = None) -> list[dict]:
        """Return the workflow's batches, newest first."""
        return self._json("GET", f"/history/{self._name(wf)}", {"limit": limit, "before": before})["batches"]

    def events(self, wf: str, limit: int = 100) -> list[dict]:
        return self._json("GET", f"/events/{self._name(wf)}", {"limit": limit})["events"]

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

    @contextmanager
    def batch(self, wf: str, job: str | None = None, open: bool = True):
        """Run one batch: open it (or join the open one), close on success, fail on error.

        With job, only that step is closed or failed; with open=False the batch that is
        already open is used (a step of a workflow opened by someone else).
        """
        jobs = self.open(wf) if open else self.status(wf)
        run = Batch(wf, jobs, job)
        try:
            yield run
        except BaseException as exc:
            message = run.message or f"{type(exc).__name__}: {exc}"[:4000]
            try:
                self.fail(wf, job=job, message=message, records_processed=run.records_processed,
                          batch_id=run.batch_id)
            except (ServiceError, OSError) as fail_error:  # never hide the ETL's own error
                log.error("batchy: could not record the failure of %s: %s", wf, fail_error)
            raise
        self.close(wf, job=job, records_processed=run.records_processed, message=run.message,
                   batch_id=run.batch_id)


class Batch:
    """One open batch, as handed to the ETL code by Batchy.batch()."""

    def __init__(self, wf: str, jobs: dict, job: str | None = None):
        self.workflow = wf
        self.jobs = jobs
        self.job = job
        if job is not None and job not in jobs:
            raise ServiceError(404, "job_not_found", f"workflow {wf!r} has no job {job!r}")
        self.records_processed: int | None = None
        self.message: str | None = None

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

    @property
    def from_date(self) -> datetime:
        return datetime.fromisoformat(self.params["from_date"])

    @property
    def to_date(self) -> datetime:
        return datetime.fromisoformat(self.params["to_date"])
