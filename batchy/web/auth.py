"""Who may call: the write and read tokens (BATCHY_API_TOKEN(S), BATCHY_READ_TOKENS), and
BATCHY_TOKENS_FILE read again when it changes, so tokens rotate without a restart."""
from __future__ import annotations

import functools
import hmac
import logging
import os
import time

from flask import current_app, request

from .. import settings
from ..errors import Unauthorized

log = logging.getLogger("batchy")


def _tokens(*names: str, config=None) -> tuple[str, ...]:
    """Return the non-empty tokens of the named settings (each one token, or a comma list)."""
    config = current_app.config if config is None else config
    return tuple(t for name in names for t in _split(str(config.get(name) or "")))


@functools.lru_cache(maxsize=64)
def _split(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def _bearer_matches(tokens: tuple[str, ...]) -> bool:
    scheme, _, given = request.environ.get("HTTP_AUTHORIZATION", "").partition(" ")  # the Authorization header
    given_bytes = given.strip().encode()
    # Compare with every token, so the time taken says nothing about which one matched.
    found = [hmac.compare_digest(given_bytes, token.encode()) for token in tokens]
    return scheme.lower() == "bearer" and any(found)


# How often a process looks at BATCHY_TOKENS_FILE's mtime, size and inode (one stat).
TOKENS_CHECK_SECONDS = 1.0


class TokensFile:
    """BATCHY_TOKENS_FILE, read again when it changes: tokens rotate without a restart.

    A file that cannot be read or parsed keeps the tokens in force (never an open API), and
    says why in the log once per version of the file.
    """

    def __init__(self, path: str):
        self.path = path
        self._seen = self._signature()  # create_app read this version (settings.load)
        self._next = 0.0

    def _signature(self):
        try:
            st = os.stat(self.path)
        except OSError as exc:
            return repr(exc)
        return st.st_mtime_ns, st.st_size, st.st_ino

    def refresh(self, config) -> None:
        """Put the file's tokens in config if it changed since last read (at most once a second)."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + TOKENS_CHECK_SECONDS
        seen = self._signature()
        if seen == self._seen:
            return
        self._seen = seen
        try:
            values = settings.read_tokens_file(self.path)
        except (OSError, ValueError) as exc:
            log.error("BATCHY_TOKENS_FILE: keeping the tokens in force: %s", exc)
            return
        config.update(values)
        log.warning("tokens read again from %s (%s)", self.path,
                    ", ".join(f"{name}: {len(_split(values[name]))}" for name in settings.TOKEN_SETTINGS))


def watch_tokens(app) -> None:
    """Re-read BATCHY_TOKENS_FILE, when set, before a request once it changed."""
    if not app.config.get("BATCHY_TOKENS_FILE"):
        return
    tokens = TokensFile(app.config["BATCHY_TOKENS_FILE"])
    app.before_request(lambda: tokens.refresh(app.config))


def check_token(config=None) -> None:
    """Require a write token, when any is configured (BATCHY_API_TOKEN, BATCHY_API_TOKENS)."""
    config = current_app.config if config is None else config
    # _tokens() of the two settings, spelled out: every state change asks
    tokens = _split(str(config.get("BATCHY_API_TOKEN") or "")) + _split(str(config.get("BATCHY_API_TOKENS") or ""))
    if tokens and not _bearer_matches(tokens):
        raise Unauthorized("missing or wrong API token: send 'Authorization: Bearer <token>'")


def check_wait_token() -> None:
    """Require a write or a read token for /wait, when any token is configured."""
    tokens = _tokens("BATCHY_API_TOKEN", "BATCHY_API_TOKENS", "BATCHY_READ_TOKENS")
    if tokens and not _bearer_matches(tokens):
        raise Unauthorized("missing or wrong API token: send 'Authorization: Bearer <token>'")


def check_read(scope: str) -> None:
    """Require a read or write token for a read in BATCHY_PROTECTED_READS, when read tokens are set."""
    read_tokens = _split(str(current_app.config.get("BATCHY_READ_TOKENS") or ""))  # every read asks
    if not read_tokens or scope not in _tokens("BATCHY_PROTECTED_READS"):
        return
    if not _bearer_matches(read_tokens + _tokens("BATCHY_API_TOKEN", "BATCHY_API_TOKENS")):
        raise Unauthorized(f"this deployment protects {scope} reads: send 'Authorization: Bearer <read token>'")
