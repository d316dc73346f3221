-- A host answered "slow down" (429/503, or a run of timeouts): cut its shared rate, maybe pause it.
-- KEYS[1] the host's throttle hash, KEYS[2] the zset of throttled hosts (score: when the throttle lapses)
-- ARGV[1] host, ARGV[2] rate (req/s) to start from when the host is not throttled yet, ARGV[3] ceiling
-- (req/s: the configured rate, or the rate at which "no limit" is restored), ARGV[4] recovery (req/s
-- gained per second), ARGV[5] lowest rate, ARGV[6] pause ms from now (0: none)
-- Returns {1 if the rate was cut, rate as a string, paused-until ms}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local start, ceil, step = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local floor, pause = tonumber(ARGV[5]), tonumber(ARGV[6])
local th = redis.call('HMGET', KEYS[1], 'rate', 'since', 'paused', 'last_cut')
local rate, paused, cut = start, 0, 1
if th[1] then
  paused = tonumber(th[3] or '0')
  local current = math.min(ceil, tonumber(th[1]) + step * math.max(0, now - tonumber(th[2])) / 1000)
  rate = current
  -- Many answers of one overloaded moment arrive together: cut once per round, not once per answer.
  if now - tonumber(th[4] or '0') >= 1000 + 1000 / current then
    rate = math.max(floor, current / 2)
  else
    cut = 0
  end
end
if pause > 0 then
  paused = math.max(paused, now + pause)
end
local since = math.max(now, paused)  -- recovery starts once a pause is over
local last_cut = now
if cut == 0 then
  last_cut = tonumber(th[4])
end
local lapses = since + math.ceil(math.max(0, ceil - rate) / step * 1000)
redis.call('HSET', KEYS[1], 'rate', string.format('%.4f', rate), 'since', since, 'paused', paused,
  'last_cut', last_cut, 'ceil', ARGV[3], 'step', ARGV[4])
redis.call('PEXPIRE', KEYS[1], lapses - now + 60000)
redis.call('ZADD', KEYS[2], lapses, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
-- The set outlives its longest throttle, no more: every key of fetchfleet expires.
if redis.call('PTTL', KEYS[2]) < lapses - now + 60000 then
  redis.call('PEXPIRE', KEYS[2], lapses - now + 60000)
end
return {cut, string.format('%.4f', rate), paused}
