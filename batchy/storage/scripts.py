"""Lua run by Redis. Each script is atomic: a state change is applied whole or not at all.

Meta field names come from keys.py ($VERSION, $COUNT_PREFIX are filled in below), snapshot
modes from rules/state.py ($NEW, $PUT; any other is an update) and SNAPSHOT_AMEND, and
every reply code has a name in Reply.
"""
from __future__ import annotations

from enum import IntEnum
from string import Template

from . import keys
from ..rules.jobs import FINAL_STATUSES
from ..rules.state import SNAPSHOT_NEW, SNAPSHOT_PUT

# A snapshot update (SNAPSHOT_UPDATE) of a workflow that no import has written (no
# keys.IMPORT_COUNT in its bookkeeping): every line of it is the workflow's own, and none
# that a change writes over can be final (a line turns final in the same commit as its job
# stops running in that batch), so COMMIT writes the lines without reading them first.
SNAPSHOT_AMEND = "amend"


class Reply(IntEnum):
    """The first element of COMMIT's reply."""

    APPLIED = 1
    REFUSED = 0  # the version or the second moved on, or another writer has the turn
    SNAPSHOT_TAKEN = -1  # a new batch's snapshot key exists already
    PAUSED = -2  # the service or the workflow is paused
    DUPLICATE = -3  # an open with this Idempotency-Key was applied already



# Characters every snapshot line holds many of: its keys, its dates, JSON's punctuation.
_COMMON = set('{}[]":,_-+. 0123456789TZadeghnorstu')


def _needle(status: str) -> str:
    """Return the end of a final status's name from its first rare character on: what COMMIT looks
    for in a line to tell it may hold that status (a line that does holds it; a rare first character
    keeps Lua's search from stopping at every letter of the line's own keys)."""
    for i, char in enumerate(status):
        if char not in _COMMON:
            return status[i:]
    return status


# The append-only write of snapshot lines, shared by COMMIT and REMOVE (each defines
# `local A = ARGV` first): put(key, from, count, must_exist) writes the count field/value
# pairs at A[from...] except over a line that holds a final status (success, failed,
# abandoned).
_APPEND_ONLY = Template("""local find = string.find
-- Whether a stored snapshot line may hold a final status: it spells one of them, or escapes
-- something. (Comparisons, not a table of the statuses: this runs on every line a commit
-- writes over, and a table would be built each time.)
local function maybe_final(old)
  return old and ($MAYBE_FINAL)
end
-- Whether a stored snapshot line holds a final status: only a line that may is decoded.
local function final(old)
  if not maybe_final(old) then return false end
  local ok, line = pcall(cjson.decode, old)
  if not (ok and type(line) == 'table') then return false end
  local status = line.status
  return $IS_FINAL
end
-- Write a snapshot's lines, except over a line that reached a final status here: one
-- HMGET and one HSET per thousand lines. The usual write finds no line that may be final,
-- and writes its arguments as they are. With must_exist (an update), nothing is written to
-- a key that no longer exists: a line the HMGET finds shows it is there, EXISTS asks only
-- when it finds none.
local function put(key, from, count, must_exist)
  local last = from + 2 * count - 1
  for s = from, last, 1000 do
    local e = math.min(s + 999, last)
    local names, n = {}, 0
    for j = s, e, 2 do n = n + 1; names[n] = A[j] end
    local olds = redis.call('HMGET', key, unpack(names))
    local plain, found = true, false
    for k = 1, n do
      local old = olds[k]
      if old then
        found = true
        if maybe_final(old) then plain = false; break end
      end
    end
    if must_exist and not found and redis.call('EXISTS', key) == 0 then return end
    must_exist = false
    if plain then
      redis.call('HSET', key, unpack(A, s, e))
    else
      local writes, w = {}, 0
      for k = 1, n do
        if not final(olds[k]) then
          writes[w + 1] = A[s + 2 * k - 2]
          writes[w + 2] = A[s + 2 * k - 1]
          w = w + 2
        end
      end
      if w > 0 then redis.call('HSET', key, unpack(writes, 1, w)) end
    end
  end
end
""").substitute(
    IS_FINAL=" or ".join(f"status == {str(status)!r}" for status in FINAL_STATUSES),
    MAYBE_FINAL=" or ".join(f"find(old, {text!r}, 1, true)"
                            for text in ("\\", *(_needle(str(status)) for status in FINAL_STATUSES))))


