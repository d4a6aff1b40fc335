"""Announcements to BATCHY_WEBHOOK_URL: a batch failed, a job is late, a batch is stuck.

Events go through an outbox list in Redis, each once: an event's id is claimed with
SET NX before it is queued, so every process and every instance may notice the same
failure or lateness and only one queues it. One process at a time (a leader elected
through a Redis key with an expiry) checks lateness on its own clock, so an alert fires
even when no ETL calls the API, and drains the outbox: a JSON POST with a `text` field
(what Slack and Teams incoming webhooks show), a timeout, and retries on later rounds
while the receiver is down. Nothing here runs on a request's thread.

Delivery is at least once (storage/outbox.py, the reliable-queue pattern shared with the
OpenLineage sender): an event being posted sits in an in-flight zset scored by its deadline,
Redis' clock plus the visibility timeout; the deliverer that takes the next event first
hands every event past its deadline back to the outbox, so an event whose sender died
(kill -9, OOM, a worker timeout) is posted again. A graceful exit hands its event back at
once. A duplicate carries the same event `id`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import urllib.error
import urllib.parse
import urllib.request

from typing import Callable

import redis

from . import keys
from ..rules import lateness
from .outbox import Background, Lead, Outbox

log = logging.getLogger("batchy")

SEEN_DAYS = 7  # how long an event id is remembered (no second announcement)
MAX_TRIES = 50  # rounds an event is retried while the receiver is down, then dropped (logged)

# Queue an event unless its id was queued before: claiming the id and queuing the event are one
# step, so a process that dies in between cannot leave an id claimed and its event never queued.
# KEYS[1] batchy:webhook-seen:<id>, KEYS[2] the outbox; ARGV[1] seconds the id is remembered, ARGV[2] the entry.
# Returns 1 when queued, 0 when queued before.
ANNOUNCE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
"""

def event_id(kind: str, *parts) -> str:
    """Return a stable id for an event: the same failure or lateness always gets the same one."""
    return hashlib.sha256(json.dumps([kind, *parts]).encode()).hexdigest()[:32]


def announce(client: redis.Redis, kind: str, text: str, ident: str, style: keys.KeyStyle = keys.CLASSIC,
             **fields) -> bool:
    """Queue an event once across every process (False: it was queued before)."""
    body = {"text": text, "event": kind, "id": ident, **fields}
    entry = json.dumps({"body": body, "tries": 0})
    queue = client.register_script(ANNOUNCE)
    return bool(int(queue(keys=[style.webhook_seen(ident), style.WEBHOOK_OUTBOX], args=[SEEN_DAYS * 86400, entry])))


def redact(url: str) -> str:
    """Return a webhook URL as a log may show it: scheme and host; its path and query (where
    Slack and Teams keep the secret) and any user:password as `/***`."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(a webhook URL that cannot be read)"
    host = f"[{host}]" if ":" in host else host
    hidden = parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None
    return f"{parts.scheme}://{host}{port}" + ("/***" if hidden else "")


def slack_escape(text: str) -> str:
    """Return text with Slack's control characters escaped (&, <, >): a message shows as
    written, never as a mention (<!channel>) or a link labelled as another (<url|label>)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def payload(body: dict) -> dict:
    """Return what is posted for a queued event: `text` escaped for Slack, the text as
    written in `raw_text`."""
    text = body.get("text")
    if not isinstance(text, str) or "raw_text" in body:
        return body
    return {**body, "text": slack_escape(text), "raw_text": text}


def failure_text(wf: str, jobs: dict) -> tuple[str, str]:
    """Return (text, event id) for a fail_batch that just failed jobs of wf."""
    failed = sorted(name for name, job in jobs.items() if job.get("status") == "failed")
    batch = next((job.get("batch_id") for job in jobs.values() if job.get("status") == "failed"), None)
    messages = "; ".join(f"{n}: {jobs[n].get('message')}" for n in failed if jobs[n].get("message"))
    text = f"Batchy: batch {batch} of {wf} failed ({', '.join(failed)})" + (f": {messages}" if messages else "")
    return text[:2000], event_id("failed", wf, batch, failed)


