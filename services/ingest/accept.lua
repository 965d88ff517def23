-- Accepts N new orders of one instrument atomically, each on its own and in list order: rate limits (the
-- client's and its API key's), idempotency, the admin halts (client, instrument), backpressure, then enqueue. POST /orders is a call of one order,
-- POST /orders/batch one call per instrument of the batch.
--
-- Everything a duplicate could race on happens inside this one script, so two identical
-- requests arriving together produce one order: the second finds the first one's record and
-- gets its answer replayed; so does the second of two orders of one call with the same key (each
-- order's records are written before the next order is looked at). Nothing is written for an order
-- before the checks that can refuse it, except the rate buckets (whose refill is due anyway).
--
-- KEYS (K_*, and KE_* within an order's block) and ARGV (A_*, AE_*) are declared once, in
-- services/common/scripts.py (ACCEPT), and put on this script's first line by the loader: KEYS are
-- K_ORDERS, K_ORDER_STATE, K_KEY_RATE_BUCKET, then K_EACH_SIZE keys per order; ARGV the shared A_* values,
-- then per order A_EACH_SIZE values whose last (AE_COMMAND_FIELDS) counts the orders-stream entry's
-- field/value strings that follow. An order's idempotency, client order id and (with A_KEY_RATE 0) key
-- bucket keys are used only when its AE_HAS_* / A_KEY_RATE say so: every key is still named up front, in
-- the instrument's slot (so an API key's bucket is per instrument, like a client's).
-- Writes: orders (NewOrderCommand), order state (OrderRecord, packed by the caller), the client's live orders
-- (ZADD, score created_at) and, for an order placed through a cancel-on-disconnect session, the session's orders.
-- Returns one {kind, value, remaining, reset ms} per order, in order: remaining is the client bucket's
-- whole tokens after that order and reset ms the time until it is full again (both 0 when A_RATE is 0).
-- Kind and value:
--   'ok', stream id | 'replay', first answer | 'conflict', '' | 'rate_limited' or 'key_rate_limited', retry ms
--   | 'client_halted', '' | 'instrument_halted', '' | 'duplicate_client_order_id', that order's id
--   | 'overloaded', ''

local MICRO = 1000000 -- a token is a million micro-tokens: integer arithmetic at any rate

local rate, burst = tonumber(A_RATE), tonumber(A_BURST)
local key_rate, key_burst = tonumber(A_KEY_RATE), tonumber(A_KEY_BURST)
local capacity, key_capacity = burst * MICRO, key_burst * MICRO
local overloaded, ttl_s = A_OVERLOADED == '1', A_TTL_S
local limited = rate > 0 or key_rate > 0

-- The admin halts (K_HALTS: the instrument's own field, one per halted client), checked in this call, so no
-- order is accepted once a halt's write is done; after the idempotency check, so a replay of an order accepted
-- before a halt still gets its first answer. An empty hash (the usual case) costs one EXISTS per call.
local halts_held = redis.call('EXISTS', K_HALTS) == 1
local instrument_halted = halts_held and redis.call('HEXISTS', K_HALTS, A_HALT_INSTRUMENT) == 1

local now = 0 -- microseconds, below 2^53; one clock for every order of the call
if limited then
  local clock = redis.call('TIME')
  now = tonumber(clock[1]) * MICRO + tonumber(clock[2])
end

-- Buckets are read once per call and written once at its end: under one clock an order's take leaves
-- exactly what the next order would read back. tokens[key]: micro-tokens now; taken[key]: true for a bucket
-- some order took from (only those are written: a refused order leaves the state that refills the same).
local tokens, taken = {}, {}

-- A bucket's micro-tokens now: its stored count refilled since its last write.
local function tokens_of(key, bucket_rate, bucket_capacity)
  local held = tokens[key]
  if held ~= nil then return held end
  local state = redis.call('HMGET', key, 'tokens', 'ts')
  local stored, last = tonumber(state[1]), tonumber(state[2])
  if stored == nil or last == nil then
    held = bucket_capacity
  else
    -- Cap the elapsed time first so elapsed x rate stays an exact integer.
    local elapsed = math.min(math.max(now - last, 0), math.ceil(bucket_capacity / bucket_rate))
    held = math.min(bucket_capacity, stored + elapsed * bucket_rate)
  end
  tokens[key] = held
  return held
end

local function take(key)
  tokens[key] = tokens[key] - MICRO
  taken[key] = true
end

local records = {} -- order id, packed record: one HSET for the call

-- One order: its keys from KEYS[kb], its values from ARGV[ab]. Returns its reply.
local function accept(kb, ab)
  local remaining, reset_ms = 0, 0 -- the client's bucket after this order (RateLimit-* headers)
  if limited then
    -- Both buckets are checked before either is taken from: an order refused by one costs the other nothing.
    local bucket = KEYS[kb + KE_RATE_BUCKET]
    local client_wait, key_wait = 0, 0 -- ms until a token; 0 = one is there
    if rate > 0 then
      local held = tokens_of(bucket, rate, capacity)
      if held < MICRO then client_wait = math.ceil((MICRO - held) / rate / 1000) end
    end
    if key_rate > 0 then
      local held = tokens_of(K_KEY_RATE_BUCKET, key_rate, key_capacity)
      if held < MICRO then key_wait = math.ceil((MICRO - held) / key_rate / 1000) end
    end
    local refused = client_wait > 0 or key_wait > 0
    if rate > 0 then
      if not refused then take(bucket) end
      local held = tokens[bucket]
      remaining = math.floor(held / MICRO)
      reset_ms = math.ceil((capacity - held) / rate / 1000)
    end
    if refused then
      -- The wait covers both buckets; the kind names the client's when it is the one (or one) refusing.
      local kind = client_wait > 0 and 'rate_limited' or 'key_rate_limited'
      return {kind, math.max(client_wait, key_wait), remaining, reset_ms}
    end
    if key_rate > 0 then take(K_KEY_RATE_BUCKET) end
  end

  local fingerprint = ARGV[ab + AE_FINGERPRINT]
  local has_key = ARGV[ab + AE_HAS_IDEMPOTENCY_KEY] == '1'
  local has_coid = ARGV[ab + AE_HAS_CLIENT_ORDER_ID] == '1'
  local idempotency, coid = KEYS[kb + KE_IDEMPOTENCY], KEYS[kb + KE_CLIENT_ORDER_ID]
  if has_key then
    local stored = redis.call('GET', idempotency)
    if stored then
      -- A record is the fingerprint, a newline, then the first answer.
      if string.sub(stored, 1, 64) == fingerprint then
        return {'replay', string.sub(stored, 66), remaining, reset_ms}
      end
      return {'conflict', '', remaining, reset_ms}
    end
  end

  if halts_held then
    if redis.call('HEXISTS', K_HALTS, ARGV[ab + AE_HALT_CLIENT]) == 1 then
      return {'client_halted', '', remaining, reset_ms}
    end
    if instrument_halted then return {'instrument_halted', '', remaining, reset_ms} end
  end

  if has_coid then
    -- A client's own order reference names one order (for the records' lifetime, 24 h by default).
    local already = redis.call('GET', coid)
    if already then return {'duplicate_client_order_id', already, remaining, reset_ms} end
  end

  if overloaded then return {'overloaded', '', remaining, reset_ms} end

  local order_id = ARGV[ab + AE_ORDER_ID]
  local from = ab + A_EACH_SIZE
  local id = redis.call('XADD', K_ORDERS, '*', unpack(ARGV, from, from + tonumber(ARGV[ab + AE_COMMAND_FIELDS]) - 1))
  records[#records + 1] = order_id
  records[#records + 1] = ARGV[ab + AE_RECORD]
  if has_key then
    redis.call('SET', idempotency, fingerprint .. '\n' .. ARGV[ab + AE_ANSWER], 'EX', ttl_s)
  end
  if has_coid then
    redis.call('SET', coid, order_id, 'EX', ttl_s)
  end
  -- The per-client and per-session indexes (docs/order-management.md) hold the order from the moment it is on
  -- the stream: match.lua removes it when it goes final, so listings and cancel-on-disconnect see it while
  -- it is still `accepted`.
  redis.call('ZADD', KEYS[kb + KE_CLIENT_ORDERS], ARGV[ab + AE_CREATED_AT], order_id)
  if ARGV[ab + AE_HAS_SESSION] == '1' then
    redis.call('SADD', KEYS[kb + KE_SESSION_ORDERS], order_id)
  end
  return {'ok', id, remaining, reset_ms}
end

local replies = {}
local ab = A_EACH_FROM
for kb = K_EACH_FROM, #KEYS, K_EACH_SIZE do
  replies[#replies + 1] = accept(kb, ab)
  ab = ab + A_EACH_SIZE + tonumber(ARGV[ab + AE_COMMAND_FIELDS])
end

if #records > 0 then redis.call('HSET', K_ORDER_STATE, unpack(records)) end
for key in pairs(taken) do
  local bucket_rate, bucket_capacity = rate, capacity -- a client's bucket, or the API key's:
  if key == K_KEY_RATE_BUCKET then bucket_rate, bucket_capacity = key_rate, key_capacity end
  redis.call('HSET', key, 'tokens', string.format('%d', tokens[key]), 'ts', string.format('%d', now))
  redis.call('PEXPIRE', key, math.ceil(bucket_capacity / bucket_rate / 1000) + 1000)
end
return replies
