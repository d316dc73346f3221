-- Record fetch results exactly once per (batch, index).
-- KEYS[1] done bitmap, KEYS[2] result stream, KEYS[3] batch hash
-- ARGV[1] ttl seconds
-- ARGV[2] 13 bytes per result, big-endian: index (4), failed 0/1 (1), JSON length (4), stored body
--         length (4, 0 for none)
-- ARGV[3] the stored bodies, concatenated
-- ARGV[4] the batch's incarnation token, as the chunk job carries it
-- ARGV[5] the most results one stream entry holds (worker/resultstream.py RESULTS_PER_ENTRY)
-- ARGV[6], ... the results' JSON documents, ARGV[5] to an argument (the last one fewer), joined by "\n"
-- A few arguments for the whole flush instead of four per result: redis-py packs every argument in
-- Python (ops/bench: ~1.7 us a result), Lua reads a string for much less.
--
-- The stream (worker/resultstream.py reads it): the fresh results of a flush that keep no body in Redis
-- go into one entry per document argument, field `r` their documents joined by newlines (a document
-- is one line: the recorder refuses one with a newline). One XADD a flush, not one a result (issue 16:
-- the XADDs were 1.00 of ~1.5 Redis commands a URL). Usually every result is fresh and the argument is
-- the entry as it is: no Lua string is made of the documents (this Redis's Lua hashes each new string
-- whole, ~1 ns a byte). A result with a kept body takes an entry of its own, `r` and `b`: bodies are
-- bytes of any value and many times a document's size, so its XADD is little of their cost; an entry
-- with one document is the one-line case of the same format.
--
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

-- Per result this script runs a few dozen Lua operations and no Redis command (but for a kept body, a
-- repeated index or a lone far one); they are most of its cost, hence locals and counters below rather
-- than `#t` (a search in Lua 5.1) and calls per result, and fixed-width numbers read with one
-- string.byte a result (a third of what string.gmatch and tonumber cost).
local byte, floor, sub, rcall = string.byte, math.floor, string.sub, redis.call
local packed, bodies = ARGV[2], ARGV[3]
local results = #packed / 13
local per_entry = tonumber(ARGV[5] or '')
if results < 1 or results % 1 ~= 0 or not per_entry or per_entry < 1 or per_entry % 1 ~= 0
    or #ARGV ~= 5 + math.ceil(results / per_entry) then
  return redis.error_reply('ERR fetchfleet record arguments are malformed')
end
-- nums: four numbers a result (index, failed, JSON length, body length). Every length is checked
-- against the arguments here, before any write.
local nums, lo, hi = {}, nil, nil
local body_total, group, in_group, group_total = 0, 6, 0, -1
for r = 1, results do
  local p = r * 13 - 12
  local a1, a2, a3, a4, f, p1, p2, p3, p4, b1, b2, b3, b4 = byte(packed, p, p + 12)
  local index = ((a1 * 256 + a2) * 256 + a3) * 256 + a4
  local plen = ((p1 * 256 + p2) * 256 + p3) * 256 + p4
  local blen = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
  if f > 1 then return redis.error_reply('ERR fetchfleet record arguments are malformed') end
  local i = r * 4 - 3
  nums[i], nums[i + 1], nums[i + 2], nums[i + 3] = index, f, plen, blen
  if lo == nil or index < lo then lo = index end
  if hi == nil or index > hi then hi = index end
  body_total = body_total + blen
  group_total = group_total + plen + 1
  in_group = in_group + 1
  if in_group == per_entry or r == results then
    if group_total ~= #ARGV[group] then return redis.error_reply('ERR fetchfleet record arguments are malformed') end
    group, in_group, group_total = group + 1, 0, -1
  end
end
if body_total ~= #bodies then return redis.error_reply('ERR fetchfleet record arguments are malformed') end

-- The done bits. A flush's indexes are nearly always a few runs of consecutive ones (chunks' results),
-- so the bytes holding them are read with one GETRANGE, changed here and written back with one
-- SETRANGE: two commands a flush instead of a SETBIT per result (issue 16: one Redis command a URL
-- less, and less Redis CPU than a BITFIELD with an operation per result). Indexes far apart (the
-- results of chunks far apart in a batch, retries) are set by BITFIELD, which answers each bit's old
-- value: one call per 1,000 (a SETBIT each before: 0.16 commands a URL with 12 workers). An index twice
-- in one flush counts once, either way.
local base = floor(lo / 8)
local span = floor(hi / 8) - base + 1
local bytes, olds = nil, nil
if span <= 64 + results then
  local cur = rcall('GETRANGE', KEYS[1], base, base + span - 1)
  bytes = {}
  for b = 1, span do bytes[b] = string.byte(cur, b) or 0 end
else
  olds = {}
  local ops, n = {}, 0
  for r = 1, results do
    n = n + 1
    ops[n * 4 - 3], ops[n * 4 - 2], ops[n * 4 - 1], ops[n * 4] = 'SET', 'u1', nums[r * 4 - 3], 1
    if n == 1000 or r == results then -- 4,000 arguments at most: well inside Lua's stack for unpack
      local got = rcall('BITFIELD', KEYS[1], unpack(ops, 1, n * 4))
      for k = 1, n do olds[r - n + k] = got[k] end
      n = 0
    end
  end
end
-- A bit's mask in its byte, high-order bit first as SETBIT numbers them (arithmetic, not the bit
-- library: not every Lua has one).
local masks = {128, 64, 32, 16, 8, 4, 2, 1}
local changed = false
local added, failed = 0, 0
local fresh = {}
local bpos = 1 -- where the next result's body starts in `bodies`
local last = 0 -- the last result of the previous document argument
for group = 6, #ARGV do
  local docs, first_r, last_r = ARGV[group], last + 1, math.min(last + per_entry, results)
  local whole = true -- every result of this argument is fresh and keeps no body in Redis
  for r = first_r, last_r do
    local i = r * 4 - 3
    local index, first = nums[i], nil
    if bytes == nil then
      first = olds[r] == 0
    else
      local b = floor(index / 8) - base + 1
      local mask = masks[index % 8 + 1]
      local byte_now = bytes[b]
      first = floor(byte_now / mask) % 2 == 0
      if first then
        bytes[b] = byte_now + mask
        changed = true
      end
    end
    if first then
      added = added + 1
      failed = failed + nums[i + 1]
      fresh[r] = 1
      if nums[i + 3] > 0 then whole = false end
    else
      fresh[r] = 0
      whole = false
    end
  end
  if whole then
    rcall('XADD', KEYS[2], '*', 'r', docs)
  else -- the fresh documents without a body, cut out and joined again; each kept body its own entry
    local parts, nparts, pos = {}, 0, 1
    for r = first_r, last_r do
      local i = r * 4 - 3
      local plen, blen = nums[i + 2], nums[i + 3]
      if fresh[r] == 1 then
        if blen == 0 then
          nparts = nparts + 1
          parts[nparts] = sub(docs, pos, pos + plen - 1)
        else
          rcall('XADD', KEYS[2], '*', 'r', sub(docs, pos, pos + plen - 1), 'b', sub(bodies, bpos, bpos + blen - 1))
        end
      end
      pos = pos + plen + 1
      bpos = bpos + blen
    end
    if nparts > 0 then rcall('XADD', KEYS[2], '*', 'r', table.concat(parts, '\n', 1, nparts)) end
  end
  last = last_r
end
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
