"""Lua run by Redis for backfills: each script applies one chunk change atomically.

The rules are in Python too (rules/backfill.py); storage/backfill.py runs these. Like scripts.py, each
script is headed by its KEYS, ARGV and replies, and meta field names come from keys.py.
"""
from __future__ import annotations

from enum import IntEnum
from string import Template

from . import keys


class BackfillReply(IntEnum):
    """The first element of the BACKFILL_* scripts' replies."""

    APPLIED = 1
    NOTHING = 0  # BACKFILL_LEASE: no chunk to lease now; BACKFILL_CREATE: that id is taken, try the next
    REPEATED = 2  # BACKFILL_FINISH: this attempt ended so already; BACKFILL_CANCEL: cancelled already
    NO_BACKFILL = -1
    PAUSED = -2
    NO_WORKFLOW = -3
    NO_CHUNK = -4
    STALE_ATTEMPT = -5  # another attempt holds the chunk now (this one's lease expired, it was leased again)
    NOT_LEASED = -6  # the chunk is pending, finished or cancelled
    WRONG_TOKEN = -7  # the chunk's current attempt, without the lease_token its lease answered


# Shared by the BACKFILL_* scripts: UTC ISO-8601 text of a TIME second (as
# times.format_time writes it), chunk counts, and the audit event of a change.
BACKFILL_LIB = Template("""
local function iso(seconds)  -- civil from days (H. Hinnant), proleptic Gregorian, UTC
  seconds = tonumber(seconds)
  local days = math.floor(seconds / 86400)
  local rest = seconds - days * 86400
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local day = doy - math.floor((153 * mp + 2) / 5) + 1
  local month = mp < 10 and mp + 3 or mp - 9
  local year = yoe + era * 400 + (month <= 2 and 1 or 0)
  return string.format('%04d-%02d-%02dT%02d:%02d:%02d+00:00', year, month, day,
    math.floor(rest / 3600), math.floor(rest % 3600 / 60), rest % 60)
end
local function moved(key, from, to)  -- a chunk went from status `from` to status `to`
  if from == to then return end
  if from then redis.call('HINCRBY', key, '$COUNT' .. from, -1) end
  if to then redis.call('HINCRBY', key, '$COUNT' .. to, 1) end
end
-- A call naming the chunk's current attempt without the token its lease answered (a chunk
-- leased before tokens existed has none, and takes any): backfill.fenced().
local function fenced(chunk, attempt, token)
  return chunk.attempts == attempt and chunk.lease_token ~= nil and chunk.lease_token ~= '' and
    chunk.lease_token ~= token
end
-- The audit event: the fields every event has (from_before / from_after empty: a
-- backfill moves no watermark), then which backfill, chunk and attempt.
local function audit(stream, maxlen, time, action, actor, jobs, message, backfill_id, chunk, attempt)
  local fields = {'time', time, 'action', action, 'batch_id', '', 'actor', actor, 'jobs', jobs,
                  'from_before', '{}', 'from_after', '{}', 'backfill_id', backfill_id}
  if chunk then
    fields[#fields + 1] = 'chunk'; fields[#fields + 1] = chunk
    fields[#fields + 1] = 'attempt'; fields[#fields + 1] = attempt
  end
  fields[#fields + 1] = 'message'; fields[#fields + 1] = message
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', unpack(fields))
end
-- A chunk event goes to the backfill's own stream (chunk traffic must not evict the
-- workflow's audit trail), under an id after every id of that stream and of the workflow's
-- stream, and the workflow's stream is told so: all of a workflow's events keep one order
-- however they are merged (History.events), the same-millisecond ones included.
local function last_id(stream)
  if redis.call('EXISTS', stream) == 0 then return 0, 0 end
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      local ms, seq = string.match(info[i + 1], '(%d+)-(%d+)')
      return tonumber(ms), tonumber(seq)
    end
  end
  return 0, 0
end
local function next_id(now, workflow_stream, stream)
  local ms, seq = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000), 0
  for _, key in ipairs({workflow_stream, stream}) do
    local last_ms, last_seq = last_id(key)
    if last_ms > ms or (last_ms == ms and last_seq >= seq) then ms, seq = last_ms, last_seq + 1 end
  end
  return string.format('%.0f-%.0f', ms, seq)
end
-- extra: more fields, flat (a chunk attempt's window: what the OpenLineage sender reads).
local function chunk_audit(streams, maxlen, now, action, actor, jobs, message, backfill_id, chunk, attempt, extra)
  local stream, workflow_stream = streams[1], streams[2]
  local id = next_id(now, workflow_stream, stream)
  local fields = {'time', iso(now[1]), 'action', action, 'batch_id', '', 'actor', actor, 'jobs', jobs,
                  'from_before', '{}', 'from_after', '{}', 'backfill_id', backfill_id,
                  'chunk', chunk, 'attempt', attempt, 'message', message}
  for _, value in ipairs(extra or {}) do fields[#fields + 1] = value end
  redis.call('XADD', stream, 'MAXLEN', '~', maxlen, id, unpack(fields))
  if redis.call('EXISTS', workflow_stream) == 1 then  -- its next XADD * comes after id
    local set = redis.pcall('XSETID', workflow_stream, id)
    if type(set) == 'table' and set.err then  -- no XSETID (the embedded store): an entry added and deleted
      redis.call('XADD', workflow_stream, id, 'placeholder', '')
      redis.call('XDEL', workflow_stream, id)
    end
  end
  return id
end
local function window(chunk)
  return chunk.job .. ' [' .. chunk.from_date .. ', ' .. chunk.to_date .. ')'
end
local function window_fields(chunk, expired)  -- a chunk event's extra fields
  return {'from_date', chunk.from_date, 'to_date', chunk.to_date, 'expired', expired and '1' or '0'}
end
""").substitute(COUNT=keys.BACKFILL_COUNT_PREFIX)

