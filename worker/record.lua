-- Record fetch results exactly once per (batch, index).
-- KEYS[1] done bitmap, KEYS[2] result stream, KEYS[3] batch hash
-- ARGV[1] ttl seconds; ARGV[2] four numbers per result, space-separated: index, failed (0/1),
-- result JSON length, stored body length (0 for none); ARGV[3] every result's JSON, a newline, then its
-- body, concatenated. Two arguments for the whole flush instead of four per result: redis-py packs every
-- argument in Python (ops/bench: ~1.7 us a result), Lua slices a string for much less.
-- ARGV[4] the batch's incarnation token, as the chunk job carries it.
-- ARGV[5] the most results one stream entry holds (worker/resultstream.py RESULTS_PER_ENTRY).
--
-- The stream (worker/resultstream.py reads it): the fresh results of a flush that keep no body in Redis
-- go into one entry, field `r` their JSON documents joined by newlines (a document is one line: the
-- recorder refuses one with a newline), at most ARGV[5] to an entry. One XADD a flush, not one a result
-- (issue 16: the XADDs were 1.00 of ~1.5 Redis commands a URL). A result with a kept body takes an entry
-- of its own, `r` and `b`: bodies are bytes of any value, and dozens of times a document's size, so the
-- XADD is little of their cost; an entry with one document is the one-line case of the same format.
-- Returns one flag per result: 1 if it was the first result for its index; or -1, writing nothing, when
-- the batch hash is gone or holds another incarnation (Redis lost the batch: never recreate it).
-- The bitmap bit is the gate: a chunk that runs twice finds it set and adds nothing.
--
-- Lua does not roll back: a command that fails halfway leaves what came before it. So every check comes
-- first, with reads only; the writes after them cannot fail on what is in the keys. (An OOM or READONLY
-- refusal comes at the first write, before anything was written.)
local function wrongtype(key, found, wanted)
  return redis.error_reply('WRONGTYPE fetchfleet key ' .. key .. ' holds a ' .. found .. ', not a ' .. wanted)
end

local meta_type = redis.call('TYPE', KEYS[3])['ok']
if meta_type == 'none' then return -1 end
if meta_type ~= 'hash' then return wrongtype(KEYS[3], meta_type, 'hash') end
local state = redis.call('HMGET', KEYS[3], 'incarnation', 'done', 'failed', 'submitted')
if (state[1] or '') ~= (ARGV[4] or '') then return -1 end
for i = 2, 4 do
  if state[i] and not tonumber(state[i]) then
    return redis.error_reply('ERR fetchfleet batch hash ' .. KEYS[3] .. ' holds a counter that is not a number')
  end
end
local done_type = redis.call('TYPE', KEYS[1])['ok']
if done_type ~= 'none' and done_type ~= 'string' then return wrongtype(KEYS[1], done_type, 'string') end
local stream_type = redis.call('TYPE', KEYS[2])['ok']
if stream_type ~= 'none' and stream_type ~= 'stream' then return wrongtype(KEYS[2], stream_type, 'stream') end

-- Per result this script runs a few dozen Lua operations and no Redis command (but for a kept body or
-- a lone far index); they are most of its cost (ops/bench: ~2 us of Redis CPU a result), hence locals
-- and counters below rather than `#t` (a search in Lua 5.1) and calls per result.
local floor, sub, rcall = math.floor, string.sub, redis.call
local nums, count = {}, 0
for n in string.gmatch(ARGV[2], '%-?%d+') do
  count = count + 1
  nums[count] = tonumber(n)
end
local blob, total = ARGV[3], 0
if count % 4 ~= 0 or count == 0 then return redis.error_reply('ERR fetchfleet record arguments are malformed') end
local lo, hi = nums[1], nums[1]
for i = 1, count, 4 do
  local index = nums[i]
  -- SETBIT takes offsets below 2^32; a planted negative or huge index must fail here, not mid-way.
  if index < 0 or index >= 4294967296 or nums[i + 2] < 0 or nums[i + 3] < 0 then
    return redis.error_reply('ERR fetchfleet result index or length out of range')
  end
  total = total + nums[i + 2] + 1 + nums[i + 3]
  if index < lo then lo = index end
  if index > hi then hi = index end
