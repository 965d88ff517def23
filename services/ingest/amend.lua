-- Requests the amend of one order atomically: the order's owner and status are checked against its
-- current record, and the amend command is enqueued only for an order that is not final and neither its
-- client nor its instrument halted (issue 16: A_HALT_CLIENT, A_HALT_INSTRUMENT in K_HALTS). The matcher
-- applies it in stream order (an order still `accepted` is placed first) and stores its outcome under
-- res:{I}:<request_id>, which the asking ingest polls.
--
-- KEYS (K_*), ARGV (A_*) and the order record's codec (unpack_record) are declared once, in
-- services/common/scripts.py (AMEND), and put on this script's first line by the loader.
-- Writes: orders (AmendCommand).
-- Returns {'unknown'} | {'forbidden'} | {'final', packed record} | {'client_halted'} | {'instrument_halted'}
-- | {'requested', packed record}

local packed = redis.call('HGET', K_ORDER_STATE, A_ORDER_ID)
if not packed then return {'unknown'} end
local record = unpack_record(packed)
if A_ONLY_CLIENT_ID ~= '' and record.client_id ~= A_ONLY_CLIENT_ID then return {'forbidden'} end
local status = record.status
if status == 'filled' or status == 'cancelled' or status == 'rejected' then
  return {'final', packed}
end
local halted = redis.call('HMGET', K_HALTS, A_HALT_CLIENT, A_HALT_INSTRUMENT)
if halted[1] then return {'client_halted'} end
if halted[2] then return {'instrument_halted'} end
redis.call('XADD', K_ORDERS, '*', 'cmd', 'amend', 'order_id', A_ORDER_ID, 'client_id', A_REQUESTER,
           'request_id', A_REQUEST_ID, 'price_ticks', A_PRICE_TICKS, 'quantity_lots', A_QUANTITY_LOTS, 'ts', A_TS)
return {'requested', packed}