# Create a backfill: its hash, every chunk pending, its queue, its place in the index.
# KEYS[1] workflow hash <wf>      KEYS[2] zset batchy:backfills:<wf>
# KEYS[3] backfill hash           KEYS[4] its chunks hash     KEYS[5] its queue zset
# KEYS[6] audit stream batchy:events:<wf>
# ARGV: backfill id, events maxlen, actor, the event's jobs (JSON list), the event's message,
#   n, n x (field, value)   the backfill hash
#   m, m x chunk JSON       chunks 0 .. m-1, each pending
# Returns {1, TIME} created; {0, id} the id is taken or not above the newest: create with
# this one; {-1} no such workflow.
BACKFILL_CREATE = Template(BACKFILL_LIB + """
local A = ARGV
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local id = tonumber(A[1])
local newest = tonumber(redis.call('ZREVRANGE', KEYS[2], 0, 0)[1] or '0')
if id <= newest or redis.call('EXISTS', KEYS[3]) == 1 then
  return {0, tostring(math.max(id, newest) + 1)}
end
local now = redis.call('TIME')
local nfields = tonumber(A[6])
local last = 6 + 2 * nfields
for s = 7, last, 1000 do
  redis.call('HSET', KEYS[3], unpack(A, s, math.min(s + 999, last)))
end
local m = tonumber(A[last + 1])
for s = 0, m - 1, 500 do
  local fields, queue = {}, {}
  for c = s, math.min(s + 499, m - 1) do
    fields[#fields + 1] = c; fields[#fields + 1] = A[last + 2 + c]
    queue[#queue + 1] = c; queue[#queue + 1] = c  -- pending: scored by number, leased first
  end
  redis.call('HSET', KEYS[4], unpack(fields))
  redis.call('ZADD', KEYS[5], unpack(queue))
end
local time = iso(now[1])
redis.call('HSET', KEYS[3], '$COUNT' .. 'pending', m, 'created', time)
redis.call('ZADD', KEYS[2], id, id)
audit(KEYS[6], A[2], time, 'backfill_create', A[3], A[4], A[5], A[1])
return {1, now}
""").substitute(COUNT=keys.BACKFILL_COUNT_PREFIX)

