"""Announcements to BATCHY_WEBHOOK_URL: a batch failed, a job is late, a batch is stuck.

Events go through an outbox list in Redis, each once: an event's id is claimed with
SET NX before it is queued, so every process and every instance may notice the same
failure or lateness and only one queues it. One process at a time (a leader elected
through a Redis key with an expiry) checks lateness on its own clock, so an alert fires
even when no ETL calls the API, and drains the outbox: a JSON POST with a `text` field
(what Slack and Teams incoming webhooks show), a timeout, and retries on later rounds
while the receiver is down. Nothing here runs on a request's thread.

Delivery is at least once (the reliable-queue pattern): an event being posted sits in an
in-flight zset scored by its deadline, Redis' clock plus the visibility timeout; the
deliverer that takes the next event first hands every event past its deadline back to the
outbox, so an event whose sender died (kill -9, OOM, a worker timeout) is posted again.
A graceful exit hands its event back at once. A duplicate carries the same event `id`.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import logging
import random
import threading
import urllib.error
import urllib.parse
import urllib.request

import redis

from . import keys
from ..rules import lateness

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

# Queue an event unless its id was queued before: claiming the id and queuing the event are one
# step, so a process that dies in between cannot leave an id claimed and its event never queued.
# KEYS[1] batchy:webhook-seen:<id>, KEYS[2] the outbox; ARGV[1] seconds the id is remembered, ARGV[2] the entry.
# Returns 1 when queued, 0 when queued before.
ANNOUNCE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[2])
return 1
"""

# Take the next event to post, first handing back those whose sender died.
# KEYS[1] the outbox (list, taken from the right), KEYS[2] the in-flight zset (entry -> deadline, ms),
# KEYS[3] the list older versions moved an event to while posting (drained: it was never handed back).
# ARGV[1] the visibility timeout, ms.
# Returns {entry or nil, events handed back}.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local back = 0
while redis.call('RPOPLPUSH', KEYS[3], KEYS[1]) do back = back + 1 end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for i = #expired, 1, -1 do  -- the oldest ends at the right end: taken first
  redis.call('ZREM', KEYS[2], expired[i])
  redis.call('RPUSH', KEYS[1], expired[i])
  back = back + 1
