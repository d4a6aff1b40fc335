"""The coverage page: each job's ledger, its holes and the chunks of running backfills as a timeline.

Server-rendered SVG, read-only: a hole links to the running backfill that repairs it, or
shows the `batchy backfill create` command that would. The geometry is rules/timeline.py's.
"""
from __future__ import annotations

import shlex
from datetime import datetime
from urllib.parse import urlencode

from flask import Blueprint, render_template

from ..errors import InvalidParameter
from ..rules import backfill, coverage, timeline
from ..rules.times import UTC, format_time, parse_time
from .dashboard import page_zone, show_time
from .db import services
from .http import endpoint, params, parse_job, parse_moment
from .schema import DATE, HTML, JOB, param

bp = Blueprint("coverage_page", __name__)

# Drawn bottom to top in the backfill lane: a failed chunk stays visible over the others.
CHUNK_KINDS = (backfill.ChunkStatus.SUCCESS, backfill.ChunkStatus.PENDING, backfill.ChunkStatus.LEASED,
               backfill.ChunkStatus.FAILED)
LEGEND = (("covered", "covered"), ("hole", "hole"), ("dirty", "dirty: invalidated by late data"),
          ("quality", "failed quality check"), ("success", "backfill chunk: success"),
          ("pending", "backfill chunk: pending"), ("leased", "backfill chunk: leased"),
          ("failed", "backfill chunk: failed"))
MAX_HOLES_LISTED = 100  # per job and period; the rest are counted, and a narrower zoom lists them
MAX_BACKFILLS = 50  # the newest running backfills read
MAX_JOBS_SHOWN = 100  # timelines per page, in name order; ?job= shows any one of the others


def _epochs(pairs: list) -> list[list]:
    """Return [[from, to, from_text, to_text]...] of the coverage answer's [[from_text, to_text]...]."""
    return [[parse_time(low).timestamp(), parse_time(high).timestamp(), low, high] for low, high in pairs]


def running_chunks(wf: str, jobs: list[str]) -> tuple[dict, dict]:
    """Return ({job: {status: [[from, to]...]}}, {job: {backfill_id: merged spans it fills}}) of the
    chunks of wf's running backfills: what the backfill lane draws and what may repair a hole."""
    found = services().backfills
    drawn: dict[str, dict] = {job: {} for job in jobs}
    filling: dict[str, dict] = {job: {} for job in jobs}
    lost = (backfill.ChunkStatus.FAILED, backfill.ChunkStatus.CANCELLED)
    for entry in found.list(wf, MAX_BACKFILLS):
        if entry["status"] != backfill.RUNNING:
            continue
        bid = entry["backfill_id"]
        for chunk in found.get(wf, bid)["chunks"]:
            if chunk["job"] not in drawn:
                continue
            span = [parse_time(chunk["from_date"]).timestamp(), parse_time(chunk["to_date"]).timestamp()]
            drawn[chunk["job"]].setdefault(chunk["status"], []).append(span)
            if chunk["status"] not in lost:
                filling[chunk["job"]].setdefault(bid, []).append(span)
    for spans in filling.values():
        for bid, found_spans in spans.items():
            spans[bid] = coverage.union(found_spans, [])
    return drawn, filling


def hole_view(wf: str, job: str, hole: list, filling: dict, tz, dirty: list = (), failed: list = ()) -> dict:
    """Return a listed hole: its times, what made it (a gap, late data, a failed quality check), and the
    backfill repairing it or the command that would."""
    low, high, low_text, high_text = hole
    bid = timeline.repairing((low, high), filling)
    kind = "dirty" if coverage.clip(list(dirty), low, high) else "quality" if coverage.clip(list(failed), low, high) \
        else "hole"
    return {
        "kind": kind,
        "from": show_time(datetime.fromtimestamp(low, UTC), tz), "to": show_time(datetime.fromtimestamp(high, UTC), tz),
        "backfill": bid,
        "command": None if bid is not None else " ".join(
            ["batchy", "backfill", "create", shlex.quote(wf), "--from", shlex.quote(low_text), "--to",
             shlex.quote(high_text), "--job", shlex.quote(job)]),
    }


