-- Try to take a per-host fetch permit, counted across every worker of the cluster.
-- KEYS[1] in-flight zset (member: permit id, score: expiry ms), KEYS[2] rate key (next free time, ms),
-- KEYS[3] the host's adaptive throttle hash and KEYS[4] the zset of throttled hosts (both optional)
-- ARGV[1] concurrency limit (0: none), ARGV[2] ms between requests (0: no rate), ARGV[3] lease ms,
-- ARGV[4] permit id, ARGV[5] host (its member in KEYS[4])
-- Returns 0 when granted, -1 when the host is at its concurrency limit, else ms until the rate (or a
-- Retry-After pause) allows one.
-- Redis's clock is the one clock, so workers on different machines agree.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
if #KEYS >= 4 then
  -- Adaptive backoff (worker/throttle.lua cuts the budget): paused, or a lower rate that grows back.
  local th = redis.call('HMGET', KEYS[3], 'rate', 'since', 'paused', 'ceil', 'step')
  if th[1] then
    local paused = tonumber(th[3] or '0')
    if paused > now then
      return math.max(1, math.ceil(paused - now))
    end
    local rate = tonumber(th[1]) + tonumber(th[5]) * math.max(0, now - tonumber(th[2])) / 1000
    if rate >= tonumber(th[4]) then
      -- Recovered to the configured budget: the host leaves the throttled set.
      redis.call('DEL', KEYS[3])
      redis.call('ZREM', KEYS[4], ARGV[5])
    else
      interval = math.max(interval, 1000 / rate)
    end
  end
end
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
