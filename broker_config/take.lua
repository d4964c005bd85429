-- Take the next message off the first non-empty queue and record it as unacknowledged, in one
-- atomic step: Redis never holds a popped message that is not in the unacknowledged hash, so a
-- reply lost to a network cut or a restart costs a visibility timeout, never the message.
--
-- KEYS: the queue keys in the order to try, then the unacked hash, then the unacked index.
-- ARGV[1]: now (Unix seconds), the index score kombu's visibility sweep reads.
-- ARGV[1 + i]: "1" when the message of KEYS[i] must be acknowledged (recorded), "0" for a
--   consumer that does not acknowledge (kombu's no_ack: a plain pop, as BRPOP was).
-- Returns {queue key, raw message}, or nil when every queue is empty.
local n = #KEYS - 2
for i = 1, n do
  local item = redis.call('RPOP', KEYS[i])
  if item then
    local ok, msg = pcall(cjson.decode, item)
    if ARGV[1 + i] == '1' and ok and type(msg) == 'table' and type(msg.properties) == 'table'
        and msg.properties.delivery_tag ~= nil then
      local tag = tostring(msg.properties.delivery_tag)
      local info = msg.properties.delivery_info
      if type(info) ~= 'table' then info = {} end
      local exchange = info.exchange
      local routing_key = info.routing_key
      if type(exchange) ~= 'string' then exchange = '' end
      if type(routing_key) ~= 'string' then routing_key = '' end
      -- kombu's own record: [payload, exchange, routing key], the payload kept verbatim
      redis.call('HSET', KEYS[n + 1], tag,
                 '[' .. item .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(routing_key) .. ']')
      redis.call('ZADD', KEYS[n + 2], ARGV[1], tag)
    end
    return {KEYS[i], item}
  end
end
return nil
