-- Admit one ejection against the fleet-wide guard budget, atomically across every shard: the
-- rules of healthcheck.policy.shards.refusal, with the same answers. On admission the caller's
-- shard counts the worker out at once (its leader overwrites the figures with its own later).
-- KEYS: lease, the n shards' guard hashes, the n shards' ejection sets.
-- ARGV: token, n, own shard, now, window_s, max_ejected_fraction, min_ejections,
--       max_ejection_rate_fraction, max_ejections_per_window, relapse ('1'), member, queues...
local n, own, now, window = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local fraction, least = tonumber(ARGV[6]), tonumber(ARGV[7])
local rate_fraction, rate_least = tonumber(ARGV[8]), tonumber(ARGV[9])
local function bound(size) return math.max(least, math.floor(fraction * size)) end
local function field(key, name) return tonumber(redis.call('HGET', key, name) or 0) or 0 end
local size, out, qsize, qout = 0, 0, {}, {}
for i = 12, #ARGV do qsize[ARGV[i]], qout[ARGV[i]] = 0, 0 end
for s = 1, n do
  local key = KEYS[1 + s]
  size, out = size + field(key, 'size'), out + field(key, 'out')
  for q in pairs(qsize) do
    qsize[q], qout[q] = qsize[q] + field(key, 'q:' .. q), qout[q] + field(key, 'o:' .. q)
  end
end
if out + 1 > bound(size) then
  return string.format('%d out / bound %d of %d', out, bound(size), size)
end
for i = 12, #ARGV do
  local q = ARGV[i]
  if qout[q] + 1 > bound(qsize[q]) then
    return string.format('queue %s: %d out / bound %d', q, qout[q], bound(qsize[q]))
  end
end
local recent = 0
for s = 1, n do
  local key = KEYS[1 + n + s]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. ARGV[4] - window)
  recent = recent + redis.call('ZCARD', key)
end
if ARGV[10] ~= '1' and recent >= math.max(rate_least, math.floor(rate_fraction * size)) then
  return string.format('%d ejections in the last %ss', recent, ARGV[5])
end
local mine = KEYS[2 + own]
redis.call('HINCRBY', mine, 'out', 1)
for i = 12, #ARGV do redis.call('HINCRBY', mine, 'o:' .. ARGV[i], 1) end
redis.call('ZADD', KEYS[2 + n + own], now, ARGV[11])
return 'ok'
