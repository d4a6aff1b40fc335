"""A Python client for the Batchy service, standard library only, for ETL scripts.

    from batchy.client import Batchy
    client = Batchy("http://batchy:5000", token=os.environ.get("BATCHY_API_TOKEN"))
    jobs = client.open("wf1")
    ...extract [from_date, to_date) ...
    client.close("wf1", records_processed=503)
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_URL = "http://127.0.0.1:5000"


class BatchyError(Exception):
    """The service answered with an error (status, code and message from its JSON body)."""

    def __init__(self, status: int, code: str, message: str, body: dict | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.body = body or {}


class Batchy:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0):
        self.url = (url or os.environ.get("BATCHY_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("BATCHY_API_TOKEN") or None
        self.timeout = timeout

    def request(self, method: str, path: str, query: dict | None = None, body: dict | None = None) -> bytes:
        """Send one request; return the body, or raise BatchyError with the service's error."""
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
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                err = json.loads(raw)
                raise BatchyError(exc.code, err.get("error", "error"), err.get("message", ""), err) from None
            except (ValueError, AttributeError):
                raise BatchyError(exc.code, "http_error", raw[:200].decode(errors="replace")) from None

    def _json(self, method: str, path: str, query: dict | None = None, body: dict | None = None):
        return json.loads(self.request(method, path, query, body))

    @staticmethod
    def _name(name: str) -> str:
        return urllib.parse.quote(name, safe="")

    def load(self, wf: str, reset: bool = False) -> dict:
        """Load (or reload) cfg/<wf>.yaml into the service; return the resulting state."""
        return self._json("POST", f"/load_cfg/{self._name(wf)}", body={"reset": reset or None})

    def status(self, wf: str) -> dict:
        return self._json("GET", f"/get_status/{self._name(wf)}")

    def open(self, wf: str, fmt: str = "json", dry_run: bool = False):
        """Open a batch; return {job: {...}} (fmt json) or the parameter file text (fmt infa)."""
        raw = self.request("POST", f"/open_batch/{self._name(wf)}/{self._name(fmt)}", body={"dry_run": dry_run or None})
        return json.loads(raw) if fmt == "json" else raw.decode()

    def close(self, wf: str, job: str | None = None, records_processed: int | None = None,
              message: str | None = None, batch_id: int | None = None) -> dict:
        """Mark the open batch (or one job of it) successful."""
        return self._json("POST", f"/close_batch/{self._name(wf)}", body=dict(
            job=job, records_processed=records_processed, message=message, batch_id=batch_id))

    def fail(self, wf: str, job: str | None = None, message: str | None = None,
             records_processed: int | None = None, batch_id: int | None = None) -> dict:
        """Mark the open batch (or one job of it) failed: the next open reruns its window."""
        return self._json("POST", f"/fail_batch/{self._name(wf)}", body=dict(
            job=job, records_processed=records_processed, message=message, batch_id=batch_id))
