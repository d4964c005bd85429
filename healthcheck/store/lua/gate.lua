-- Close (ARGV[2] 'close', the reason in ARGV[3]) or open the gate key KEYS[2]; with an audit
-- record (ARGV[5], '' for none) added to the stream KEYS[3] (about ARGV[4] kept) in the same
-- step, so that no gate key changes without the record of who changed it and why.
if ARGV[2] == 'close' then redis.call('SET', KEYS[2], ARGV[3]) else redis.call('DEL', KEYS[2]) end
if ARGV[5] ~= '' then redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'json', ARGV[5]) end
return 'ok'
