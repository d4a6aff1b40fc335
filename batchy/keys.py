"""The only place Redis key names are built.

The workflow hash `<wf>` and the batch snapshots `<wf>-<batch_id>` are the storage
contract operators read with redis-cli; everything else Batchy keeps lives under
`batchy:`, which a workflow name can never reach (names have no colon).
"""
from __future__ import annotations

NAMESPACE = "batchy:"
WORKFLOWS = NAMESPACE + "workflows"  # set of loaded workflow names
BATCHES = NAMESPACE + "batches"  # zset of "<wf>-<batch_id>" scored by batch start (epoch s)
PAUSE = NAMESPACE + "pause"  # hash: the service-wide pause, if any
CHANNEL_PATTERN = NAMESPACE + "changed:*"


def workflow(wf: str) -> str:
    """Hash of the current state: one field per job, each a JSON object."""
    return wf


def batch_prefix(wf: str) -> str:
    """Prefix of the batch snapshot keys (the commit script builds old ones from it)."""
    return wf + "-"


def batch(wf: str, batch_id: int | str) -> str:
    """Hash of one batch's snapshot, same shape as the workflow hash."""
    return f"{wf}-{batch_id}"


def meta(wf: str) -> str:
    """Hash of bookkeeping: version (bumped on every change), last_batch_id, config."""
    return f"{NAMESPACE}wf:{wf}"


def history(wf: str) -> str:
    """Zset of the workflow's batch ids, scored by batch id."""
    return f"{NAMESPACE}history:{wf}"


def events(wf: str) -> str:
    """Capped stream of audit events for the workflow."""
    return f"{NAMESPACE}events:{wf}"


def pause(wf: str) -> str:
    """Hash: the workflow's pause, if any."""
    return f"{NAMESPACE}pause:{wf}"


def turn(wf: str) -> str:
    """String, briefly: the writer whose commit to the workflow goes next (see scripts.COMMIT)."""
    return f"{NAMESPACE}turn:{wf}"


def pause_history() -> str:
    """Capped stream of pause and resume events, service-wide and per workflow."""
    return f"{NAMESPACE}pause-history"


def channel(wf: str) -> str:
    """Pub/sub channel every state change of the workflow is announced on."""
    return f"{NAMESPACE}changed:{wf}"


def workflow_from_channel(name: str) -> str:
    return name[len(NAMESPACE) + len("changed:"):]
