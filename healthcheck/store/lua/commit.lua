-- States, audit records and report summaries in one step: readers never see a state without
-- the record of how it came about. KEYS: lease, states hash, audit stream, reports hash.
-- ARGV: token, stream length kept, n states (name, json)..., n records (json)..., n reports.
local i = 3
local n = tonumber(ARGV[i])
for j = 1, n do redis.call('HSET', KEYS[2], ARGV[i + 2 * j - 1], ARGV[i + 2 * j]) end
i = i + 2 * n + 1
n = tonumber(ARGV[i])
for j = 1, n do
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'json', ARGV[i + j])
end
i = i + n + 1
n = tonumber(ARGV[i])
for j = 1, n do redis.call('HSET', KEYS[4], ARGV[i + 2 * j - 1], ARGV[i + 2 * j]) end
return 'ok'
