"""Times and zones as Waitsy reads them from its options and from the service's answers."""
from __future__ import annotations

import re
from datetime import datetime, timezone, tzinfo

from .errors import UsageError

KEYWORDS = ("today", "yesterday", "now")  # gate times the service resolves in --tz
_HH_MM = re.compile(r"([0-9]{1,2}):([0-9]{2})")


def _iso(value: str) -> datetime | None:
    """Return an ISO-8601 date or time as written (naive when it has no offset), or None."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python 3.10 reads neither Z nor +0100.
    text = re.sub(r"([+-]\d\d)(\d\d)$", r"\1:\2", text) if "T" in text or " " in text else text
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def parse_time(value) -> datetime | None:
    """Return an ISO-8601 time as an aware datetime (no offset: UTC), or None."""
    if not isinstance(value, str) or not value.strip():
        return None
    parsed = _iso(value)
    if parsed is None:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def local_time(text: str, tz: tzinfo) -> datetime | None:
    """Return an ISO-8601 time, read in zone tz when it carries no offset (as the service does), or None."""
    parsed = _iso(text) if text.strip() else None
    if parsed is None:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)


def gate_time(text: str, option: str, tz: tzinfo) -> str:
    """Return a --through/--since value as the service takes it, or raise UsageError."""
    if text in KEYWORDS or local_time(text, tz) is not None:
        return text
    raise UsageError(f"{option} must be an ISO-8601 date or time (no offset: in --tz) or one of "
                     f"{', '.join(KEYWORDS)}, not {text!r}")


def deadline(text: str, tz: tzinfo, now: datetime) -> datetime:
    """Return --deadline as an aware time: ISO-8601 (no offset: in tz) or HH:MM today in tz."""
    match = _HH_MM.fullmatch(text)
    if match:
        hour, minute = int(match.group(1)), int(match.group(2))
        if hour < 24 and minute < 60:
            return now.astimezone(tz).replace(hour=hour, minute=minute, second=0, microsecond=0)
    else:
        moment = local_time(text, tz)
        if moment is not None:
            return moment
    raise UsageError(f"--deadline must be HH:MM (today in --tz) or an ISO-8601 time, not {text!r}")


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
