-- Replace one shard's guard figures (KEYS[2]) with ARGV[2..]: field, value, field, value...
redis.call('DEL', KEYS[2])
if #ARGV > 1 then redis.call('HSET', KEYS[2], unpack(ARGV, 2)) end
return 'ok'