# Lease the next chunk due: the lowest-numbered pending one, else the one whose lease
# ended first (a worker that died or ran past its lease). Its attempt count goes up; a
# chunk whose lease ended on its last allowed attempt (or after a cancel) ends failed (or
# cancelled) instead, and the next one is looked at. Leased chunks stay in the queue,
# scored by when their lease ends (epoch ms, always above any chunk number).
# KEYS[1] workflow hash <wf>   KEYS[2] backfill hash   KEYS[3] its chunks hash   KEYS[4] its queue
# KEYS[5] its chunk event stream   KEYS[6] batchy:pause    KEYS[7] batchy:pause:<wf>
# KEYS[8] the workflow's audit stream (ids only: chunk events are ordered after its last)
# ARGV: lease ms, events maxlen (of the chunk event stream), actor, backfill id, lease token (random:
#   kept with the attempt)
# Returns {1, chunk number, chunk JSON, flat HGETALL backfill} leased; {0, flat HGETALL
# backfill} no chunk due now (all finished, live leases only, or cancelled); {-1} no such
# backfill; {-2, pause key} paused; {-3} no such workflow.
BACKFILL_LEASE = Template(BACKFILL_LIB + """
local A = ARGV
if redis.call('EXISTS', KEYS[1]) == 0 then return {-3} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {-1} end
if redis.call('EXISTS', KEYS[7]) == 1 then return {-2, KEYS[7]} end
if redis.call('EXISTS', KEYS[6]) == 1 then return {-2, KEYS[6]} end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local time = iso(now[1])
local max_attempts = tonumber(redis.call('HGET', KEYS[2], 'max_attempts'))
local cancelled = redis.call('HGET', KEYS[2], 'status') == 'cancelled'
while true do
  local n = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now_ms, 'LIMIT', 0, 1)[1]
  if not n then break end
  local chunk = cjson.decode(redis.call('HGET', KEYS[3], n))
  local from = chunk.status
  local jobs = cjson.encode({chunk.job})
  chunk.outcome = nil
  if from == 'leased' and (cancelled or chunk.attempts >= max_attempts) then
    chunk.status = cancelled and 'cancelled' or 'failed'
    chunk.outcome = 'failed'
    chunk.lease_until = nil
    chunk.ended = time
    chunk.message = 'the lease of attempt ' .. chunk.attempts .. ' ran out' ..
      (cancelled and ' after the backfill was cancelled' or ', its last allowed attempt')
    redis.call('HSET', KEYS[3], n, cjson.encode(chunk))
    redis.call('ZREM', KEYS[4], n)
    moved(KEYS[2], from, chunk.status)
    chunk_audit({KEYS[5], KEYS[8]}, A[2], now, 'backfill_expire', A[3], jobs, 'chunk ' .. n .. ' ' ..
      window(chunk) .. ': ' .. chunk.message, A[4], n, chunk.attempts, window_fields(chunk))
  elseif cancelled then
    break  -- a cancel took the pending chunks out of the queue: nothing else is due
  else
    chunk.attempts = chunk.attempts + 1
    chunk.status = 'leased'
    chunk.lease_until = now_ms + tonumber(A[1])
    chunk.lease_token = A[5]
    local encoded = cjson.encode(chunk)
    redis.call('HSET', KEYS[3], n, encoded)
    redis.call('ZADD', KEYS[4], chunk.lease_until, n)
    moved(KEYS[2], from, 'leased')
    chunk_audit({KEYS[5], KEYS[8]}, A[2], now, 'backfill_lease', A[3], jobs, 'chunk ' .. n .. ' ' ..
      window(chunk) .. ': attempt ' .. chunk.attempts ..
      (from == 'leased' and ' (the lease of the previous one ran out)' or ''), A[4], n, chunk.attempts,
      window_fields(chunk, from == 'leased'))
    return {1, n, encoded, redis.call('HGETALL', KEYS[2])}
  end
end
return {0, redis.call('HGETALL', KEYS[2])}
""").substitute(COUNT=keys.BACKFILL_COUNT_PREFIX)

