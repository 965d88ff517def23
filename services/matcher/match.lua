-- Price-time matching of one instrument, entirely inside Redis.
--
-- One call reads up to ARGV[3] new commands from the instrument's orders stream with
-- XREADGROUP ... NOACK and applies them all before returning. Reading and applying happen in the
-- same atomic script, so no command is ever delivered without being applied, and none is applied
-- twice: the group's last-delivered id is the matcher's position, and it moves only with the
-- effects it stands for (and is replicated and written to the AOF with them, as one transaction).
--
-- Money is integers only: prices in ticks, quantities in lots, both well below 2^53 (the
-- instrument loader checks the limits). Decimal strings are formed here only for the output
-- streams, by placing the decimal point into the integer's digits.
--
-- KEYS: 1 orders stream, 2 trades stream, 3 events stream, 4 book stream,
--       5 bid orders zset, 6 ask orders zset, 7 bid levels zset, 8 ask levels zset,
--       9 bid depth hash, 10 ask depth hash, 11 order state hash, 12 meta hash
-- ARGV: 1 group, 2 consumer, 3 max commands, 4 symbol,
--       5 price multiplier, 6 price decimals, 7 quantity multiplier, 8 quantity decimals
-- Returns {commands applied, last stream id, trades, new orders, rejected, cancels, invalid,
--          orders matched (each taker with a fill once, each maker once per fill)},
--         or the error HEALING while meta has a `healing` field (a heal is under way)

local K_ORDERS, K_TRADES, K_EVENTS, K_BOOK = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local K_STATE, K_META = KEYS[11], KEYS[12]
local SIDE_KEYS = {
  buy = {orders = KEYS[5], levels = KEYS[7], depth = KEYS[9], sign = -1},
  sell = {orders = KEYS[6], levels = KEYS[8], depth = KEYS[10], sign = 1},
}
local OPPOSITE = {buy = 'sell', sell = 'buy'}
local SYMBOL = ARGV[4]
local PRICE_MULT, PRICE_PLACES = tonumber(ARGV[5]), tonumber(ARGV[6])
local QTY_MULT, QTY_PLACES = tonumber(ARGV[7]), tonumber(ARGV[8])
-- Notional (ticks x lots) can reach 1e20: it is kept as hi * LIMB + lo, each part exact.
local LIMB = 1000000
local MAKERS_PER_FETCH = 16

-- A heal from PostgreSQL (services/matcher/heal.py) is rewriting this instrument's state: apply nothing
-- until it has finished, not even reading (the read moves the group's position).
if redis.call('HEXISTS', K_META, 'healing') == 1 then
  return redis.error_reply('HEALING ' .. K_META .. ' is being healed from PostgreSQL')
end

local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'NOACK', 'COUNT', ARGV[3],
  'STREAMS', K_ORDERS, '>')
if not read then
  -- Nothing new: report where the group stands so the caller can block for what comes next.
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', K_ORDERS)) do
    local info = {}
    for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
    if info['name'] == ARGV[1] then return {0, info['last-delivered-id'], 0, 0, 0, 0, 0, 0} end
  end
  return redis.error_reply('no consumer group ' .. ARGV[1] .. ' on ' .. K_ORDERS)
end
local entries = read[1][2]

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local now_text = string.format('%d', now)

local counters = redis.call('HMGET', K_META, 'trade_seq', 'event_seq', 'book_seq', 'arrival_seq')
local trade_seq = tonumber(counters[1]) or 0
local event_seq = tonumber(counters[2]) or 0
local book_seq = tonumber(counters[3]) or 0
local arrival_seq = tonumber(counters[4]) or 0
local stats = {trades = 0, new = 0, rejected = 0, cancels = 0, invalid = 0, matched = 0}

-- Formatting ---------------------------------------------------------------------------------

local function int_text(n)
  return string.format('%d', n)
end

