-- Claim up to ARGV[3] due chunk jobs in one round trip. arq's start_jobs claims one job at a time with
-- WATCH, EXISTS, ZSCORE and MULTI/EXEC (four round trips), and pays them again for every job it finds
-- running on another worker. Atomic, like arq's WATCH/MULTI: a job whose in-progress key exists, or
-- that is not yet due, is not claimed.
-- KEYS[1] the queue zset
-- ARGV[1] now (ms), ARGV[2] claim lease (ms), ARGV[3] most jobs to claim, ARGV[4] in-progress key
-- prefix, ARGV[5..] ids of the jobs this worker runs already (never claimed twice by one process).
-- In-progress keys are built here from the prefix: they are arq's, and arq runs on one Redis, not a
-- cluster. Returns id, score, id, score, ... of the jobs claimed.
local want = tonumber(ARGV[3])
local own = {}
for i = 5, #ARGV do own[ARGV[i]] = true end
local out = {}
local page, offset, scanned = 64, 0, 0
while #out < 2 * want and scanned < 1000 do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', offset, page)
  if #ids == 0 then break end
  for i = 1, #ids, 2 do
    local id = ids[i]
    local key = ARGV[4] .. id
    if not own[id] and redis.call('EXISTS', key) == 0 then
      redis.call('SET', key, '1', 'PX', ARGV[2])
      out[#out + 1] = id
      out[#out + 1] = ids[i + 1]
      if #out >= 2 * want then break end
    end
  end
  scanned = scanned + #ids / 2
  if #ids < 2 * page then break end  -- the last page: another read would find nothing
  offset = offset + page
end
return out
