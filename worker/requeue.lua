-- Queue one chunk of retries, each (index, attempt) at most once per batch.
-- KEYS[1] the batch's "retry queued" bitmap for this attempt, KEYS[2] the arq job key, KEYS[3] the queue
-- ARGV[1] bitmap ttl (s), ARGV[2] job ttl (ms), ARGV[3] job id, ARGV[4] score (ms), ARGV[5] job data,
-- ARGV[6..] the indexes in the job.
-- A chunk run twice (its worker died, its lease lapsed) fetches its unfinished URLs again and may
-- group their retries differently; the bitmap, not the job id, is what keeps each retry single.
-- Returns {} when queued; else the indexes already queued, and nothing is written: the caller drops
-- them and asks again with the rest. All or nothing, so a worker dying here loses no retry.
local seen = {}
for i = 6, #ARGV do
  if redis.call('GETBIT', KEYS[1], ARGV[i]) == 1 then seen[#seen + 1] = ARGV[i] end
end
if #seen > 0 then return seen end
for i = 6, #ARGV do redis.call('SETBIT', KEYS[1], ARGV[i], 1) end
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[2], 'NX')
redis.call('ZADD', KEYS[3], 'NX', ARGV[4], ARGV[3])
return {}