end
local entry = redis.call('RPOP', KEYS[1])
if not entry then return {false, back} end
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[1]), entry)
return {entry, back}
"""

# An event was posted: forget it. KEYS[1] the outbox, KEYS[2] the in-flight zset; ARGV[1] the entry as taken.
# Returns 1; 0 when it had been handed back meanwhile (its queued copy is dropped too: one duplicate fewer).
DONE = """
if redis.call('ZREM', KEYS[2], ARGV[1]) == 1 then return 1 end
redis.call('LREM', KEYS[1], 0, ARGV[1])
return 0
"""

# An event was not posted: queue it again, at the end taken next (oldest first).
# KEYS[1] the outbox, KEYS[2] the in-flight zset; ARGV[1] the entry as taken, ARGV[2] the entry to queue
# ('' drops it). Returns 1; 0 when it had been handed back meanwhile (queued already: nothing to do).
AGAIN = """
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
if ARGV[2] ~= '' then redis.call('RPUSH', KEYS[1], ARGV[2]) end
return 1
"""

# Give up the lead, if held. KEYS[1] the leader key; ARGV[1] this process' token. Returns 1 if it was held.
RESIGN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
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


class Watchman:
    """The background thread of one process: lead, check lateness, deliver the outbox."""

    def __init__(self, store, url: str, interval: float, timeout: float = 5.0, visibility: float = 0.0):
        visibility = visibility or 2 * timeout + 5  # a post takes at most about 2 timeouts: connect, answer
        if visibility <= timeout:
            raise ValueError(f"BATCHY_WEBHOOK_VISIBILITY_TIMEOUT ({visibility:g} s) must be longer than "
                             f"BATCHY_WEBHOOK_TIMEOUT ({timeout:g} s): a slow post would be sent twice")
        self.store = store
        self.url = url
        self.interval = interval
        self.timeout = timeout
        self.visibility = visibility
        self.token = f"{random.getrandbits(64):016x}"
        self.stopped = threading.Event()
        self.posting: str | None = None  # the entry this process is posting now
        self.leading = False  # as of its last round
        self._lead = store.redis.register_script(LEAD)
        self._resign = store.redis.register_script(RESIGN)
        self._take = store.redis.register_script(TAKE)
        self._done = store.redis.register_script(DONE)
        self._again = store.redis.register_script(AGAIN)
        self.thread = threading.Thread(target=self._run, name="batchy-webhooks", daemon=True)

    def start(self) -> "Watchman":
        self.thread.start()
        atexit.register(self.stop)  # a graceful exit (gunicorn's SIGTERM) hands its event back
        return self

    def stop(self) -> None:
        """Stop; hand back the event being posted and the lead, so another process goes on at once."""
        self.stopped.set()
        entry, self.posting = self.posting, None
        if entry is None and not self.leading:
            return
        try:
            if entry is not None:
                self._again(keys=[self.store.keys.WEBHOOK_OUTBOX, self.store.keys.WEBHOOK_INFLIGHT], args=[entry, entry])
            self._resign(keys=[keys.WEBHOOK_LEADER], args=[self.token])
            self.leading = False
        except (redis.RedisError, OSError) as exc:  # the lead expires, the visibility timeout hands it back
            log.info("webhooks: could not hand back the lead or an event when stopping: %s", exc)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval * random.uniform(0.8, 1.0)):
            try:
                self.round()
            except (redis.RedisError, OSError) as exc:
                log.warning("webhooks: %s", exc)
            except Exception:  # noqa: BLE001 - the thread must outlive any surprise
                log.exception("webhooks: round failed")

    def leads(self) -> bool:
        """Take or keep the lead; return whether this process leads."""
        self.leading = bool(int(self._lead(keys=[keys.WEBHOOK_LEADER], args=[self.token, int(self.interval * 3000)])))
        return self.leading

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
        for item in lateness.late_list(self.store.reads.overview(self.store.workflows()), self.store.now()):
            what = f"{item['workflow']}/{item['job']}" if item["job"] else item["workflow"]
            text = (f"Batchy: the lateness of {what} cannot be checked: {item['reason']}"
                    if item["kind"] == "unchecked" else f"Batchy: {what} is {item['kind']}: {item['reason']}")
            ident = event_id(item["kind"], item["workflow"], item["job"], item["since"], item["reason"]
                             if item["since"] is None else "")
            announce(client, item["kind"], text, ident, self.store.keys, workflow=item["workflow"], job=item["job"],
                     since=item["since"], reason=item["reason"])

    def deliver(self) -> int:
        """Send every queued event, oldest first; keep one that fails for the next round.

        Events whose sender died are handed back first (TAKE), after the visibility timeout.
        """
        client = self.store.redis
        sent = 0
        queues = [self.store.keys.WEBHOOK_OUTBOX, self.store.keys.WEBHOOK_INFLIGHT]
        for _ in range(client.llen(self.store.keys.WEBHOOK_OUTBOX) + client.zcard(self.store.keys.WEBHOOK_INFLIGHT)
                       + client.llen(self.store.keys.WEBHOOK_SENDING)):
            if self.stopped.is_set() or (sent and not self.leads()):
                break  # a long round keeps the lead, or lets the new leader go on alone
            raw, back = self._take(keys=[*queues, self.store.keys.WEBHOOK_SENDING], args=[int(self.visibility * 1000)])
            if back:
                log.warning("webhooks: %d event(s) whose sender stopped before it was done are sent again", back)
            if raw is None:
                break
            self.posting = raw
            try:
                entry = json.loads(raw)
                body = entry["body"]
            except (ValueError, TypeError, KeyError):
                log.warning("webhooks: dropping an unreadable queued event %.200r", raw)
                self._again(keys=queues, args=[raw, ""])
                self.posting = None
                continue
            delivered = self._post(body)
            self.posting = None  # if stop() handed it back meanwhile, DONE and AGAIN see it is queued
            if delivered:
                sent += 1
                self._done(keys=queues, args=[raw])
            elif entry.get("tries", 0) + 1 < MAX_TRIES:
                entry["tries"] = entry.get("tries", 0) + 1
                self._again(keys=queues, args=[raw, json.dumps(entry)])  # back where it was: oldest first
            else:
                log.warning("webhooks: giving up on %s after %d tries", body.get("text"), MAX_TRIES)
                self._again(keys=queues, args=[raw, ""])
            if not delivered:
                break  # the receiver is down: the rest waits for the next round
        return sent

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


def start(app, store) -> Watchman | None:
    """Start this process' watchman when BATCHY_WEBHOOK_URL is set."""
    url = app.config.get("BATCHY_WEBHOOK_URL")
    if not url:
        return None
    return Watchman(store, url, float(app.config["BATCHY_WEBHOOK_INTERVAL"]),
                    float(app.config["BATCHY_WEBHOOK_TIMEOUT"]),
                    float(app.config["BATCHY_WEBHOOK_VISIBILITY_TIMEOUT"])).start()
