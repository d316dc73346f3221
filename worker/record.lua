-- Record fetch results exactly once per (batch, index).
-- KEYS[1] done bitmap, KEYS[2] result stream, KEYS[3] batch hash
-- ARGV[1] ttl seconds; then quads: index, failed (0/1), result JSON, stored body ('' for none)
-- Returns one flag per triple: 1 if it was the first result for its index.
-- The bitmap bit is the gate: a chunk that runs twice finds it set and adds nothing.
local added, failed = 0, 0
local fresh = {}
for i = 2, #ARGV, 4 do
  if redis.call('SETBIT', KEYS[1], ARGV[i], 1) == 0 then
    if ARGV[i + 3] == '' then
      redis.call('XADD', KEYS[2], '*', 'r', ARGV[i + 2])
    else
      redis.call('XADD', KEYS[2], '*', 'r', ARGV[i + 2], 'b', ARGV[i + 3])
    end
    added = added + 1
    failed = failed + tonumber(ARGV[i + 1])
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
