"""What Waitsy prints: one line per change, heartbeats and the end, as text or JSON lines."""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

from .readiness import MISSED, READY


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
    """Return one line on a workflow's verdict: each step not ready, and why."""
    jobs = found.get("jobs") or {}
    if found.get("state") == READY:
        steps = f"{len(jobs)} step{'s' if len(jobs) != 1 else ''}"
        if found.get("through"):
            return f"{wf}: ready ({steps} covered from {found.get('since')} to {found['through']})"
        return f"{wf}: ready ({steps} succeeded)"

    def listed(names):
        return ", ".join(f"{name} ({jobs[name].get('reason', '')})" for name in names if name in jobs)

    if found.get("state") == MISSED:
        why = f" ({found['reason']})" if found.get("reason") else ""
        return f"{wf}: MISSED{why} {listed(found.get('missed') or found.get('missing', []))}"
    failed = found.get("failed") or []
    waiting = [name for name in found.get("missing", []) if name not in failed]
    if not failed:
        return f"{wf}: waiting for {listed(waiting)}"
    return f"{wf}: FAILED {listed(failed)}" + (f"; waiting for {listed(waiting)}" if waiting else "")


def signature(found: dict):
    """Return what, when it changes, deserves a line."""
    jobs = found.get("jobs") or {}
    return found.get("state"), tuple((n, jobs.get(n, {}).get("reason")) for n in found.get("missing", []))
