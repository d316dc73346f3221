-- Record fetch results exactly once per (batch, index).
-- KEYS[1] done bitmap, KEYS[2] result stream, KEYS[3] batch hash
-- ARGV[1] ttl seconds; ARGV[2] four numbers per result, space-separated: index, failed (0/1),
-- result JSON length, stored body length (0 for none); ARGV[3] every result's JSON then its body,
-- concatenated. Two arguments for the whole flush instead of four per result: redis-py packs every
-- argument in Python (ops/bench: ~1.7 us a result), Lua slices a string for much less.
-- Returns one flag per result: 1 if it was the first result for its index.
-- The bitmap bit is the gate: a chunk that runs twice finds it set and adds nothing.
local added, failed = 0, 0
local fresh = {}
local nums = {}
for n in string.gmatch(ARGV[2], '%d+') do nums[#nums + 1] = n end
local blob, pos = ARGV[3], 1
for i = 1, #nums, 4 do
  local plen, blen = tonumber(nums[i + 2]), tonumber(nums[i + 3])
  local payload = string.sub(blob, pos, pos + plen - 1)
  local body = string.sub(blob, pos + plen, pos + plen + blen - 1)
  pos = pos + plen + blen
  if redis.call('SETBIT', KEYS[1], nums[i], 1) == 0 then
    if blen == 0 then
      redis.call('XADD', KEYS[2], '*', 'r', payload)
    else
      redis.call('XADD', KEYS[2], '*', 'r', payload, 'b', body)
    end
    added = added + 1
    failed = failed + tonumber(nums[i + 1])
    fresh[#fresh + 1] = 1
  else
    fresh[#fresh + 1] = 0
  end
end
if added > 0 then
  local ttl = tonumber(ARGV[1])
  -- The stream and bitmap are born here, so they take the batch's lifetime here.
  if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ttl) end
  if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], ttl) end
  local done = redis.call('HINCRBY', KEYS[3], 'done', added)
  if failed > 0 then redis.call('HINCRBY', KEYS[3], 'failed', failed) end
  if redis.call('TTL', KEYS[3]) < 0 then redis.call('EXPIRE', KEYS[3], ttl) end
  local submitted = tonumber(redis.call('HGET', KEYS[3], 'submitted') or '-1')
  if done == submitted then
    local now = redis.call('TIME')
    redis.call('HSET', KEYS[3], 'finished_ms', tostring(now[1] * 1000 + math.floor(now[2] / 1000)))
  end
end
return fresh