# End a leased chunk's attempt: success, or failed (pending again with the same window
# until max_attempts are used, then failed for good; cancelled after a cancel). Only the
# attempt that holds the chunk, with its lease token, may end it; the same call again answers
# as applied.
# KEYS[1] backfill hash   KEYS[2] its chunks hash   KEYS[3] its queue   KEYS[4] its chunk event stream
# KEYS[5] the workflow's audit stream (ids only)
# ARGV: chunk number, attempt, outcome ("success" or "failed"), records processed ("": none),
#   message ("": none), events maxlen (of the chunk event stream), actor, backfill id, lease token ("": none),
#   checksum, dq ("pass" or "fail"), dq_message (each "": none; kept on the chunk, as history keeps a batch's)
# Returns {1, chunk JSON, flat HGETALL backfill} applied; {2, chunk JSON, flat HGETALL
# backfill} this attempt ended so already (a retried call); {-1} no such backfill;
# {-4} no such chunk; {-5, chunk JSON} another attempt holds the chunk; {-6, chunk JSON}
# the chunk is not leased; {-7, chunk JSON} the current attempt, without its lease token.
BACKFILL_FINISH = Template(BACKFILL_LIB + """
local A = ARGV
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local raw = redis.call('HGET', KEYS[2], A[1])
if not raw then return {-4} end
local chunk = cjson.decode(raw)
local attempt, outcome = tonumber(A[2]), A[3]
if fenced(chunk, attempt, A[9]) then return {-7, raw} end
if chunk.status ~= 'leased' or chunk.attempts ~= attempt then
  if chunk.attempts == attempt and chunk.outcome == outcome then
    return {2, raw, redis.call('HGETALL', KEYS[1])}
  end
  return {chunk.attempts ~= attempt and -5 or -6, raw}
end
local now = redis.call('TIME')
local time = iso(now[1])
local max_attempts = tonumber(redis.call('HGET', KEYS[1], 'max_attempts'))
chunk.outcome = outcome
chunk.lease_until = nil
chunk.ended = time
chunk.records_processed = A[4] ~= '' and tonumber(A[4]) or nil
chunk.message = A[5] ~= '' and A[5] or nil
chunk.checksum = (A[10] or '') ~= '' and A[10] or nil
chunk.dq = (A[11] or '') ~= '' and A[11] or nil
chunk.dq_message = (A[12] or '') ~= '' and A[12] or nil
if outcome == 'success' then
  chunk.status = 'success'
elseif chunk.attempts >= max_attempts then
  chunk.status = 'failed'
elseif redis.call('HGET', KEYS[1], 'status') == 'cancelled' then
  chunk.status = 'cancelled'
else
  chunk.status = 'pending'
end
local encoded = cjson.encode(chunk)
redis.call('HSET', KEYS[2], A[1], encoded)
if chunk.status == 'pending' then
  redis.call('ZADD', KEYS[3], A[1], A[1])
else
  redis.call('ZREM', KEYS[3], A[1])
end
moved(KEYS[1], 'leased', chunk.status)
local note = 'chunk ' .. A[1] .. ' ' .. window(chunk) .. ': attempt ' .. attempt .. ' ' .. outcome
if chunk.status ~= outcome then note = note .. ', now ' .. chunk.status end
if chunk.message then note = note .. ': ' .. string.sub(chunk.message, 1, 200) end
chunk_audit({KEYS[4], KEYS[5]}, A[6], now, outcome == 'success' and 'backfill_close' or 'backfill_fail', A[7],
  cjson.encode({chunk.job}), note, A[8], A[1], attempt, window_fields(chunk))
return {1, encoded, redis.call('HGETALL', KEYS[1])}
""").substitute(COUNT=keys.BACKFILL_COUNT_PREFIX)