end
if total ~= #blob then return redis.error_reply('ERR fetchfleet record arguments are malformed') end

-- The done bits. A flush's indexes are nearly always a few runs of consecutive ones (chunks' results),
-- so the bytes holding them are read with one GETRANGE, changed here and written back with one
-- SETRANGE: two commands a flush instead of a SETBIT per result (issue 16: one Redis command a URL
-- less, and less Redis CPU than a BITFIELD with an operation per result). Indexes far apart (retries)
-- take a SETBIT each. An index twice in one flush counts once, as with SETBIT.
local base = floor(lo / 8)
local span = floor(hi / 8) - base + 1
local bytes = nil
if span <= 64 + count / 4 then
  local cur = rcall('GETRANGE', KEYS[1], base, base + span - 1)
  bytes = {}
  for b = 1, span do bytes[b] = string.byte(cur, b) or 0 end
end
-- A bit's mask in its byte, high-order bit first as SETBIT numbers them (arithmetic, not the bit
-- library: not every Lua has one).
local masks = {128, 64, 32, 16, 8, 4, 2, 1}
local per_entry = tonumber(ARGV[5] or '')
if not per_entry or per_entry < 1 then return redis.error_reply('ERR fetchfleet record arguments are malformed') end
local changed = false
local added, failed = 0, 0
local fresh = {}
-- The entry being filled: `parts` are runs of consecutive fresh documents without a body, each one
-- slice of the blob where they already stand newline-separated; `run` is where the open run starts.
local parts, nparts, in_entry, run = {}, 0, 0, nil
local pos = 1
for i = 1, count, 4 do
  local index, plen, blen = nums[i], nums[i + 2], nums[i + 3]
  local first
  if bytes == nil then
    first = rcall('SETBIT', KEYS[1], index, 1) == 0
  else
    local b = floor(index / 8) - base + 1
    local mask = masks[index % 8 + 1]
    local byte = bytes[b]
    first = floor(byte / mask) % 2 == 0
    if first then
      bytes[b] = byte + mask
      changed = true
    end
  end
  if first and blen == 0 then
    if run == nil then run = pos end
    in_entry = in_entry + 1
    if in_entry == per_entry then
      nparts = nparts + 1
      parts[nparts] = sub(blob, run, pos + plen - 1)
      rcall('XADD', KEYS[2], '*', 'r', table.concat(parts, '\n', 1, nparts))
      nparts, in_entry, run = 0, 0, nil
    end
  else
    if run ~= nil then -- the run ends before this result, at the previous document's newline
      nparts = nparts + 1
      parts[nparts] = sub(blob, run, pos - 2)
      run = nil
    end
    if first then
      rcall('XADD', KEYS[2], '*', 'r', sub(blob, pos, pos + plen - 1), 'b', sub(blob, pos + plen + 1, pos + plen + blen))
    end
  end
  if first then
    added = added + 1
    failed = failed + nums[i + 1]
  end
  pos = pos + plen + 1 + blen
  fresh[(i + 3) / 4] = first and 1 or 0
end
if run ~= nil then
  nparts = nparts + 1
  parts[nparts] = sub(blob, run, pos - 2)
end
if nparts > 0 then rcall('XADD', KEYS[2], '*', 'r', table.concat(parts, '\n', 1, nparts)) end
if changed then redis.call('SETRANGE', KEYS[1], base, string.char(unpack(bytes))) end
if added > 0 then
  local ttl = tonumber(ARGV[1])
  -- The stream and bitmap are born here, so they take the batch's lifetime here.
  if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ttl) end
  if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], ttl) end
  local done = redis.call('HINCRBY', KEYS[3], 'done', added)
  if failed > 0 then redis.call('HINCRBY', KEYS[3], 'failed', failed) end
  if redis.call('TTL', KEYS[3]) < 0 then redis.call('EXPIRE', KEYS[3], ttl) end
  local submitted = tonumber(state[4] or '-1')
  if done == submitted then
    local now = redis.call('TIME')
    redis.call('HSET', KEYS[3], 'finished_ms', tostring(now[1] * 1000 + math.floor(now[2] / 1000)))
  end
end
return fresh
