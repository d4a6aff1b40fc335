"""The operator's view: an auto-refreshing HTML page of every workflow and job.

The view functions here are pure (state + the Redis clock in, plain dicts out); what
"last success", "open since" and "stale" mean is health.py's, shared with the metrics.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from urllib.parse import urlencode

import redis
from flask import Blueprint, render_template, request

from ..rules import fleet as fleet_rules
from ..rules import lateness, times
from ..rules.health import last_success, open_since, parse_moment, stale_after_seconds
from ..rules.fields import RUNTIME_FIELDS
from ..rules.jobs import Status
from .db import services
from ..errors import InvalidParameter
from .http import endpoint, params, parse_text, parse_whole_number
from .schema import HTML, param

bp = Blueprint("dashboard", __name__)
log = logging.getLogger("batchy")

DEFAULT_REFRESH = 30
MAX_REFRESH = 86400
STATUS_CLASSES = {Status.NEW, Status.OPEN, Status.SUCCESS, Status.FAILED}
# Shown in their own columns, so left out of the job's parameter tooltip.
SHOWN_FIELDS = set(RUNTIME_FIELDS) | {"last_success_start", "last_success_end", "coverage_holes"}
MAX_MESSAGE_SHOWN = 300
PAGE_SIZE = 50  # workflows per page: a page's cost grows with it, not with the fleet
MAX_QUERY = 200


def human_duration(seconds: float | None) -> str:
    """Return a short duration such as 45s, 12m 05s, 3h 04m or 2d 03h."""
    if seconds is None:
        return ""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"


def show_time(moment: datetime | None, tz=timezone.utc) -> str:
    """Return a time as the page shows it: in the page's one zone, to the second, with its offset."""
    if not moment:
        return ""
    local = moment.astimezone(tz)
    offset = local.strftime("%z")
    return local.strftime("%Y-%m-%d %H:%M:%S ") + offset[:3] + ":" + offset[3:5]