# Renew a leased chunk's lease (a worker's heartbeat while its command runs): it now ends
# lease ms from now. Only the attempt that holds the chunk may renew it, also after its
# lease ran out as long as nobody leased the chunk since. Not audited: a heartbeat changes
# no outcome. backfill.renew() is the same rule in Python.
# KEYS[1] backfill hash   KEYS[2] its chunks hash   KEYS[3] its queue
# ARGV: chunk number, attempt, lease ms, lease token ("": none)
# Returns {1, chunk JSON, flat HGETALL backfill} renewed; {-1} no such backfill; {-4} no
# such chunk; {-5, chunk JSON} another attempt holds the chunk; {-7, chunk JSON} without its
# lease token; {-6, chunk JSON} not leased.
BACKFILL_RENEW = Template(BACKFILL_LIB + """
local A = ARGV
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local raw = redis.call('HGET', KEYS[2], A[1])
if not raw then return {-4} end
local chunk = cjson.decode(raw)
if chunk.attempts ~= tonumber(A[2]) then return {-5, raw} end
if fenced(chunk, tonumber(A[2]), A[4]) then return {-7, raw} end
if chunk.status ~= 'leased' then return {-6, raw} end
local now = redis.call('TIME')
chunk.lease_until = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(A[3])
local encoded = cjson.encode(chunk)
redis.call('HSET', KEYS[2], A[1], encoded)
redis.call('ZADD', KEYS[3], chunk.lease_until, A[1])
return {1, encoded, redis.call('HGETALL', KEYS[1])}
""").substitute(COUNT=keys.BACKFILL_COUNT_PREFIX)

# Cancel a backfill: its pending chunks are cancelled and leave the queue; leased ones may
# still close (or fail: then cancelled); nothing is leased any more.
# KEYS[1] backfill hash   KEYS[2] its chunks hash   KEYS[3] its queue   KEYS[4] audit stream
# ARGV: events maxlen, actor, backfill id, the event's jobs (JSON list)
# Returns {1, chunks cancelled, flat HGETALL backfill}; {2, 0, flat HGETALL backfill}
# cancelled already; {-1} no such backfill.
BACKFILL_CANCEL = Template(BACKFILL_LIB + """
local A = ARGV
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
if redis.call('HGET', KEYS[1], 'status') == 'cancelled' then return {2, 0, redis.call('HGETALL', KEYS[1])} end
local now = redis.call('TIME')
local time = iso(now[1])
local cancelled = 0
for _, n in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
  local chunk = cjson.decode(redis.call('HGET', KEYS[2], n))
  if chunk.status == 'pending' then
    chunk.status = 'cancelled'
    chunk.ended = time
    redis.call('HSET', KEYS[2], n, cjson.encode(chunk))
    redis.call('ZREM', KEYS[3], n)
    cancelled = cancelled + 1
  end
end
if cancelled > 0 then
  redis.call('HINCRBY', KEYS[1], '$COUNT' .. 'pending', -cancelled)
  redis.call('HINCRBY', KEYS[1], '$COUNT' .. 'cancelled', cancelled)
end
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'cancelled', time)
local leased = tonumber(redis.call('HGET', KEYS[1], '$COUNT' .. 'leased') or '0')
audit(KEYS[4], A[1], time, 'backfill_cancel', A[2], A[4], 'backfill ' .. A[3] .. ' cancelled: ' .. cancelled ..
  ' pending chunk(s) cancelled, ' .. leased .. ' leased may still close', A[3])
return {1, cancelled, redis.call('HGETALL', KEYS[1])}
""").substitute(COUNT=keys.BACKFILL_COUNT_PREFIX)

# Append an event of a chunk to its backfill's chunk event stream, after a change made
# elsewhere: backfill_coverage, the chunk's window merged into the coverage ledger by a
# committed change of the workflow (which writes no event of its own to the workflow's stream).
# KEYS[1] the backfill's chunk event stream   KEYS[2] the workflow's audit stream (ids only)
# ARGV: events maxlen, action, actor, jobs (JSON list), message, backfill id, chunk, attempt
# Returns the event's id.
BACKFILL_NOTE = Template(BACKFILL_LIB + """
local A = ARGV
return chunk_audit({KEYS[1], KEYS[2]}, A[1], redis.call('TIME'), A[2], A[3], A[4], A[5], A[6], A[7], A[8])
""").substitute(COUNT=keys.BACKFILL_COUNT_PREFIX)
