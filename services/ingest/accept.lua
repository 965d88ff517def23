-- Accepts one new order atomically: rate limits (the client's and its API key's), idempotency,
-- backpressure, then enqueue.
--
-- Everything a duplicate could race on happens inside this one script, so two identical
-- requests arriving together produce one order: the second finds the first one's record and
-- gets its answer replayed. Nothing is written before the checks that can refuse the order,
-- except the rate buckets (whose refill is due anyway).
--
-- KEYS (K_*) and ARGV (A_*) are declared once, in services/common/scripts.py (ACCEPT), and put on this
-- script's first line by the loader. K_IDEMPOTENCY, K_CLIENT_ORDER_ID and K_KEY_RATE_BUCKET are used
-- only when A_HAS_IDEMPOTENCY_KEY / A_HAS_CLIENT_ORDER_ID / A_KEY_RATE say so: every key is still named
-- up front, in the instrument's slot (so an API key's bucket is per instrument, like a client's). ARGV from A_COMMAND_FROM on: the orders-stream entry's field/value pairs.
-- Writes: orders (NewOrderCommand), order state (OrderRecord, packed by the caller).
-- Returns {kind, value, remaining, reset ms}: remaining is the client bucket's whole tokens after this call
-- and reset ms the time until it is full again (both 0 when A_RATE is 0). Kind and value:
--   'ok', stream id | 'replay', first answer | 'conflict', '' | 'rate_limited' or 'key_rate_limited', retry ms
--   | 'duplicate_client_order_id', that order's id | 'overloaded', ''

local MICRO = 1000000 -- a token is a million micro-tokens: integer arithmetic at any rate

-- A bucket's micro-tokens at `now` (microseconds): its stored count refilled since its last write.
local function refilled(key, rate, capacity, now)
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local tokens, last = tonumber(state[1]), tonumber(state[2])
  if tokens == nil or last == nil then return capacity end
  -- Cap the elapsed time first so elapsed x rate stays an exact integer.
  local elapsed = math.min(math.max(now - last, 0), math.ceil(capacity / rate))
  return math.min(capacity, tokens + elapsed * rate)
end

-- Takes one token. Only an accepted call writes: a refused one leaves the state that refills the same.
local function take(key, tokens, rate, capacity, now)
  redis.call('HSET', key, 'tokens', string.format('%d', tokens - MICRO), 'ts', string.format('%d', now))
  redis.call('PEXPIRE', key, math.ceil(capacity / rate / 1000) + 1000)
end

-- Both buckets are checked before either is taken from: an order refused by one costs the other nothing.
local rate, burst = tonumber(A_RATE), tonumber(A_BURST)
local key_rate, key_burst = tonumber(A_KEY_RATE), tonumber(A_KEY_BURST)
local remaining, reset_ms = 0, 0 -- the client's bucket after this call, in every reply (RateLimit-* headers)
if rate > 0 or key_rate > 0 then
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * MICRO + tonumber(clock[2]) -- microseconds, below 2^53
  local capacity, tokens, key_capacity, key_tokens
  local client_wait, key_wait = 0, 0 -- ms until a token; 0 = one is there
  if rate > 0 then
    capacity = burst * MICRO
    tokens = refilled(K_RATE_BUCKET, rate, capacity, now)
    if tokens < MICRO then client_wait = math.ceil((MICRO - tokens) / rate / 1000) end
  end
  if key_rate > 0 then
    key_capacity = key_burst * MICRO
    key_tokens = refilled(K_KEY_RATE_BUCKET, key_rate, key_capacity, now)
    if key_tokens < MICRO then key_wait = math.ceil((MICRO - key_tokens) / key_rate / 1000) end
  end
  local refused = client_wait > 0 or key_wait > 0
  if rate > 0 then
    if not refused then
      take(K_RATE_BUCKET, tokens, rate, capacity, now)
      tokens = tokens - MICRO
    end
    remaining = math.floor(tokens / MICRO)
    reset_ms = math.ceil((capacity - tokens) / rate / 1000)
  end
  if refused then
    -- The wait covers both buckets; the kind names the client's when it is the one (or one) refusing.
    local kind = client_wait > 0 and 'rate_limited' or 'key_rate_limited'
    return {kind, math.max(client_wait, key_wait), remaining, reset_ms}
  end
  if key_rate > 0 then take(K_KEY_RATE_BUCKET, key_tokens, key_rate, key_capacity, now) end
end

local fingerprint = A_FINGERPRINT
local has_key, has_coid = A_HAS_IDEMPOTENCY_KEY == '1', A_HAS_CLIENT_ORDER_ID == '1'
if has_key then
  local stored = redis.call('GET', K_IDEMPOTENCY)
  if stored then
    -- A record is the fingerprint, a newline, then the first answer.
    if string.sub(stored, 1, 64) == fingerprint then
      return {'replay', string.sub(stored, 66), remaining, reset_ms}
    end
    return {'conflict', '', remaining, reset_ms}
  end
end

if has_coid then
  -- A client's own order reference names one order (for the records' lifetime, 24 h by default).
  local taken = redis.call('GET', K_CLIENT_ORDER_ID)
  if taken then return {'duplicate_client_order_id', taken, remaining, reset_ms} end
end

if A_OVERLOADED == '1' then return {'overloaded', '', remaining, reset_ms} end

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
return {'ok', id, remaining, reset_ms}
