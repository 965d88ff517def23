-- Requests the cancel of one order atomically: the order's owner and status are checked against
-- its current record, and the cancel command is enqueued only for an order that is not final.
-- The matcher applies it in stream order, so an order still `accepted` is placed before it is cancelled.
--
-- KEYS (K_*), ARGV (A_*) and the order record's codec (unpack_record) are declared once, in
-- services/common/scripts.py (CANCEL), and put on this script's first line by the loader.
-- Writes: orders (CancelCommand).
-- Returns {'unknown'} | {'forbidden'} | {'final', packed record} | {'requested', packed record}

local packed = redis.call('HGET', K_ORDER_STATE, A_ORDER_ID)
if not packed then return {'unknown'} end
local record = unpack_record(packed)
if A_ONLY_CLIENT_ID ~= '' and record.client_id ~= A_ONLY_CLIENT_ID then return {'forbidden'} end
local status = record.status
if status == 'filled' or status == 'cancelled' or status == 'rejected' then
  return {'final', packed}
end
redis.call('XADD', K_ORDERS, '*', 'cmd', 'cancel', 'order_id', A_ORDER_ID, 'client_id', A_REQUESTER, 'ts', A_TS)
return {'requested', packed}
