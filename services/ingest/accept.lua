-- Accepts one new order atomically: rate limit, idempotency, backpressure, then enqueue.
--
-- Everything a duplicate could race on happens inside this one script, so two identical
-- requests arriving together produce one order: the second finds the first one's record and
-- gets its answer replayed. Nothing is written before the checks that can refuse the order,
-- except the rate bucket (whose refill is due anyway).
--
-- KEYS (K_*) and ARGV (A_*) are declared once, in services/common/scripts.py (ACCEPT), and put on this
-- script's first line by the loader. K_IDEMPOTENCY and K_CLIENT_ORDER_ID are used only when
-- A_HAS_IDEMPOTENCY_KEY / A_HAS_CLIENT_ORDER_ID say so: every key is still named up front, in the
-- instrument's slot. ARGV from A_COMMAND_FROM on: the orders-stream entry's field/value pairs.
-- Writes: orders (NewOrderCommand), order state (OrderRecord, packed by the caller).
-- Returns {'ok', stream id} | {'replay', first answer} | {'conflict'} | {'rate_limited', retry ms}
--       | {'duplicate_client_order_id', that order's id} | {'overloaded'}

local rate, burst = tonumber(A_RATE), tonumber(A_BURST)
local MICRO = 1000000 -- a token is a million micro-tokens: integer arithmetic at any rate

if rate > 0 then
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * MICRO + tonumber(clock[2]) -- microseconds, below 2^53
  local capacity = burst * MICRO
  local state = redis.call('HMGET', K_RATE_BUCKET, 'tokens', 'ts')
  local tokens, last = tonumber(state[1]), tonumber(state[2])
  if tokens == nil or last == nil then
    tokens = capacity
  else
    -- Cap the elapsed time first so elapsed x rate stays an exact integer.
    local elapsed = math.min(math.max(now - last, 0), math.ceil(capacity / rate))
    tokens = math.min(capacity, tokens + elapsed * rate)
  end
  local ttl_ms = math.ceil(capacity / rate / 1000) + 1000
  if tokens < MICRO then
    redis.call('HSET', K_RATE_BUCKET, 'tokens', string.format('%d', tokens), 'ts', string.format('%d', now))
    redis.call('PEXPIRE', K_RATE_BUCKET, ttl_ms)
    return {'rate_limited', math.ceil((MICRO - tokens) / rate / 1000)}
  end
  redis.call('HSET', K_RATE_BUCKET, 'tokens', string.format('%d', tokens - MICRO), 'ts', string.format('%d', now))
  redis.call('PEXPIRE', K_RATE_BUCKET, ttl_ms)
end

local fingerprint = A_FINGERPRINT
local has_key, has_coid = A_HAS_IDEMPOTENCY_KEY == '1', A_HAS_CLIENT_ORDER_ID == '1'
if has_key then
  local stored = redis.call('GET', K_IDEMPOTENCY)
  if stored then
    -- A record is the fingerprint, a newline, then the first answer.
    if string.sub(stored, 1, 64) == fingerprint then
      return {'replay', string.sub(stored, 66)}
    end
    return {'conflict'}
  end
end

if has_coid then
  -- A client's own order reference names one order (for the records' lifetime, 24 h by default).
  local taken = redis.call('GET', K_CLIENT_ORDER_ID)
  if taken then return {'duplicate_client_order_id', taken} end
end

if A_OVERLOADED == '1' then return {'overloaded'} end

local fields = {}
for i = A_COMMAND_FROM, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', K_ORDERS, '*', unpack(fields))
redis.call('HSET', K_ORDER_STATE, A_ORDER_ID, A_RECORD)
if has_key then
  redis.call('SET', K_IDEMPOTENCY, fingerprint .. '\n' .. A_ANSWER, 'EX', A_TTL_S)
end
if has_coid then
  redis.call('SET', K_CLIENT_ORDER_ID, A_ORDER_ID, 'EX', A_TTL_S)
end
return {'ok', id}
