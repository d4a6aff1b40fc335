"""Validation of workflow and job names: the one gate before a name becomes a key or a path."""
from __future__ import annotations

import re

from ..errors import InvalidName

NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# `<wf>-<digits>` is the key of a batch snapshot, so a workflow may not be named like one.
_BATCH_KEY_RE = re.compile(r".*-[0-9]+")


def check_workflow(wf: str) -> str:
    """Return wf if it is a valid workflow name, else raise InvalidName."""
    if not isinstance(wf, str) or not NAME_RE.fullmatch(wf):
        raise InvalidName(
            f"invalid workflow name {_show(wf)}: use 1-128 of A-Z a-z 0-9 _ . - "
            "starting with a letter, digit or underscore",
            workflow=_clip(wf),
        )
    if _BATCH_KEY_RE.fullmatch(wf):
        raise InvalidName(
            f"invalid workflow name {wf!r}: a name ending in -<digits> would collide "
            "with the batch snapshot keys <wf>-<batch_id>",
            workflow=wf,
        )
    return wf


def check_job(job: str, wf: str | None = None) -> str:
    """Return job if it is a valid job name, else raise InvalidName."""
    if not isinstance(job, str) or not NAME_RE.fullmatch(job):
        raise InvalidName(
            f"invalid job name {_show(job)}: use 1-128 of A-Z a-z 0-9 _ . - "
            "starting with a letter, digit or underscore",
            workflow=wf,
            job=_clip(job),
        )
    return job


def _show(value) -> str:
    """Render an untrusted name for a message: repr, clipped."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _clip(value) -> str:
    return str(value)[:128]
