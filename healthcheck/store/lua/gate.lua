-- Close (ARGV[2] 'close', the reason in ARGV[3]) or open the gate key KEYS[2].
if ARGV[2] == 'close' then redis.call('SET', KEYS[2], ARGV[3]) else redis.call('DEL', KEYS[2]) end
return 'ok'