# Apply one state change to a workflow if it is still the state the change was planned
# on, at the second of Redis' clock it was planned for.
#
# KEYS[1] workflow hash <wf>            KEYS[2] meta hash batchy:wf:<wf>
# KEYS[3] history zset batchy:history:<wf>   KEYS[4] batchy:batches
# KEYS[5] audit stream batchy:events:<wf>     KEYS[6] batchy:workflows
# KEYS[7] service pause batchy:pause          KEYS[8] workflow pause batchy:pause:<wf>
# KEYS[9] batchy:turn:<wf>: while it exists, only the writer it names may commit
# KEYS[10], optional: batchy:idem:<wf>:<digest>, the Idempotency-Key of an open
# ARGV, read in order (n = a count, then that many items):
#   expected version ("0" for a workflow never written)
#   the writer's token (random: the new version is "<count>-<token>", never reused, even
#       when a Redis restart or failover loses the last writes and the count goes back)
#   second: the TIME seconds every time in the change was computed from ("": any)
#   insist ("1": the writer has lost several times in a row; if refused again, it takes
#       the turn for up to 200 ms, so a slow planner is not starved by quick ones)
#   check pause ("1": refuse while the service or the workflow is paused)
#   replace ("1": delete the workflow hash first; "0": the hash must exist)
#   n, n x (job, json)          HSET into the workflow hash
#   n, n x (field, value)       HSET into the meta hash
#   n, n x (key, mode, score, m, m x (job, json))  batch snapshots to write;
#       mode "new": the key must not exist yet, it is indexed with score (its start)
#       mode "update": written only if it still exists (retention may have dropped it), and
#         like "put" never over a final line of a job
#       mode "put": indexed; each job's line written unless the key holds a final one for it
#         (success, failed, abandoned): history is append-only, an import never rewrites it
#       mode "amend": an update whose lines are written as they are, if the key exists: the
#         store vouches none of them can be final (SNAPSHOT_AMEND)
#   keep                        batches kept in the history index; older ones are deleted
#   batch key prefix            "<wf>-", to name the snapshots retention deletes
#   n, n x batch id             batches a job still runs: retention skips them (they count
#       against keep, and go once they ended and are among the oldest)
#   events maxlen, n, n x (field, value)   XADD to the audit stream (n = 0: none)
#   channel, action             PUBLISH the action after the change; meta keys.count_field(action) += 1
#   with KEYS[10]: batch id, ttl ms   remembered under KEYS[10] once applied
# Returns {1, new_version, TIME} when applied;
# {0, current_version, TIME, flat HGETALL workflow, flat HGETALL meta, turn} when the
# state or the second moved on, or another writer has the turn (turn = "1": wait a
# moment): the caller plans again from this state, no extra read needed;
# {-1, key} when a new snapshot key exists; {-2, pause key} when paused;
# {-3, batch id} when KEYS[10] exists: that key's open was applied already.
COMMIT = Template("""
local A = ARGV
-- HSET the count field/value pairs at A[from...]; unpack() of more than a few thousand
-- values overflows Lua's stack, so in chunks.
local function hset(key, from, count)
  local last = from + 2 * count - 1
  for s = from, last, 1000 do
    redis.call('HSET', key, unpack(A, s, math.min(s + 999, last)))
  end
end

$APPEND_ONLY
local expected, token, second, insist, check_pause, replace = A[1], A[2], A[3], A[4], A[5], A[6]
local now = redis.call('TIME')
if KEYS[10] then
  local done = redis.call('GET', KEYS[10])
  if done then return {-3, done} end
end
local current = redis.call('HGET', KEYS[2], '$VERSION') or '0'
local turn = redis.call('GET', KEYS[9])
local waiting = turn and turn ~= token
if waiting or current ~= expected or (second ~= '' and now[1] ~= second)
    or (replace ~= '1' and redis.call('EXISTS', KEYS[1]) == 0) then
  if insist == '1' and not turn then redis.call('SET', KEYS[9], token, 'PX', 200) end
  return {0, current, now, redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]),
          waiting and 1 or 0}
end
if check_pause == '1' and redis.call('EXISTS', KEYS[7], KEYS[8]) > 0 then
  if redis.call('EXISTS', KEYS[8]) == 1 then return {-2, KEYS[8]} end
  return {-2, KEYS[7]}
end

-- Where each part of ARGV starts; nothing is copied out of it.
local njobs = tonumber(A[7])
local i = 8 + 2 * njobs
local nmeta = tonumber(A[i])
local meta_at = i + 1
i = meta_at + 2 * nmeta
local batches = {}
local indexed = false
for _ = 1, tonumber(A[i]) do
  local key, mode, m = A[i + 1], A[i + 2], tonumber(A[i + 4])
  if mode == '$NEW' and redis.call('EXISTS', key) == 1 then return {-1, key} end
  if mode == '$NEW' or mode == '$PUT' then indexed = true end
  batches[#batches + 1] = {key, mode, A[i + 3], i + 5, m}
  i = i + 4 + 2 * m
end
local keep, prefix, nrunning = tonumber(A[i + 1]), A[i + 2], tonumber(A[i + 3])
local running_at = i + 4
i = i + 3 + nrunning
local maxlen, nevent = A[i + 1], tonumber(A[i + 2])
local event_at = i + 3
i = event_at + 2 * nevent
local channel, message = A[i], A[i + 1]
if KEYS[10] then redis.call('SET', KEYS[10], A[i + 2], 'PX', A[i + 3]) end

if replace == '1' then
  redis.call('DEL', KEYS[1])
  redis.call('SADD', KEYS[6], KEYS[1])  -- the only way a workflow comes to exist
end
hset(KEYS[1], 8, njobs)
local version = ((tonumber(string.match(current, '^%d+')) or 0) + 1) .. '-' .. token
hset(KEYS[2], meta_at, nmeta)
redis.call('HSET', KEYS[2], '$VERSION', version)
redis.call('HINCRBY', KEYS[2], '$COUNT_PREFIX' .. message, 1)

for _, b in ipairs(batches) do
  local key, mode = b[1], b[2]
  if mode == '$PUT' then
    put(key, b[4], b[5])
  end
  if mode == '$NEW' or mode == '$PUT' then
    if mode == '$NEW' then hset(key, b[4], b[5]) end
    local id = string.sub(key, #prefix + 1)
    redis.call('ZADD', KEYS[3], id, id)
    redis.call('ZADD', KEYS[4], b[3], key)
  elseif mode == '$AMEND' then
    if redis.call('EXISTS', key) == 1 then hset(key, b[4], b[5]) end
  else
    put(key, b[4], b[5], true)  -- never over a final line: history is append-only
  end
end

if indexed then
  local excess = redis.call('ZCARD', KEYS[3]) - keep
  if excess > 0 then  -- the oldest that no job runs any more
    local running = {}
    for j = running_at, running_at + nrunning - 1 do running[A[j]] = true end
    local gone = 0
    for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, excess - 1 + nrunning)) do
      if gone == excess then break end
      if not running[id] then
        gone = gone + 1
        redis.call('DEL', prefix .. id)
        redis.call('ZREM', KEYS[4], prefix .. id)
        redis.call('ZREM', KEYS[3], id)
      end
    end
  end
end

if nevent > 0 then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', maxlen, '*', unpack(A, event_at, event_at + 2 * nevent - 1))
end
if turn then redis.call('DEL', KEYS[9]) end
redis.call('PUBLISH', channel, message)
return {1, version, now}
""").substitute(VERSION=keys.VERSION, COUNT_PREFIX=keys.COUNT_PREFIX, NEW=SNAPSHOT_NEW,
               AMEND=SNAPSHOT_AMEND, PUT=SNAPSHOT_PUT, APPEND_ONLY=_APPEND_ONLY)

