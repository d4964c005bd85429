-- Every fenced script starts so: KEYS[1] is the lease, ARGV[1] the caller's token ('': none).
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return 'fenced' end
