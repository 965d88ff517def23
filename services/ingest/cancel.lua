-- Requests the cancel of one order atomically: the order's owner and status are checked against
-- its current record, and the cancel command is enqueued only for an order that is not final.
-- The matcher applies it in stream order, so an order still `accepted` is placed before it is cancelled.
--
-- KEYS: 1 orders stream, 2 order state hash
-- ARGV: 1 order id, 2 the only client_id allowed ('' = any: broker, admin), 3 requester, 4 ts (ms)
-- Returns {'unknown'} | {'forbidden'} | {'final', packed record} | {'requested', packed record}

local packed = redis.call('HGET', KEYS[2], ARGV[1])
if not packed then return {'unknown'} end
-- Field order is services/common/wire.py OrderRecord: 2 client_id, 11 status.
local record = cmsgpack.unpack(packed)
if ARGV[2] ~= '' and record[2] ~= ARGV[2] then return {'forbidden'} end
local status = record[11]
if status == 'filled' or status == 'cancelled' or status == 'rejected' then
  return {'final', packed}
end
redis.call('XADD', KEYS[1], '*', 'cmd', 'cancel', 'order_id', ARGV[1], 'client_id', ARGV[3], 'ts', ARGV[4])
return {'requested', packed}
