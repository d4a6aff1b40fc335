"""Load plans: one list of [method, path, tag] per connection, cycled in order.

Every request of every plan is a valid call that answers 2xx: a connection owns its
workflows (or, on the shared workflow, its own job step), so its close always follows
its own open.
"""
from __future__ import annotations


def get_status(wfs: list[str], connections: int) -> list[list[list[str]]]:
    """GET /get_status, connection i reading workflows i, i+N, i+2N... (all of them overall)."""
    return [[["GET", f"/get_status/{wf}", "get"] for wf in wfs[i::connections] or [wfs[i % len(wfs)]]]
            for i in range(connections)]


def open_close(wfs: list[str], connections: int, fmt: str = "json") -> list[list[list[str]]]:
    """Each connection opens then closes each of its own workflows, in turn."""
    suffix = "" if fmt == "json" else f"/{fmt}"
    plans = []
    for i in range(connections):
        mine = wfs[i::connections]
        if not mine:
            raise ValueError("need at least as many workflows as connections")
        steps = []
        for wf in mine:
            steps += [["POST", f"/open_batch/{wf}{suffix}", "open"], ["POST", f"/close_batch/{wf}", "close"]]
        plans.append(steps)
    return plans


def hot_open_close(wf: str, connections: int) -> list[list[list[str]]]:
    """All connections on one workflow: connection i opens it, then closes only its job step s<i>.

    An open by anyone keeps s<i> open (a new batch), and only connection i closes s<i>, so
    the close always finds its step open: contention without a single 409.
    """
    width = len(str(connections - 1))
    return [[["POST", f"/open_batch/{wf}", "open"], ["POST", f"/close_batch/{wf}?job=s{i:0{width}d}", "close"]]
            for i in range(connections)]


def reopen(wfs: list[str], connections: int) -> list[list[list[str]]]:
    """Each connection opens each of its own workflows in turn and never closes one.

    Once every workflow is open, each open finds its workflow's batch still open: it records
    that batch's open jobs as abandoned and opens a new batch (the re-open path).
    """
    plans = []
    for i in range(connections):
        mine = wfs[i::connections]
        if not mine:
            raise ValueError("need at least as many workflows as connections")
        plans.append([["POST", f"/open_batch/{wf}", "open"] for wf in mine])
    return plans
