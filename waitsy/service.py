"""The Batchy service over urllib: JSON answers, and errors sorted into what to do next."""
from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request

from .errors import Unreachable


class Service:
    """One Batchy service at url, asked with an optional API token."""

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
                return response.status, parse_json(response.read())
        except urllib.error.HTTPError as exc:
            body = parse_json(exc.read())
            if exc.code >= 500 or exc.code == 429:
                raise Unreachable(f"{exc.code} {describe(body) or exc.reason}") from None
            return exc.code, body
        except (urllib.error.URLError, http.client.HTTPException, OSError, socket.timeout) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise Unreachable(str(reason) or type(exc).__name__) from None


def parse_json(raw: bytes):
    """Return a JSON object, or None for anything else."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def describe(body) -> str:
    """Return "code: message" of a Batchy error body, or ""."""
    if isinstance(body, dict) and "error" in body:
        return f"{body.get('error')}: {body.get('message', '')}"
    return ""


def is_batchy_error(body, *codes: str) -> bool:
    """Return True if body is Batchy's error shape (with one of codes, when given)."""
    return (isinstance(body, dict) and isinstance(body.get("error"), str) and "message" in body
            and (not codes or body["error"] in codes))