# Read the clock, a workflow hash and its meta hash atomically, in one reply (cheaper
# for redis-py than a MULTI/EXEC of three commands).
# KEYS[1] workflow hash, KEYS[2] meta hash. Returns {TIME, flat HGETALL, flat HGETALL}.
READ = """
return {redis.call('TIME'), redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2])}
"""

# Give the turn back: a writer that took it (see COMMIT's insist) and then stopped
# without committing (its plan refused, or an error) must not leave it for 200 ms.
# KEYS[1] batchy:turn:<wf>; ARGV[1] the writer's token. Returns 1 if it was released.
RELEASE_TURN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Remove a workflow: its state, bookkeeping, pause and turn go; its audit stream stays,
# with the removal in it; its batch history stays (open batches marked abandoned) or
# is purged. Applied only if the workflow is still the version the caller read.
# KEYS[1] workflow hash  KEYS[2] meta  KEYS[3] history zset  KEYS[4] batchy:batches
# KEYS[5] audit stream  KEYS[6] batchy:workflows  KEYS[7] workflow pause  KEYS[8] turn
# ARGV: expected version, purge ("1"/"0"), batch key prefix, events maxlen,
#   n, n x (key, m, m x (job, json))   snapshot updates (only if the key exists, never over a final
#                                      line: put(); none when purging)
#   n, n x (field, value)              the audit event
#   channel
# Returns 1 when removed, 0 when the version moved on (read again), -1 when there is no such workflow.
REMOVE = Template("""
local A = ARGV
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if (redis.call('HGET', KEYS[2], '$VERSION') or '0') ~= A[1] then return 0 end
$APPEND_ONLY
local purge, prefix = A[2], A[3]
local i = 5
for _ = 1, tonumber(A[i]) do
  local key, m = A[i + 1], tonumber(A[i + 2])
  if purge ~= '1' and m > 0 then
    put(key, i + 3, m, true)  -- never over a final line: history is append-only
  end
  i = i + 2 + 2 * m
end
if purge == '1' then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    redis.call('DEL', prefix .. id)
    redis.call('ZREM', KEYS[4], prefix .. id)
  end
  redis.call('DEL', KEYS[3])
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[7], KEYS[8])
redis.call('SREM', KEYS[6], KEYS[1])
local nevent = tonumber(A[i + 1])
redis.call('XADD', KEYS[5], 'MAXLEN', '~', A[4], '*', unpack(A, i + 2, i + 1 + 2 * nevent))
redis.call('PUBLISH', A[i + 2 + 2 * nevent], 'remove')
return 1
""").substitute(VERSION=keys.VERSION, APPEND_ONLY=_APPEND_ONLY)


def for_cluster(script: str) -> str:
    """Return the cluster-style text of COMMIT or REMOVE.

    On a cluster every KEYS of a commit lives in the workflow's slot (keys.KeyStyle), so
    the script cannot touch the service-wide batchy:workflows: the store keeps it around
    the commit instead (store.py), and KEYS[6] is a placeholder. Announcements go out on
    sharded pub/sub (SPUBLISH on the workflow's own channel, in its slot). The classic
    scripts are left byte for byte as they are.
    """
    swaps = [("redis.call('PUBLISH',", "redis.call('SPUBLISH',"),
             ("redis.call('SADD', KEYS[6], KEYS[1])", "-- batchy:workflows: kept by the store on a cluster"),
             ("redis.call('SREM', KEYS[6], KEYS[1])", "-- batchy:workflows: kept by the store on a cluster")]
    out = script
    for old, new in swaps:
        out = out.replace(old, new)
    if "'PUBLISH'" in out or "KEYS[6], KEYS[1])" in out:  # pragma: no cover - a script changed shape
        raise AssertionError("scripts.for_cluster: a service-wide call is left in the script")
    return out