class Watchman(Background):
    """The background thread of one process: lead, check lateness, deliver the outbox."""

    def __init__(self, store, url: str, interval: float, timeout: float = 5.0, visibility: float = 0.0):
        visibility = visibility or 2 * timeout + 5  # a post takes at most about 2 timeouts: connect, answer
        if visibility <= timeout:
            raise ValueError(f"BATCHY_WEBHOOK_VISIBILITY_TIMEOUT ({visibility:g} s) must be longer than "
                             f"BATCHY_WEBHOOK_TIMEOUT ({timeout:g} s): a slow post would be sent twice")
        super().__init__(interval, "batchy-webhooks", "webhooks")
        self.store = store
        self.url = url
        self.timeout = timeout
        self.visibility = visibility
        self.lead = Lead(store.redis, store.keys.WEBHOOK_LEADER, int(interval * 3000))
        self.outbox = Outbox(store.redis, store.keys.WEBHOOK_OUTBOX, store.keys.WEBHOOK_INFLIGHT,
                             store.keys.WEBHOOK_SENDING,
                             visibility=visibility, max_tries=MAX_TRIES, name="webhooks")

    @property
    def leading(self) -> bool:
        return self.lead.leading


    def leads(self) -> bool:
        """Take or keep the lead; return whether this process leads."""
        return self.lead.take()

    def round(self) -> int:
        """Check and deliver once if this process leads; return the events delivered."""
        if not self.leads():
            return 0
        try:
            self.check_lateness()
        except (redis.RedisError, OSError):
            raise
        except Exception:  # noqa: BLE001 - a surprise in one check must not hold up queued alerts
            log.exception("webhooks: checking lateness failed; delivering what is queued")
        return self.deliver()

    def check_lateness(self) -> None:
        client = self.store.redis
        overview = self.store.reads.overview(self.store.workflows())
        items = lateness.late_list(overview, self.store.now())
        episodes, record = self.lag_episodes(overview, items)
        begun_at = self.store.now().isoformat()
        for item in items:
            extra = ""
            if item["kind"] == "coverage_lag":
                since = episodes.get((item["workflow"], item["job"]))
                if since is None:
                    continue  # announced when its episode began
                item = {**item, "since": since}
                extra = begun_at  # a later episode with the same coverage end is a new event
            what = f"{item['workflow']}/{item['job']}" if item["job"] else item["workflow"]
            shown = {"coverage_lag": "behind on coverage"}.get(item["kind"], item["kind"])
            text = (f"Batchy: the lateness of {what} cannot be checked: {item['reason']}"
                    if item["kind"] == "unchecked" else f"Batchy: {what} is {shown}: {item['reason']}")
            ident = event_id(item["kind"], item["workflow"], item["job"], item["since"], item["reason"]
                             if item["since"] is None else extra)
            announce(client, item["kind"], text, ident, self.store.keys, workflow=item["workflow"], job=item["job"],
                     since=item["since"], reason=item["reason"])
        record()  # after the announcements: a failure in between announces again, never loses one

    def lag_episodes(self, overview: dict, items: list[dict]) -> tuple[dict[tuple, str], Callable[[], None]]:
        """Return {(wf, job): since} of the coverage-lag episodes that begin now (announced once:
        a job stays behind for many checks), and what records them and forgets those that
        ended (to call once they are announced)."""
        behind = {(i["workflow"], i["job"]): i["since"] for i in items if i["kind"] == "coverage_lag"}
        watched = sorted({wf for wf, _ in behind} | {wf for wf, data in overview.items() if _watches_lag(data)})
        if not watched:
            return {}, lambda: None
        pipe = self.store.redis.pipeline(transaction=False)
        for wf in watched:
            pipe.hgetall(self.store.keys.lag_episodes(wf))
        known = dict(zip(watched, pipe.execute()))
        begun: dict[tuple, str] = {}
        pipe = self.store.redis.pipeline(transaction=False)
        for wf in watched:
            for job in known[wf]:
                if (wf, job) not in behind:
                    pipe.hdel(self.store.keys.lag_episodes(wf), job)  # caught up: the next episode is announced again
        for (wf, job), since in behind.items():
            if job not in known[wf]:
                begun[(wf, job)] = since
                pipe.hset(self.store.keys.lag_episodes(wf), job, since or "")
        return begun, pipe.execute

    def deliver(self) -> int:
        """Send every queued event, oldest first; keep one that fails for the next round.

        Events whose sender died are handed back first (outbox.TAKE), after the visibility timeout.
        """
        # A long round keeps the lead, or lets the new leader go on alone.
        return self.outbox.deliver(self._post, lambda sent: not self.stopped.is_set() and (not sent or self.leads()))

    def _post(self, body: dict) -> bool:
        try:
            req = urllib.request.Request(self.url, data=json.dumps(payload(body)).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return 200 <= resp.status < 300
        except (urllib.error.URLError, OSError, ValueError) as exc:
            shown = redact(self.url)  # the URL is the secret of a Slack webhook: never logged whole
            log.warning("webhooks: %s did not take an event (%s); retrying later", shown,
                        str(exc).replace(self.url, shown))
            return False


def _watches_lag(data: dict) -> bool:
    if (data.get("settings") or {}).get("max_coverage_lag_hours") is not None:
        return True
    return any(isinstance(job, dict) and job.get("max_coverage_lag_hours") is not None
               for job in data.get("jobs", {}).values())


def start(app, store) -> Watchman | None:
    """Start this process' watchman when BATCHY_WEBHOOK_URL is set."""
    url = app.config.get("BATCHY_WEBHOOK_URL")
    if not url:
        return None
    return Watchman(store, url, float(app.config["BATCHY_WEBHOOK_INTERVAL"]),
                    float(app.config["BATCHY_WEBHOOK_TIMEOUT"]),
                    float(app.config["BATCHY_WEBHOOK_VISIBILITY_TIMEOUT"])).start()