def job_timeline(wf: str, job: str, ledger: dict, chunks: dict, filling: dict, start: float, end: float,
                 tz) -> dict:
    """Return what the page draws of one job within [start, end)."""
    holes = [h for h in _epochs(ledger["holes"]) if h[1] > start and h[0] < end]
    covered = [c[:2] for c in _epochs(ledger["covered"])]
    dirty = [d[:2] for d in _epochs(ledger.get("dirty") or [])]
    failed = [f[:2] for f in _epochs(ledger.get("failed_quality") or [])]
    hole_marks = timeline.marks([h[:2] for h in holes], start, end)
    return {
        "name": job,
        "covered": timeline.marks(covered, start, end),
        "holes": hole_marks,
        # Drawn over the holes they are part of, in their own colours.
        "spoiled": [("dirty", timeline.marks(dirty, start, end)), ("quality", timeline.marks(failed, start, end))],
        "generation": ledger.get("generation") or 0,
        "chunks": [(str(kind), timeline.marks(chunks.get(str(kind), []), start, end)) for kind in CHUNK_KINDS],
        "listed": [hole_view(wf, job, h, filling, tz, dirty, failed) for h in holes[:MAX_HOLES_LISTED]],
        "unlisted": max(0, len(holes) - MAX_HOLES_LISTED),
        "hole_count": len(holes),
    }


def zoom_of(values: dict) -> str:
    zoom = values.get("zoom") or "all"
    if zoom not in timeline.ZOOMS:
        raise InvalidParameter(f"zoom must be one of {', '.join(timeline.ZOOMS)}, not {str(zoom)[:40]!r}",
                               parameter="zoom")
    return zoom


@endpoint(bp, "/coverage/<wf>/view", summary="The coverage page: each job's ledger as a timeline", ok=HTML,
          reads="history", params=[
              JOB, param("zoom", schema={"type": "string", "enum": list(timeline.ZOOMS)},
                         description="The period shown: a day, a week, a month, or everything (default)"),
              param("at", schema=DATE, description="A time in the period shown (default now; no offset: ?tz=)"),
              param("tz", example="Europe/Paris", description="The page's time zone")])
def coverage_view(wf):
    values = params()
    tz, tz_name = page_zone()
    zoom = zoom_of(values)
    job = parse_job(values, wf)
    found = services()
    ledgers = found.history.coverage(wf, job)
    hidden = max(0, len(ledgers) - MAX_JOBS_SHOWN)
    ledgers = dict(list(ledgers.items())[:MAX_JOBS_SHOWN])
    now = found.store.now()
    at = parse_moment(values, "at", local=True)
    at = now if at is None else at if at.tzinfo else at.replace(tzinfo=tz)
    chunks, filling = running_chunks(wf, list(ledgers))
    spans = [[c[0], c[1]] for ledger in ledgers.values() for c in _epochs(ledger["covered"] + ledger["holes"])]
    spans += [s for by_status in chunks.values() for found_spans in by_status.values() for s in found_spans]
    start, end = timeline.period(zoom, at, tz, timeline.extent(spans))
    jobs = [job_timeline(wf, name, ledgers[name], chunks[name], filling[name], start, end, tz) for name in ledgers]
    kept = {k: v for k, v in values.items() if k in ("tz", "job") and v}

    def link(**changes):
        return "?" + urlencode({**kept, "zoom": zoom, **changes})

    around = timeline.neighbours(zoom, start, tz)
    page = {
        "workflow": wf, "zoom": zoom, "tz": tz_name, "jobs": jobs, "legend": LEGEND, "hidden": hidden,
        "from": show_time(datetime.fromtimestamp(start, UTC), tz),
        "to": show_time(datetime.fromtimestamp(end, UTC), tz),
        "now": show_time(now, tz),
        "ticks": timeline.ticks(start, end, tz),
        "width": timeline.WIDTH,
        "zooms": [(z, "?" + urlencode({**kept, "zoom": z, "at": format_time(at, tz)})) for z in timeline.ZOOMS],
        "previous": link(at=format_time(around[0], tz)) if around else None,
        "next": link(at=format_time(around[1], tz)) if around else None,
        "today": link() if around else None,
    }
    return render_template("coverage.html", page=page), 200, {"Cache-Control": "no-store"}
