-- Claim up to ARGV[3] due chunk jobs in one round trip. arq's start_jobs claims one job at a time with
-- WATCH, EXISTS, ZSCORE and MULTI/EXEC (four round trips), and pays them again for every job it finds
-- running on another worker. Atomic, like arq's WATCH/MULTI: a job whose in-progress key exists, or
-- that is not yet due, is not claimed.
-- KEYS[1] the queue zset
-- ARGV[1] now (ms), ARGV[2] claim lease (ms), ARGV[3] most jobs to claim, ARGV[4] in-progress key
-- prefix, ARGV[5..] ids of the jobs this worker runs already (never claimed twice by one process).
-- In-progress keys are built here from the prefix: they are arq's, and arq runs on one Redis, not a
-- cluster. Returns id, score, id, score, ... of the jobs claimed, each with the score it had.
-- A claimed job's score moves to the end of its lease (now + ARGV[2]): while it runs, the queue's due
-- range holds only jobs to claim, so neither arq's poll nor this scan meets running jobs (they cost an
-- EXISTS each, a scan of every running chunk at each claim: issue 16, Redis CPU per URL). The
-- in-progress key still decides: a job whose worker died falls due when its lease would have ended, and
-- is claimed once its key has lapsed. FleetWorker.finish_job puts a job run again back at the score
-- arq means (arq's retry adds to the score it had).
local want = tonumber(ARGV[3])
local own = {}
for i = 5, #ARGV do own[ARGV[i]] = true end
local leased_until = tonumber(ARGV[1]) + tonumber(ARGV[2])
local out = {}
local page, offset, scanned = 64, 0, 0
while #out < 2 * want and scanned < 1000 do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'WITHSCORES', 'LIMIT', offset, page)
  if #ids == 0 then break end
  local moved = 0
  for i = 1, #ids, 2 do
    local id = ids[i]
    local key = ARGV[4] .. id
    if not own[id] and redis.call('EXISTS', key) == 0 then
      redis.call('SET', key, '1', 'PX', ARGV[2])
      redis.call('ZADD', KEYS[1], 'XX', leased_until, id)
      moved = moved + 1
      out[#out + 1] = id
      out[#out + 1] = ids[i + 1]
      if #out >= 2 * want then break end
    end
  end
  scanned = scanned + #ids / 2
  if #ids < 2 * page then break end  -- the last page: another read would find nothing
  offset = offset + page - moved  -- the claimed ones left the due range
end
return out
