-- Up to ARGV[2] operators' requests from the list KEYS[2], oldest first.
return redis.call('RPOP', KEYS[2], ARGV[2])