def show_value(value) -> str:
    """Return a parameter's value as YAML writes it (true, false, null), not Python."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def job_view(name: str, job: dict, now: datetime, stale_after: float | None, tz=timezone.utc,
             settings: dict | None = None) -> dict:
    """Return what the page shows of one job, its times in zone tz."""
    status = str(job.get("status") or "")
    start = parse_moment(job.get("batch_start"))
    end = parse_moment(job.get("batch_end"))
    running = status == Status.OPEN
    if start and (end or running):
        duration = ((end if end and not running else now) - start).total_seconds()
    else:
        duration = None
    success = last_success(job)
    since = (now - success).total_seconds() if success else None
    params = {k: v for k, v in job.items() if k not in SHOWN_FIELDS}
    message = "" if job.get("message") is None else str(job.get("message"))
    records = job.get("records_processed")
    return {
        "name": name,
        "status": status,
        "status_class": status if status in STATUS_CLASSES else "other",
        "batch_id": "" if job.get("batch_id") is None else job.get("batch_id"),
        "start": show_time(start, tz),
        "start_iso": job.get("batch_start") or "",
        "end": "" if running else show_time(end, tz),
        "end_iso": "" if running else job.get("batch_end") or "",
        "duration": human_duration(duration),
        "running": running and duration is not None,
        "from_date": show_time(parse_moment(job.get("from_date")), tz),
        "to_date": job.get("to_date") or "",
        "records": "" if records is None else f"{records:,}" if isinstance(records, int) else str(records),
        "since": human_duration(since) if success else "never",
        "since_iso": times.format_time(success) if success else "",
        "stale": bool(stale_after and since is not None and since > stale_after),
        "message": message[:MAX_MESSAGE_SHOWN] + ("…" if len(message) > MAX_MESSAGE_SHOWN else ""),
        "message_full": message,
        "params": ", ".join(f"{k}={show_value(v)}" for k, v in params.items()),
        "late": (lateness.job_lateness(job, settings or {}, now) or {}).get("reason", ""),
        "holes": job.get("coverage_holes") or 0,
    }


def backfill_view(entry: dict) -> dict:
    """Return what the page shows of a running backfill: its id, range and progress."""
    progress = entry.get("progress") or {}
    done = sum(progress.get(s, 0) for s in ("success", "failed", "cancelled"))
    return {"id": entry.get("backfill_id"), "done": done, "chunks": progress.get("chunks", 0),
            "failed": progress.get("failed", 0), "percent": int(round(100 * (progress.get("done") or 0))),
            "range": f"{entry.get('from', '')} - {entry.get('to', '')}"}


def workflow_view(wf: str, data: dict, now: datetime, pause: dict | None = None, tz=timezone.utc) -> dict:
    """Return what the page shows of one workflow: its header and its job rows."""
    settings = data.get("settings") or {}
    stale_after = stale_after_seconds(settings)
    jobs = [job_view(name, job, now, stale_after, tz, settings) for name, job in data["jobs"].items()]
    stuck = lateness.workflow_stuck(data["jobs"], settings, now)
    since = open_since(data["jobs"])
    counts = data.get("counts") or {}
    return {
        "name": wf,
        "jobs": jobs,
        "opened": counts.get("open", 0),
        "closed": counts.get("close", 0),
        "failed": counts.get("fail", 0),
        "last_batch_id": data.get("last_batch_id") or "",
        "open_for": human_duration((now - since).total_seconds()) if since else "",
        "stale_after_hours": settings.get("stale_after_hours") if stale_after else None,
        "stale": sum(job["stale"] for job in jobs),
        "pause": pause_view(pause, tz),
        "error": data.get("error") or "",
        "stuck": stuck["reason"] if stuck else "",
        "late": sum(1 for job in jobs if job["late"]),
        "failing": sum(1 for job in jobs if job["status"] == Status.FAILED),
        "backfills": [backfill_view(b) for b in data.get("backfills") or []],
    }


def pause_view(pause: dict | None, tz=timezone.utc) -> dict | None:
    """Return a pause record as shown: since and message, or None when not paused."""
    if not pause:
        return None
    return {"since": show_time(parse_moment(pause.get("since")), tz), "message": pause.get("message") or ""}


def page_view(overview: dict[str, dict], order: list[str], fleet: dict, now: datetime, pauses: dict | None = None,
              tz=timezone.utc, tz_name: str = "UTC") -> dict:
    """Return the page's data: the fleet's summary (storage.fleet.Fleet.summaries), then the
    overview's workflows in order (those needing attention first, then by name), times in tz."""
    pauses = pauses or {}
    paused = pauses.get("workflows") or {}
    attention = {s["name"] for s in fleet["workflows"] if s["attention"]}
    flows = [workflow_view(wf, overview[wf], now, paused.get(wf), tz) for wf in order if wf in overview]
    for flow in flows:
        flow["attention"] = flow["name"] in attention
    totals = fleet["totals"]
    return {
        "workflows": flows,
        "totals": totals,
        "summary": totals["statuses"],
        "as_of": show_time(fleet["now"], tz),
        "now": show_time(now, tz),
        "now_iso": times.format_time(now),
        "tz": tz_name,
        "service_pause": pause_view(pauses.get("service"), tz),
    }


def page_zone() -> tuple:
    """Return ?tz= (the page's one time zone, UTC by default) as (zone, name)."""
    name = request.args.get("tz", "") or "UTC"
    try:
        return times.zone(name), name
    except (ValueError, TypeError) as exc:
        raise InvalidParameter(str(exc), parameter="tz") from None


def refresh_seconds() -> int:
    """Return ?refresh= (seconds between reloads, 0 = never), 30 by default."""
    value = request.args.get("refresh", "")
    if value == "":
        return DEFAULT_REFRESH
    if not value.isascii() or not value.isdigit() or int(value) > MAX_REFRESH:
        raise InvalidParameter(
            f"refresh must be a whole number of seconds from 0 (off) to {MAX_REFRESH}, not {value[:40]!r}",
            parameter="refresh",
        )
    return int(value)


