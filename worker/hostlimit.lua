-- Try to take a per-host fetch permit, counted across every worker of the cluster.
-- KEYS[1] in-flight zset (member: permit id, score: expiry ms), KEYS[2] rate key (next free time, ms)
-- ARGV[1] concurrency limit (0: none), ARGV[2] ms between requests (0: no rate), ARGV[3] lease ms,
-- ARGV[4] permit id
-- Returns 0 when granted, -1 when the host is at its concurrency limit, else ms until the rate allows one.
-- Redis's clock is the one clock, so workers on different machines agree.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
if limit > 0 then
  -- Permits of a worker that died expire with their lease instead of blocking the host forever.
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  if redis.call('ZCARD', KEYS[1]) >= limit then
    return -1
  end
end
if interval > 0 then
  -- GCRA without burst: requests at least `interval` apart, so no second sees more than the rate.
  local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tat > now then
    return math.max(1, math.ceil(tat - now))
  end
  redis.call('SET', KEYS[2], string.format('%.3f', now + interval), 'PX', math.ceil(interval) + 1000)
end
if limit > 0 then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], lease + 1000)
end
return 0
