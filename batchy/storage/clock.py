"""Redis' clock as one process sees it: every batch time comes from it.

All processes and hosts share Redis' TIME, so batch ids and windows never depend on a
host's own clock. A process learns how far TIME is from its own clock from every reply
that carries it, so a change planned on a remembered state can name the second the
commit script will check, without asking Redis first.

Tests inject a subclass of Clock (create_app's CLOCK config) to move time: only the
reading of the clock changes, every rule and every Redis write stays real.
"""
from __future__ import annotations

import functools
import time
from datetime import datetime, timezone


class Clock:
    """Turn Redis' TIME replies into datetimes, and guess TIME between replies."""

    def __init__(self):
        self.offset = 0.0  # Redis TIME minus this host's clock, from the last reply

    def learn(self, reply) -> int:
        """Note a TIME reply ([seconds, microseconds]) and return its seconds."""
        seconds = int(reply[0])
        self.offset = seconds + int(reply[1]) / 1e6 - time.time()
        return seconds

    def expected_second(self) -> int:
        """Return the second Redis' TIME should show now."""
        return int(time.time() + self.offset)

    def moment(self, seconds: int) -> datetime:
        """Return the datetime of a second of Redis' clock."""
        return _utc_second(seconds)


@functools.lru_cache(maxsize=16)
def _utc_second(seconds: int) -> datetime:
    """Return a second as an aware UTC datetime (every change in one second shares it)."""
    return datetime.fromtimestamp(seconds, timezone.utc)
