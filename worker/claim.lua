-- Claim up to ARGV[3] queued chunk jobs in one round trip (what arq's start_jobs does per job with
-- WATCH, EXISTS, ZSCORE and MULTI/EXEC: four round trips each, also for jobs running elsewhere).
-- KEYS[1] the queue zset, KEYS[2..] the in-progress key of each candidate job
-- ARGV[1] now (ms), ARGV[2] claim lease (ms), ARGV[3] most jobs to claim, ARGV[4..] candidate job ids
-- Returns id, score, id, score, ... of the jobs claimed. Atomic, like arq's WATCH/MULTI: a job whose
-- in-progress key exists, that left the queue, or that is deferred to later is not claimed.
local out = {}
local want = tonumber(ARGV[3])
local now = tonumber(ARGV[1])
for i = 2, #KEYS do
  if #out >= 2 * want then break end
  local id = ARGV[i + 2]
  local score = redis.call('ZSCORE', KEYS[1], id)
  if score and tonumber(score) <= now and redis.call('EXISTS', KEYS[i]) == 0 then
    redis.call('SET', KEYS[i], '1', 'PX', ARGV[2])
    out[#out + 1] = id
    out[#out + 1] = score
  end
end
return out
