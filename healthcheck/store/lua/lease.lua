-- Renew the caller's lease (ARGV[1]), or take a free one under a new epoch; the leader after.
-- KEYS: lease, epoch counter. ARGV: token, candidate, TTL in ms.
local current = redis.call('GET', KEYS[1])
if current and current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return current
end
if current then return current end
local token = redis.call('INCR', KEYS[2]) .. ':' .. ARGV[2]
redis.call('SET', KEYS[1], token, 'PX', ARGV[3])
return token