def running_backfills(overview: dict[str, dict]) -> None:
    """Add each workflow's running backfills (with their progress) to the overview."""
    if not overview:
        return
    for wf, running in services().backfills.running(sorted(overview)).items():
        overview[wf]["backfills"] = running
        problem = next((b["error"] for b in running if b.get("error")), None)
        if problem and not overview[wf].get("error"):
            overview[wf]["error"] = problem


def page_number(values: dict) -> int:
    """Return ?page= (from 1), 1 by default."""
    number = parse_whole_number(values, "page")
    if number is None:
        return 1
    if number < 1:
        raise InvalidParameter("page must be a whole number from 1", parameter="page")
    return number


def state_filter(values: dict) -> str:
    """Return ?state= (a job status, or a condition such as late), empty for all."""
    state = values.get("state") or ""
    if state and state not in fleet_rules.STATES:
        raise InvalidParameter(f"state must be one of {', '.join(fleet_rules.STATES)}, not {str(state)[:40]!r}",
                               parameter="state")
    return state


@endpoint(bp, "/", "/dashboard", summary="The operator's dashboard", ok=HTML, reads="dashboard", params=[
    param("refresh", schema={"type": "string", "pattern": "^[0-9]{1,5}$"}, description="Seconds between reloads, 0: never"),
    param("tz", example="Europe/Paris", description="The page's time zone"),
    param("q", schema={"type": "string", "maxLength": MAX_QUERY},
          description="Only workflows whose name, or a job's name, contains this text (any case)"),
    param("state", schema={"type": "string", "enum": list(fleet_rules.STATES)},
          description="Only workflows with a job in this status, or late, stuck, failing (attention)..."),
    param("page", schema={"type": "integer", "minimum": 1}, description=f"Page of {PAGE_SIZE} workflows, from 1")])
def dashboard():
    values = params()
    refresh = refresh_seconds()
    tz, tz_name = page_zone()
    text = (parse_text(values, "q", MAX_QUERY) or "").strip()
    state = state_filter(values)
    number = page_number(values)
    found = services()
    try:
        fleet = found.fleet.summaries()
        chosen = [s for s in fleet["workflows"] if fleet_rules.matches(s, text, state)]
        shown, pages = fleet_rules.page_of(chosen, number, PAGE_SIZE)
        names = [s["name"] for s in shown]
        # Only the workflows shown are read in full, and fresh.
        now = found.store.now()
        overview = found.history.overview(names)
        pauses = found.pauses.status(names)
        running_backfills(overview)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        # An HTML page, not the JSON error: the open tab keeps refreshing and recovers by itself.
        log.warning("dashboard: redis unavailable: %s", exc)
        html = render_template("dashboard.html", page=None, refresh=refresh, query=query_of(values),
                               error="Redis is not reachable; this page retries by itself.")
        return html, 503, {"Cache-Control": "no-store"}
    page = page_view(overview, names, fleet, now, pauses, tz, tz_name)
    page.update(q=text, state=state, number=number, pages=pages, matching=len(chosen), page_size=PAGE_SIZE,
                links=page_links(values, number, pages))
    html = render_template("dashboard.html", page=page, refresh=refresh, query=query_of(values), error=None)
    return html, 200, {"Cache-Control": "no-store"}


def query_of(values: dict) -> dict:
    """Return the parameters a form or link of the page carries on (refresh, tz)."""
    return {k: values[k] for k in ("refresh", "tz") if values.get(k)}


def page_links(values: dict, number: int, pages: int) -> dict:
    """Return the query strings of the previous and next pages (None at either end)."""
    kept = {k: v for k, v in values.items() if k != "page" and v}

    def link(n):
        return "?" + urlencode({**kept, "page": n}) if 1 <= n <= pages else None

    return {"previous": link(number - 1), "next": link(number + 1), "first": link(1) if number > 1 else None}
