-- Renew the caller's lease (ARGV[1]), or take a free one under a new epoch; the leader after.
-- KEYS: lease, epoch counter. ARGV: token, candidate, TTL in ms.
local current = redis.call('GET', KEYS[1])
if current and current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return current
end
if current then return current end
-- A new epoch: above every epoch this server has handed out, and at least its clock in
-- milliseconds. A failover can lose the last epochs a master handed out (replication is
-- asynchronous); one taken on the new master afterwards still outnumbers them, as long as the
-- two servers' clocks differ by less than the failover took (seconds; NTP keeps them within
-- milliseconds). So no two checkers ever act under the same epoch.
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local epoch = string.format('%d', math.max(tonumber(redis.call('GET', KEYS[2]) or '0') + 1, ms))
redis.call('SET', KEYS[2], epoch)
local token = epoch .. ':' .. ARGV[2]
redis.call('SET', KEYS[1], token, 'PX', ARGV[3])
return token
