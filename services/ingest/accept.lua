-- Accepts one new order atomically: rate limit, idempotency, backpressure, then enqueue.
--
-- Everything a duplicate could race on happens inside this one script, so two identical
-- requests arriving together produce one order: the second finds the first one's record and
-- gets its answer replayed. Nothing is written before the checks that can refuse the order,
-- except the rate bucket (whose refill is due anyway).
--
-- KEYS: 1 orders stream, 2 order state hash, 3 rate bucket hash, 4 idempotency record,
--       5 client order id record (4 and 5 are used only when ARGV 9 / 10 say so: every key is
--       still named up front, in the instrument's slot)
-- ARGV: 1 rate (tokens per second, 0 = no limit), 2 burst, 3 overloaded ('1' or '0'),
--       4 fingerprint (64 hex), 5 the 201 answer (JSON), 6 ttl of both records (s), 7 order id,
--       8 packed order record (msgpack), 9 has idempotency key ('1'/'0'),
--       10 has client order id ('1'/'0'), 11.. the stream entry's field/value pairs
-- Returns {'ok', stream id} | {'replay', first answer} | {'conflict'} | {'rate_limited', retry ms}
--       | {'duplicate_client_order_id', that order's id} | {'overloaded'}

local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local MICRO = 1000000 -- a token is a million micro-tokens: integer arithmetic at any rate

if rate > 0 then
  local clock = redis.call('TIME')
  local now = tonumber(clock[1]) * MICRO + tonumber(clock[2]) -- microseconds, below 2^53
  local capacity = burst * MICRO
  local state = redis.call('HMGET', KEYS[3], 'tokens', 'ts')
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
    redis.call('HSET', KEYS[3], 'tokens', string.format('%d', tokens), 'ts', string.format('%d', now))
    redis.call('PEXPIRE', KEYS[3], ttl_ms)
    return {'rate_limited', math.ceil((MICRO - tokens) / rate / 1000)}
  end
  redis.call('HSET', KEYS[3], 'tokens', string.format('%d', tokens - MICRO), 'ts', string.format('%d', now))
  redis.call('PEXPIRE', KEYS[3], ttl_ms)
end

local fingerprint = ARGV[4]
local has_key, has_coid = ARGV[9] == '1', ARGV[10] == '1'
if has_key then
  local stored = redis.call('GET', KEYS[4])
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
  local taken = redis.call('GET', KEYS[5])
  if taken then return {'duplicate_client_order_id', taken} end
end

if ARGV[3] == '1' then return {'overloaded'} end

local fields = {}
for i = 11, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
redis.call('HSET', KEYS[2], ARGV[7], ARGV[8])
if has_key then
  redis.call('SET', KEYS[4], fingerprint .. '\n' .. ARGV[5], 'EX', ARGV[6])
end
if has_coid then
  redis.call('SET', KEYS[5], ARGV[7], 'EX', ARGV[6])
end
return {'ok', id}
