"""Announcements to BATCHY_WEBHOOK_URL: a batch failed, a job is late, a batch is stuck.

Events go through an outbox list in Redis, each once: an event's id is claimed with
SET NX before it is queued, so every process and every instance may notice the same
failure or lateness and only one queues it. One process at a time (a leader elected
through a Redis key with an expiry) checks lateness on its own clock, so an alert fires
even when no ETL calls the API, and drains the outbox: a JSON POST with a `text` field
(what Slack and Teams incoming webhooks show), a timeout, and retries on later rounds
while the receiver is down. Nothing here runs on a request's thread.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import urllib.error
import urllib.request

import redis

from . import keys, lateness

log = logging.getLogger("batchy")

SEEN_DAYS = 7  # how long an event id is remembered (no second announcement)
MAX_TRIES = 50  # rounds an event is retried while the receiver is down, then dropped (logged)

# Take or keep the lead. KEYS[1] the leader key; ARGV[1] this process' token, ARGV[2] ms.
# Returns 1 while this process leads.
LEAD = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


def event_id(kind: str, *parts) -> str:
    """Return a stable id for an event: the same failure or lateness always gets the same one."""
    return hashlib.sha256(json.dumps([kind, *parts]).encode()).hexdigest()[:32]


def announce(client: redis.Redis, kind: str, text: str, ident: str, **fields) -> bool:
    """Queue an event once across every process (False: it was queued before)."""
    if not client.set(keys.webhook_seen(ident), "1", nx=True, ex=SEEN_DAYS * 86400):
        return False
    body = {"text": text, "event": kind, **fields}
    client.lpush(keys.WEBHOOK_OUTBOX, json.dumps({"body": body, "tries": 0}))
    return True


def failure_text(wf: str, jobs: dict) -> tuple[str, str]:
    """Return (text, event id) for a fail_batch that just failed jobs of wf."""
    failed = sorted(name for name, job in jobs.items() if job.get("status") == "failed")
    batch = next((job.get("batch_id") for job in jobs.values() if job.get("status") == "failed"), None)
    messages = "; ".join(f"{n}: {jobs[n].get('message')}" for n in failed if jobs[n].get("message"))
    text = f"Batchy: batch {batch} of {wf} failed ({', '.join(failed)})" + (f": {messages}" if messages else "")
    return text[:2000], event_id("failed", wf, batch, failed)


class Watchman:
    """The background thread of one process: lead, check lateness, deliver the outbox."""

    def __init__(self, store, url: str, interval: float, timeout: float = 5.0):
        self.store = store
        self.url = url
        self.interval = interval
        self.timeout = timeout
        self.token = f"{random.getrandbits(64):016x}"
        self.stopped = threading.Event()
        self._lead = store.redis.register_script(LEAD)
        self.thread = threading.Thread(target=self._run, name="batchy-webhooks", daemon=True)

    def start(self) -> "Watchman":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def _run(self) -> None:
        while not self.stopped.wait(self.interval * random.uniform(0.8, 1.0)):
            try:
                self.round()
            except (redis.RedisError, OSError) as exc:
                log.warning("webhooks: %s", exc)
            except Exception:  # noqa: BLE001 - the thread must outlive any surprise
                log.exception("webhooks: round failed")

    def round(self) -> int:
        """Check and deliver once if this process leads; return the events delivered."""
        if not int(self._lead(keys=[keys.WEBHOOK_LEADER], args=[self.token, int(self.interval * 3000)])):
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
        for item in lateness.late_list(self.store.overview(self.store.workflows()), self.store.now()):
            what = f"{item['workflow']}/{item['job']}" if item["job"] else item["workflow"]
            text = (f"Batchy: the lateness of {what} cannot be checked: {item['reason']}"
                    if item["kind"] == "unchecked" else f"Batchy: {what} is {item['kind']}: {item['reason']}")
            ident = event_id(item["kind"], item["workflow"], item["job"], item["since"], item["reason"]
                             if item["since"] is None else "")
            announce(client, item["kind"], text, ident, workflow=item["workflow"], job=item["job"],
                     since=item["since"], reason=item["reason"])

    def deliver(self) -> int:
        """Send every queued event, oldest first; keep one that fails for the next round."""
        client = self.store.redis
        sent = 0
        for _ in range(client.llen(keys.WEBHOOK_OUTBOX)):
            raw = client.rpoplpush(keys.WEBHOOK_OUTBOX, keys.WEBHOOK_SENDING)
            if raw is None:
                break
            entry = json.loads(raw)
            delivered = self._post(entry["body"])
            if delivered:
                sent += 1
            elif entry["tries"] + 1 < MAX_TRIES:
                entry["tries"] += 1
                client.rpush(keys.WEBHOOK_OUTBOX, json.dumps(entry))  # back where it was: oldest first
            else:
                log.warning("webhooks: giving up on %s after %d tries", entry["body"].get("text"), MAX_TRIES)
            client.lrem(keys.WEBHOOK_SENDING, 1, raw)
            if not delivered:
                break  # the receiver is down: the rest waits for the next round
        return sent

    def _post(self, body: dict) -> bool:
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return 200 <= resp.status < 300
        except (urllib.error.URLError, OSError, ValueError) as exc:
            log.warning("webhooks: %s did not take an event (%s); retrying later", self.url, exc)
            return False


def start(app, store) -> Watchman | None:
    """Start this process' watchman when BATCHY_WEBHOOK_URL is set."""
    url = app.config.get("BATCHY_WEBHOOK_URL")
    if not url:
        return None
    return Watchman(store, url, float(app.config["BATCHY_WEBHOOK_INTERVAL"])).start()