-- Integer digits with a decimal point `places` from the right; `strip` drops trailing zeros.
local function point(digits, places, strip)
  if places == 0 then return digits end
  if #digits <= places then digits = string.rep('0', places - #digits + 1) .. digits end
  local whole, frac = digits:sub(1, #digits - places), digits:sub(#digits - places + 1)
  if strip then
    frac = frac:gsub('0+$', '')
    if frac == '' then return whole end
  end
  return whole .. '.' .. frac
end

local function place_point(units, mult, places, strip)
  return point(int_text(units * mult), places, strip)
end

local function price_text(ticks)
  return place_point(ticks, PRICE_MULT, PRICE_PLACES, false)
end

local function qty_text(lots)
  return place_point(lots, QTY_MULT, QTY_PLACES, true)
end

-- Quote amount of a notional hi * LIMB + lo (ticks x lots): exact digits, decimal point placed,
-- trailing zeros dropped. Scaling each limb by the multipliers keeps every product below 2^53.
local QUOTE_MULT, QUOTE_PLACES = PRICE_MULT * QTY_MULT, PRICE_PLACES + QTY_PLACES
local function quote_text(hi, lo)
  lo = lo * QUOTE_MULT
  local carry = math.floor(lo / LIMB)
  lo = lo - carry * LIMB
  hi = hi * QUOTE_MULT + carry
  local digits
  if hi > 0 then digits = int_text(hi) .. string.format('%06d', lo) else digits = int_text(lo) end
  return point(digits, QUOTE_PLACES, true)
end

-- Order records: cached for the call, written back once at the end ----------------------------
-- Field order is services/common/wire.py OrderRecord.

local cache, dirty, dirty_list = {}, {}, {}

local function unpack_record(packed)
  local r = cmsgpack.unpack(packed)
  return {
    id = r[1], client_id = r[2], client_order_id = r[3], side = r[4], type = r[5], tif = r[6],
    post_only = r[7], price = r[8], qty = r[9], filled = r[10], status = r[11], reason = r[12],
    created_at = r[13], updated_at = r[14], arrival = r[15], nh = r[16], nl = r[17],
  }
end

local function pack_record(o)
  return cmsgpack.pack({o.id, o.client_id, o.client_order_id, o.side, o.type, o.tif, o.post_only,
    o.price, o.qty, o.filled, o.status, o.reason, o.created_at, o.updated_at, o.arrival, o.nh, o.nl})
end

local function load_order(id)
  local o = cache[id]
  if o == nil then
    local packed = redis.call('HGET', K_STATE, id)
    if not packed then return nil end
    o = unpack_record(packed)
    cache[id] = o
  end
  return o
end

local function touch(o)
  o.updated_at = now
  cache[o.id] = o
  if not dirty[o.id] then
    dirty[o.id] = true
    dirty_list[#dirty_list + 1] = o.id
  end
end

local function add_fill(o, ticks, lots)
  o.filled = o.filled + lots
  local hi = math.floor(lots / LIMB)
  o.nh = o.nh + ticks * hi
  o.nl = o.nl + ticks * (lots - hi * LIMB)
  if o.nl >= LIMB then
    local carry = math.floor(o.nl / LIMB)
    o.nh = o.nh + carry
    o.nl = o.nl - carry * LIMB
  end
end

-- Book ------------------------------------------------------------------------------------------

local level_changes, level_index = {}, {}

local function note_level(side, ticks, lots)
  local key = side .. ticks
  local at = level_index[key]
  if at == nil then
    at = #level_changes + 1
    level_index[key] = at
  end
  -- Formatted once, when the book entry is written: a level can change many times in one call.
  level_changes[at] = {side, ticks, lots}
end

local function change_depth(side, ticks, delta)
  local keys = SIDE_KEYS[side]
  local field = int_text(ticks)
  local total = redis.call('HINCRBY', keys.depth, field, delta)
  if total <= 0 then
    redis.call('HDEL', keys.depth, field)
    redis.call('ZREM', keys.levels, field)
    total = 0
  elseif total == delta then
    redis.call('ZADD', keys.levels, keys.sign * ticks, field)
  end
  note_level(side, ticks, total)
end

-- "<16-digit arrival seq>:<order id>" (recovery.py's _member writes the same): equal prices sort by
-- arrival, and the order id starts at MEMBER_ID_AT.
local MEMBER_ID_AT = 18
local function member_of(o)
  return string.format('%016d:', o.arrival) .. o.id
end

local function rest(o)
  arrival_seq = arrival_seq + 1
  o.arrival = arrival_seq
  local keys = SIDE_KEYS[o.side]
  redis.call('ZADD', keys.orders, keys.sign * o.price, member_of(o))
  change_depth(o.side, o.price, o.qty - o.filled)
end

local function unrest(o)
  redis.call('ZREM', SIDE_KEYS[o.side].orders, member_of(o))
  change_depth(o.side, o.price, -(o.qty - o.filled))
end

-- Whether a maker at maker_ticks may trade with taker o.
local function crosses(o, maker_ticks)
  if o.type == 'market' then return true end
  if o.side == 'buy' then return maker_ticks <= o.price end
  return maker_ticks >= o.price
end

-- Resting quantity the taker could trade against, counting no further than `needed`.
local function available(o, needed)
  local keys = SIDE_KEYS[OPPOSITE[o.side]]
  local limit = '+inf'
  if o.type == 'limit' then limit = keys.sign * o.price end
  local total, offset = 0, 0
  while total < needed do
    local levels = redis.call('ZRANGEBYSCORE', keys.levels, '-inf', limit, 'LIMIT', offset, 64)
    if #levels == 0 then break end
    local depths = redis.call('HMGET', keys.depth, unpack(levels))
    for i = 1, #depths do total = total + (tonumber(depths[i]) or 0) end
    offset = offset + #levels
  end
  return total
end

local function best_opposite_ticks(o)
  local keys = SIDE_KEYS[OPPOSITE[o.side]]
  local best = redis.call('ZRANGE', keys.levels, 0, 0)
  if #best == 0 then return nil end
  return tonumber(best[1])
end

-- Output streams ------------------------------------------------------------------------------

-- The orders-stream entry id of the command being applied: every event carries it (`command_id`),
-- so PostgreSQL's rows tell which commands were applied (the heal after a restored Redis reads it).
local command_id = ''

local function emit_event(kind, o, with_order)
  event_seq = event_seq + 1
  local fields = {
    'event', kind, 'seq', int_text(event_seq), 'instrument', SYMBOL, 'order_id', o.id,
    'client_id', o.client_id, 'status', o.status, 'filled_quantity', qty_text(o.filled),
    'remaining_quantity', qty_text(o.qty - o.filled), 'filled_quote', quote_text(o.nh, o.nl),
    'reason', o.reason, 'ts', now_text, 'command_id', command_id,
  }
  if with_order then
    local price = ''
    if o.type == 'limit' then price = price_text(o.price) end
    local more = {
      'client_order_id', o.client_order_id, 'side', o.side, 'type', o.type, 'time_in_force', o.tif,
      'post_only', int_text(o.post_only), 'price', price, 'quantity', qty_text(o.qty),
      'created_at', int_text(o.created_at),
    }
    for i = 1, #more do fields[#fields + 1] = more[i] end
  end
  redis.call('XADD', K_EVENTS, '*', unpack(fields))
end

local function emit_trade(taker, maker, ticks, lots)
  trade_seq = trade_seq + 1
  stats.trades = stats.trades + 1
  local seq = int_text(trade_seq)
  local buy, sell = taker, maker
  if taker.side == 'sell' then buy, sell = maker, taker end
  redis.call('XADD', K_TRADES, '*',
    'trade_id', SYMBOL .. '-' .. seq, 'seq', seq, 'instrument', SYMBOL,
    'price', price_text(ticks), 'quantity', qty_text(lots), 'taker_side', taker.side,
    'taker_order_id', taker.id, 'maker_order_id', maker.id,
    'buy_order_id', buy.id, 'sell_order_id', sell.id,
    'buyer_client_id', buy.client_id, 'seller_client_id', sell.client_id, 'ts', now_text)
end

-- Commands --------------------------------------------------------------------------------------

local VALID_SIDE = {buy = true, sell = true}
local VALID_TIF = {GTC = true, IOC = true, FOK = true}

local function whole(text, min, max)
  local n = tonumber(text)
  if n == nil or n ~= math.floor(n) or n < min or n > max then return nil end
  return n
end

-- Validates a new-order command completely before anything is written.
local function parse_new(f)
  if not f.order_id or f.order_id == '' or not f.client_id or f.client_id == '' then return nil end
  if not VALID_SIDE[f.side] or not VALID_TIF[f.time_in_force] then return nil end
  local qty = whole(f.quantity_lots, 1, 2 ^ 53)
  local price = whole(f.price_ticks, 0, 2 ^ 53)
  local created = whole(f.created_at, 0, 2 ^ 53)
  if qty == nil or price == nil or created == nil then return nil end
  if f.type == 'limit' then
    if price < 1 then return nil end
  elseif f.type == 'market' then
    if price ~= 0 or f.time_in_force ~= 'IOC' then return nil end
  else
    return nil
  end
  return {
    id = f.order_id, client_id = f.client_id, client_order_id = f.client_order_id or '',
    side = f.side, type = f.type, tif = f.time_in_force, post_only = (f.post_only == '1') and 1 or 0,
    price = price, qty = qty, filled = 0, status = 'open', reason = '',
    created_at = created, updated_at = now, arrival = 0, nh = 0, nl = 0,
  }
end

local function reject_invalid(f)
  stats.invalid = stats.invalid + 1
  if not f.order_id or f.order_id == '' then return end
  local o = load_order(f.order_id)
  if o == nil or o.status ~= 'accepted' then return end
  o.status, o.reason = 'rejected', 'invalid_command'
  touch(o)
  emit_event('rejected', o, true)
end

local function finish_taker(o)
  local remaining = o.qty - o.filled
  if remaining == 0 then
    o.status = 'filled'
    emit_event('filled', o, false)
  elseif o.type == 'market' or o.tif ~= 'GTC' then
    o.status = 'cancelled'
    if o.type == 'market' then o.reason = 'market_remainder' else o.reason = 'ioc_remainder' end
    emit_event('cancelled', o, false)
  else
    rest(o)
    if o.filled > 0 then
      o.status = 'partially_filled'
      emit_event('partially_filled', o, false)
    end
  end
end

local function match(o)
  local keys = SIDE_KEYS[OPPOSITE[o.side]]
  while o.filled < o.qty do
    local heads = redis.call('ZRANGE', keys.orders, 0, MAKERS_PER_FETCH - 1, 'WITHSCORES')
    if #heads == 0 then return end
    for i = 1, #heads, 2 do
      local ticks = keys.sign * tonumber(heads[i + 1])
      if not crosses(o, ticks) then return end
      local maker_id = string.sub(heads[i], MEMBER_ID_AT)
      local maker = load_order(maker_id)
      local lots = math.min(o.qty - o.filled, maker.qty - maker.filled)
      add_fill(maker, ticks, lots)
      add_fill(o, ticks, lots)
      touch(maker)
      emit_trade(o, maker, ticks, lots)
      stats.matched = stats.matched + 1
      change_depth(maker.side, ticks, -lots)
      if maker.filled == maker.qty then
        redis.call('ZREM', keys.orders, heads[i])
        maker.status = 'filled'
        emit_event('filled', maker, false)
      else
        maker.status = 'partially_filled'
        emit_event('partially_filled', maker, false)
      end
      if o.filled == o.qty then return end
    end
  end
end

local function apply_new(f)
  local o = parse_new(f)
  if o == nil then
    reject_invalid(f)
    return
  end
  local known = load_order(o.id)
  -- Ingest writes the record as `accepted`; any other status means this order was applied already.
  if known ~= nil and known.status ~= 'accepted' then return end
  stats.new = stats.new + 1
  touch(o)
  if o.post_only == 1 and o.type == 'limit' then
    local best = best_opposite_ticks(o)
    if best ~= nil and crosses(o, best) then
      o.status, o.reason = 'rejected', 'post_only_would_cross'
      stats.rejected = stats.rejected + 1
      emit_event('rejected', o, true)
      return
    end
  end
  emit_event('accepted', o, true)
  if o.tif == 'FOK' and available(o, o.qty) < o.qty then
    o.status, o.reason = 'cancelled', 'fok_not_fillable'
    emit_event('cancelled', o, false)
    return
  end
  match(o)
  if o.filled > 0 then stats.matched = stats.matched + 1 end
  finish_taker(o)
end

local function apply_cancel(f)
  stats.cancels = stats.cancels + 1
  local o = nil
  if f.order_id and f.order_id ~= '' then o = load_order(f.order_id) end
  if o == nil then
    event_seq = event_seq + 1
    redis.call('XADD', K_EVENTS, '*', 'event', 'cancel_rejected', 'seq', int_text(event_seq),
      'instrument', SYMBOL, 'order_id', f.order_id or '', 'client_id', f.client_id or '',
      'status', 'rejected', 'filled_quantity', '0', 'remaining_quantity', '0',
      'filled_quote', '0', 'reason', 'unknown_order', 'ts', now_text, 'command_id', command_id)
    return
  end
  if o.status ~= 'open' and o.status ~= 'partially_filled' then
    local saved = o.reason
    o.reason = 'already_' .. o.status
    emit_event('cancel_rejected', o, false)
    o.reason = saved
    return
  end
  unrest(o)
  o.status, o.reason = 'cancelled', 'user'
  touch(o)
  emit_event('cancelled', o, false)
end

-- Main ------------------------------------------------------------------------------------------

local last_id = '0-0'
for _, entry in ipairs(entries) do
  last_id = entry[1]
  command_id = last_id
  local raw, f = entry[2], {}
  for i = 1, #raw, 2 do f[raw[i]] = raw[i + 1] end
  if f.cmd == 'new' then
    apply_new(f)
  elseif f.cmd == 'cancel' then
    apply_cancel(f)
  else
    reject_invalid(f)
  end
end

-- Write back changed order records, a bounded number per HSET (Lua's unpack has a stack limit).
local batch = {}
for _, id in ipairs(dirty_list) do
  batch[#batch + 1] = id
  batch[#batch + 1] = pack_record(cache[id])
  if #batch >= 400 then
    redis.call('HSET', K_STATE, unpack(batch))
    batch = {}
  end
end
if #batch > 0 then redis.call('HSET', K_STATE, unpack(batch)) end

if #level_changes > 0 then
  for _, change in ipairs(level_changes) do
    change[2], change[3] = price_text(change[2]), qty_text(change[3])
  end
  book_seq = book_seq + 1
  redis.call('XADD', K_BOOK, '*', 'seq', int_text(book_seq), 'instrument', SYMBOL,
    'changes', cjson.encode(level_changes), 'ts', now_text)
end

redis.call('HSET', K_META, 'trade_seq', int_text(trade_seq), 'event_seq', int_text(event_seq),
  'book_seq', int_text(book_seq), 'arrival_seq', int_text(arrival_seq), 'last_id', last_id)

return {#entries, last_id, stats.trades, stats.new, stats.rejected, stats.cancels, stats.invalid,
  stats.matched}
