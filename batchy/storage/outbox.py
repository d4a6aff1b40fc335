"""A lead one process holds at a time, and a durable outbox delivered at least once.

Shared by the webhooks (storage/webhooks.py) and the OpenLineage sender
(storage/lineage.py): each names its own keys (storage/keys.py).

The lead is a Redis key with an expiry that its holder renews every round. An outbox is a
list of JSON entries {"body", "tries"}; delivery follows the reliable-queue pattern: the
entry being sent sits in an in-flight zset scored by its deadline (Redis' clock plus the
visibility timeout), and whoever takes the next entry first hands back every entry past its
deadline, so an entry whose sender died (kill -9, OOM, a worker timeout) is sent again. A
graceful stop hands its entry back at once. Entries go out oldest first; one that fails
stays first for the next round.
"""
from __future__ import annotations

import atexit
import json
import logging
import random
import threading
from typing import Callable

import redis

log = logging.getLogger("batchy")

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



class Lead:
    """The lead of one kind of background work, held by one process at a time."""

    def __init__(self, client: redis.Redis, key: str, ttl_ms: int):
        self.key = key
        self.ttl_ms = ttl_ms
        self.token = f"{random.getrandbits(64):016x}"
        self.leading = False  # as of the last take()
        self._lead = client.register_script(LEAD)
        self._resign = client.register_script(RESIGN)

    def take(self) -> bool:
        """Take or keep the lead; return whether this process leads."""
        self.leading = bool(int(self._lead(keys=[self.key], args=[self.token, self.ttl_ms])))
        return self.leading

    def resign(self) -> None:
        """Give the lead up, if held, so another process goes on at once."""
        self._resign(keys=[self.key], args=[self.token])
        self.leading = False


class Outbox:
    """A durable list of entries, each delivered at least once, oldest first."""

    def __init__(self, client: redis.Redis, outbox: str, inflight: str, legacy: str, *, visibility: float,
                 max_tries: int, name: str):
        self.client = client
        self.outbox, self.inflight, self.legacy = outbox, inflight, legacy
        self.visibility = visibility
        self.max_tries = max_tries
        self.name = name  # in log lines
        self.sending: str | None = None  # the entry this process is sending now
        self._take = client.register_script(TAKE)
        self._done = client.register_script(DONE)
        self._again = client.register_script(AGAIN)

    @staticmethod
    def entry(body: dict) -> str:
        """Return a body as an entry to push."""
        return json.dumps({"body": body, "tries": 0})

    def push(self, bodies: list[dict], pipe=None) -> None:
        """Queue bodies, in their order (pipe: as part of the caller's pipeline)."""
        if bodies:
            (pipe or self.client).lpush(self.outbox, *[self.entry(body) for body in bodies])

    def pending(self) -> int:
        """Return how many entries wait or are being sent."""
        return self.client.llen(self.outbox) + self.client.zcard(self.inflight) + self.client.llen(self.legacy)

    def hand_back(self) -> None:
        """Queue the entry being sent again at once (a graceful stop)."""
        entry, self.sending = self.sending, None
        if entry is not None:
            self._again(keys=[self.outbox, self.inflight], args=[entry, entry])

    def deliver(self, send: Callable[[dict], bool], go_on: Callable[[int], bool]) -> int:
        """Send queued entries oldest first until one fails or go_on(sent) says stop; return
        how many were sent. Entries whose sender died are handed back first (TAKE)."""
        sent = 0
        queues = [self.outbox, self.inflight]
        for _ in range(self.pending()):
            if not go_on(sent):
                break
            raw, back = self._take(keys=[*queues, self.legacy], args=[int(self.visibility * 1000)])
            if back:
                log.warning("%s: %d event(s) whose sender stopped before it was done are sent again", self.name, back)
            if raw is None:
                break
            self.sending = raw
            try:
                entry = json.loads(raw)
                body = entry["body"]
            except (ValueError, TypeError, KeyError):
                log.warning("%s: dropping an unreadable queued event %.200r", self.name, raw)
                self._again(keys=queues, args=[raw, ""])
                self.sending = None
                continue
            delivered = send(body)
            self.sending = None  # if hand_back() ran meanwhile, DONE and AGAIN see it is queued
            if delivered:
                sent += 1
                self._done(keys=queues, args=[raw])
            elif entry.get("tries", 0) + 1 < self.max_tries:
                entry["tries"] = entry.get("tries", 0) + 1
                self._again(keys=queues, args=[raw, json.dumps(entry)])  # back where it was: oldest first
            else:
                log.warning("%s: giving up on an event after %d tries: %.200s", self.name, self.max_tries,
                            body.get("text") or json.dumps(body))
                self._again(keys=queues, args=[raw, ""])
            if not delivered:
                break  # the receiver is down: the rest waits for the next round
        return sent


class Background:
    """A daemon thread running round() every interval (jittered) until stopped; the lead it
    holds (lead) and the entry it is sending (outbox), if any, handed back when it stops."""

    lead: Lead | None = None
    outbox: Outbox | None = None

    def __init__(self, interval: float, name: str, label: str):
        self.interval = interval
        self.label = label  # in log lines
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def round(self):  # pragma: no cover - each subclass has its own
        raise NotImplementedError

    def start(self):
        self.thread.start()
        atexit.register(self.stop)  # a graceful exit (gunicorn's SIGTERM) hands its lead and entry back
        return self

    def stop(self) -> None:
        """Stop; hand back the entry being sent and the lead, so another process goes on at once."""
        self.stopped.set()
        sending = self.outbox is not None and self.outbox.sending is not None
        if not sending and not (self.lead is not None and self.lead.leading):
            return
        try:
            if self.outbox is not None:
                self.outbox.hand_back()
            if self.lead is not None:
                self.lead.resign()
        except (redis.RedisError, OSError) as exc:  # the lead expires, the visibility timeout hands it back
            log.info("%s: could not hand back the lead or an entry when stopping: %s", self.label, exc)

    def _run(self) -> None:
        while not self.stopped.wait(self.interval * random.uniform(0.8, 1.0)):
            try:
                self.round()
            except (redis.RedisError, OSError) as exc:
                log.warning("%s: %s", self.label, exc)
            except Exception:  # noqa: BLE001 - the thread must outlive any surprise
                log.exception("%s: round failed", self.label)
