-- Price-time matching of one instrument, entirely inside Redis.
--
-- One call reads up to A_MAX_COMMANDS new commands from the instrument's orders stream with
-- XREADGROUP ... NOACK and applies them all before returning. Reading and applying happen in the
-- same atomic script, so no command is ever delivered without being applied, and none is applied
-- twice: the group's last-delivered id is the matcher's position, and it moves only with the
-- effects it stands for (and is replicated and written to the AOF with them, as one transaction).
--
-- Money is integers only: prices in ticks, quantities in lots, both well below 2^53 (the
-- instrument loader checks the limits). Decimal strings are formed here only for the output
-- streams, by placing the decimal point into the integer's digits.
--
-- KEYS (K_*), ARGV (A_*), the order record's codec (unpack_record, pack_record) and the book member
-- layout (MEMBER_FORMAT, MEMBER_ID_AT) and the reply's order (reply_of) are declared once, in
-- services/common/scripts.py (MATCH): the loader puts them on this script's first line, so this file
-- names positions, never numbers them.
-- Writes: trades (TradeEntry), events (EventEntry), book (BookEntry), order state (OrderRecord), and the order
-- management keys of docs/order-management.md: the client's live orders (co: ZREM when an order goes final), a
-- session's orders (cs: SREM, DEL after its sweep), the deadlines (ZREM when applied) and a command's outcome
-- (res: SET ... PX, JSON of wire.AmendOutcome / wire.CancelAllOutcome). co, cs and res are named after ids the
-- commands carry, so they are built here (id_keys, generated from keys.py) rather than passed in KEYS; all carry
-- the instrument's hash tag, so they are in the KEYS' slot.
-- Risk limits (issue 16; services/matcher/risk_state.py): the price band around meta's `ref_ticks` (the last trade
-- price, set here), market protection around the best opposite price at a market order's arrival, and the open-order
-- cap against the client's count in open_counts, kept exact here as orders rest and leave the book.
-- Returns a BatchResult (commands applied, last stream id, and what they did), the error NOLEASE when the caller
-- (ARGV holder) does not hold the instrument's lease, or the error HEALING while meta has a `healing` field (a heal
-- is under way); both having done nothing.

local SIDE_KEYS = {
  buy = {orders = K_BID_ORDERS, levels = K_BID_LEVELS, depth = K_BID_DEPTH, sign = -1},
  sell = {orders = K_ASK_ORDERS, levels = K_ASK_LEVELS, depth = K_ASK_DEPTH, sign = 1},
}
local OPPOSITE = {buy = 'sell', sell = 'buy'}
local SYMBOL = A_SYMBOL
-- Keys named after a client, session or request id (co, cs, res), built as keys.py names them.
local KEY = id_keys(A_KEY_PREFIX, SYMBOL)
local PRICE_MULT, PRICE_PLACES = tonumber(A_PRICE_MULTIPLIER), tonumber(A_PRICE_DECIMALS)
local QTY_MULT, QTY_PLACES = tonumber(A_QUANTITY_MULTIPLIER), tonumber(A_QUANTITY_DECIMALS)
-- Notional (ticks x lots) can reach 1e20: it is kept as hi * LIMB + lo, each part exact.
local LIMB = 1000000
local MAKERS_PER_FETCH = 16
-- Deadlines applied per call: a burst of them is spread over the next calls (the worker calls at least every
-- MATCHER_SWEEP_MS), so one call stays short.
local SWEEP_LIMIT = 100
-- How long an outcome waits for the ingest that asked (ms): far beyond any wait, short enough to clean itself.
local RESULT_TTL_MS = 600000
-- Risk limits (instruments.toml; 0 = off). Percentages come as integers, pct x 100: a price is outside the band
-- when |price - reference| x RISK_SCALE > BAND x reference (RISK_SCALE = 100 x 100). Every product stays exact:
-- ticks < 2^53 / 10^6 (the instrument loader), BAND and PROTECTION <= 100,000, RISK_SCALE = 10,000.
local BAND, PROTECTION = tonumber(A_PRICE_BAND_BP), tonumber(A_MARKET_PROTECTION_BP)
local MAX_OPEN, RISK_SCALE = tonumber(A_MAX_OPEN_ORDERS), tonumber(A_RISK_SCALE)

-- Only the holder of the instrument's lease applies anything (docs/scale-out.md, "Matcher leases"): a matcher that
-- was paused or cut off past its lease, while another took the instrument over, must not even read.
if redis.call('GET', K_MATCHER_LEASE) ~= A_HOLDER then
  return redis.error_reply('NOLEASE ' .. K_MATCHER_LEASE .. ' is not held by ' .. A_HOLDER)
end

-- A heal from PostgreSQL (services/matcher/heal.py) is rewriting this instrument's state: apply nothing
-- until it has finished, not even reading (the read moves the group's position).
if redis.call('HEXISTS', K_META, 'healing') == 1 then
  return redis.error_reply('HEALING ' .. K_META .. ' is being healed from PostgreSQL')
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local now_text = string.format('%d', now)

-- Deadlines due now are applied before any command of this call: no order of a client can trade after its
-- deadline was seen.
local due = redis.call('ZRANGEBYSCORE', K_DEADLINES, '-inf', now_text, 'LIMIT', 0, SWEEP_LIMIT)

-- Where the group stands: the last-delivered id of the call that read nothing.
local function group_last_id()
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', K_ORDERS)) do
    local info = {}
    for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
    if info['name'] == A_GROUP then return info['last-delivered-id'] end
  end
  return nil
end

local read = redis.call('XREADGROUP', 'GROUP', A_GROUP, A_CONSUMER, 'NOACK', 'COUNT', A_MAX_COMMANDS,
  'STREAMS', K_ORDERS, '>')
local entries = {}
if read then
  entries = read[1][2]
elseif #due == 0 then
  -- Nothing new: report where the group stands so the caller can block for what comes next.
  local at = group_last_id()
  if at == nil then return redis.error_reply('no consumer group ' .. A_GROUP .. ' on ' .. K_ORDERS) end
  return reply_of({applied = 0, last_id = at, trades = 0, new_orders = 0,
    rejected = 0, cancels = 0, invalid = 0, matched = 0, price_band = 0, max_open_orders = 0,
    market_protection = 0, amend_price_band = 0})
end

local counters = redis.call('HMGET', K_META, 'trade_seq', 'event_seq', 'book_seq', 'arrival_seq', 'ref_ticks')
local trade_seq = tonumber(counters[1]) or 0
local event_seq = tonumber(counters[2]) or 0
local book_seq = tonumber(counters[3]) or 0
local arrival_seq = tonumber(counters[4]) or 0
-- The price band's reference: the last trade price (nil before the first trade), moved by every trade of the call.
local ref_ticks = tonumber(counters[5])
-- price_band, max_open_orders: new orders rejected for them (also counted in `rejected`); market_protection: market
-- orders whose rest it cancelled; amend_price_band: amends rejected for the band.
local stats = {applied = 0, last_id = '0-0', trades = 0, new_orders = 0, rejected = 0, cancels = 0, invalid = 0,
  matched = 0, price_band = 0, max_open_orders = 0, market_protection = 0, amend_price_band = 0}

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
-- A record is a table keyed by services/common/wire.py OrderRecord's field names (unpack_record).

local cache, dirty, dirty_list = {}, {}, {}

local function load_order(id)
  local o = cache[id]
  if o == nil then
    local packed = redis.call('HGET', K_ORDER_STATE, id)
    if not packed then return nil end
    o = unpack_record(packed)
    cache[id] = o
  end
  return o
end

local function touch(o)
  o.updated_at = now
  cache[o.order_id] = o
  if not dirty[o.order_id] then
    dirty[o.order_id] = true
    dirty_list[#dirty_list + 1] = o.order_id
  end
end

local function add_fill(o, ticks, lots)
  o.filled_lots = o.filled_lots + lots
  local hi = math.floor(lots / LIMB)
  o.notional_hi = o.notional_hi + ticks * hi
  o.notional_lo = o.notional_lo + ticks * (lots - hi * LIMB)
  if o.notional_lo >= LIMB then
    local carry = math.floor(o.notional_lo / LIMB)
    o.notional_hi = o.notional_hi + carry
    o.notional_lo = o.notional_lo - carry * LIMB
  end
end

-- The per-client and per-session indexes: an order leaves them when it goes final. Removals are gathered
-- per key and applied once at the end of the call (one ZREM per client rather than one per order).
local gone, gone_keys, co_key_of = {}, {}, {}

local function note_gone(command, key, id)
  local entry = gone[key]
  if entry == nil then
    entry = {command = command, ids = {}}
    gone[key] = entry
    gone_keys[#gone_keys + 1] = key
  end
  entry.ids[#entry.ids + 1] = id
end

-- Every place an order takes a final status (filled, cancelled, rejected) calls this once.
local function leave_indexes(o)
  local key = co_key_of[o.client_id]
  if key == nil then
    key = KEY.client_orders(o.client_id)
    co_key_of[o.client_id] = key
  end
  note_gone('ZREM', key, o.order_id)
  if o.session ~= '' then note_gone('SREM', KEY.session_orders(o.session), o.order_id) end
end

-- Open-order counts (the cap's): a client's resting orders, changed here as orders rest and leave the book. Stored
-- counts are read in one HMGET for the clients of the call's GTC limit orders, and the new counts written in one
-- HSET at the end (a call touches a few dozen clients: one command each would cost more than the rest of the check).
-- The count the cap reads is the stored one plus this call's changes.
local open_delta, open_clients, open_stored = {}, {}, {}

-- Reads the stored counts of clients[from..to] into open_stored.
local function load_open_counts(clients, from, to)
  local values = redis.call('HMGET', K_OPEN_COUNTS, unpack(clients, from, to))
  for i = from, to do open_stored[clients[i]] = tonumber(values[i - from + 1]) or 0 end
end

local function count_open(client_id, delta)
  local d = open_delta[client_id]
  if d == nil then
    d = 0
    open_clients[#open_clients + 1] = client_id
  end
  open_delta[client_id] = d + delta
end

local function open_orders_of(client_id)
  if open_stored[client_id] == nil then load_open_counts({client_id}, 1, 1) end
  return open_stored[client_id] + (open_delta[client_id] or 0)
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

-- "<zero-padded arrival seq>:<order id>" (MEMBER_FORMAT; recovery.py writes the same with
-- scripts.book_member): equal prices sort by arrival, and the order id starts at MEMBER_ID_AT.
local function member_of(o)
  return string.format(MEMBER_FORMAT, o.arrival_seq) .. o.order_id
end

local function rest(o)
  arrival_seq = arrival_seq + 1
  o.arrival_seq = arrival_seq
  local keys = SIDE_KEYS[o.side]
  redis.call('ZADD', keys.orders, keys.sign * o.price_ticks, member_of(o))
  change_depth(o.side, o.price_ticks, o.quantity_lots - o.filled_lots)
  count_open(o.client_id, 1)
end

local function unrest(o)
  redis.call('ZREM', SIDE_KEYS[o.side].orders, member_of(o))
  change_depth(o.side, o.price_ticks, -(o.quantity_lots - o.filled_lots))
  count_open(o.client_id, -1)
end

-- The market order being matched: the furthest price its protection lets it trade at (nil: no limit), and
-- whether that limit stopped it.
local market_limit, protection_stopped = nil, false

-- Whether a maker at maker_ticks is within a `side` taker's limit price.
local function within(side, limit, maker_ticks)
  if side == 'buy' then return maker_ticks <= limit end
  return maker_ticks >= limit
end

-- Whether a maker at maker_ticks may trade with taker o.
local function crosses(o, maker_ticks)
  if o.type == 'market' then return market_limit == nil or within(o.side, market_limit, maker_ticks) end
  return within(o.side, o.price_ticks, maker_ticks)
end

-- Resting quantity the taker could trade against, counting no further than `needed`.
local function available(o, needed)
  local keys = SIDE_KEYS[OPPOSITE[o.side]]
  local limit = '+inf'
  if o.type == 'limit' then limit = keys.sign * o.price_ticks end
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

-- Risk limits -----------------------------------------------------------------------------------

-- Whether a limit price is outside the band around the reference price; the edge is inside.
local function outside_band(ticks)
  if BAND == 0 or ref_ticks == nil then return false end
  local distance = ticks - ref_ticks
  if distance < 0 then distance = -distance end
  return distance * RISK_SCALE > BAND * ref_ticks
end

-- The furthest price market order o may trade at: PROTECTION from the best opposite price now (nil: no limit).
-- A price p is within it when |p - best| x RISK_SCALE <= PROTECTION x best, i.e. |p - best| <= floor(PROTECTION x
-- best / RISK_SCALE): the quotient is exact or at least 1 / RISK_SCALE from the next integer, far more than a
-- double's error at these magnitudes, so the floor is exact.
local function protection_limit(o)
  if PROTECTION == 0 then return nil end
  local best = best_opposite_ticks(o)
  if best == nil then return nil end
  local reach = math.floor(best * PROTECTION / RISK_SCALE)
  if o.side == 'buy' then return best + reach end
  return best - reach
end

-- Output streams ------------------------------------------------------------------------------

-- The orders-stream entry id of the command being applied: every event carries it (`command_id`),
-- so PostgreSQL's rows tell which commands were applied (the heal after a restored Redis reads it).
local command_id = ''

-- `extra`: more field/value pairs (amended's requeued).
local function emit_event(kind, o, with_order, extra)
  event_seq = event_seq + 1
  local fields = {
    'event', kind, 'seq', int_text(event_seq), 'instrument', SYMBOL, 'order_id', o.order_id,
    'client_id', o.client_id, 'status', o.status, 'filled_quantity', qty_text(o.filled_lots),
    'remaining_quantity', qty_text(o.quantity_lots - o.filled_lots),
    'filled_quote', quote_text(o.notional_hi, o.notional_lo),
    'reason', o.reason, 'ts', now_text, 'command_id', command_id,
  }
  if with_order then
    local price = ''
    if o.type == 'limit' then price = price_text(o.price_ticks) end
    local more = {
      'client_order_id', o.client_order_id, 'side', o.side, 'type', o.type,
      'time_in_force', o.time_in_force,
      'post_only', int_text(o.post_only), 'price', price, 'quantity', qty_text(o.quantity_lots),
      'created_at', int_text(o.created_at),
    }
    for i = 1, #more do fields[#fields + 1] = more[i] end
    -- Only a mode other than none: an event without the field means none (EventEntry), and most events stay
    -- as short as before (a field more on every accepted event costs the hot path about 0.5 us).
    if o.self_trade_prevention ~= 'none' then
      fields[#fields + 1] = 'self_trade_prevention'
      fields[#fields + 1] = o.self_trade_prevention
    end
  end
  if extra then
    for i = 1, #extra do fields[#fields + 1] = extra[i] end
  end
  redis.call('XADD', K_EVENTS, '*', unpack(fields))
end

local function emit_trade(taker, maker, ticks, lots)
  trade_seq = trade_seq + 1
  stats.trades = stats.trades + 1
  local seq = int_text(trade_seq)
  local buy, sell = taker, maker
  if taker.side == 'sell' then buy, sell = maker, taker end
  ref_ticks = ticks
  redis.call('XADD', K_TRADES, '*',
    'trade_id', SYMBOL .. '-' .. seq, 'seq', seq, 'instrument', SYMBOL,
    'price', price_text(ticks), 'quantity', qty_text(lots), 'taker_side', taker.side,
    'taker_order_id', taker.order_id, 'maker_order_id', maker.order_id,
    'buy_order_id', buy.order_id, 'sell_order_id', sell.order_id,
    'buyer_client_id', buy.client_id, 'seller_client_id', sell.client_id, 'ts', now_text)
end

-- Commands --------------------------------------------------------------------------------------

local VALID_SIDE = {buy = true, sell = true}
local VALID_TIF = {GTC = true, IOC = true, FOK = true}
local VALID_STP = {none = true, cancel_taker = true, cancel_maker = true, cancel_both = true, decrement = true}
local CANCEL_ALL_SIDE = {[''] = true, buy = true, sell = true}
local CANCEL_ALL_REASON = {user = true, halted = true}

local function whole(text, min, max)
  local n = tonumber(text)
  if n == nil or n ~= math.floor(n) or n < min or n > max then return nil end
  return n
end

local function filled(text)
  return text ~= nil and text ~= ''
end

local function is_resting(o)
  return o.status == 'open' or o.status == 'partially_filled'
end

-- An event whose reason is not the order's own (cancel_rejected, amend_rejected, an STP decrement's amended):
-- the record keeps its reason.
local function emit_with_reason(kind, o, with_order, reason, extra)
  local saved = o.reason
  o.reason = reason
  emit_event(kind, o, with_order, extra)
  o.reason = saved
end

-- cancel_rejected / amend_rejected of a command naming an order this instrument does not hold: no record to report.
local function emit_unknown_order(kind, order_id, client_id)
  event_seq = event_seq + 1
  redis.call('XADD', K_EVENTS, '*', 'event', kind, 'seq', int_text(event_seq),
    'instrument', SYMBOL, 'order_id', order_id, 'client_id', client_id,
    'status', 'rejected', 'filled_quantity', '0', 'remaining_quantity', '0',
    'filled_quote', '0', 'reason', 'unknown_order', 'ts', now_text, 'command_id', command_id)
end

-- A command's outcome for the ingest waiting on it (wire.AmendOutcome / wire.CancelAllOutcome).
local function set_result(request_id, json)
  redis.call('SET', KEY.result(request_id), json, 'PX', RESULT_TTL_MS)
end

-- Takes a resting order off the book: cancelled with `reason`.
local function cancel_resting(o, reason)
  unrest(o)
  o.status, o.reason = 'cancelled', reason
  touch(o)
  emit_event('cancelled', o, false)
  leave_indexes(o)
end

-- Validates a new-order command completely before anything is written.
local function parse_new(f)
  if not f.order_id or f.order_id == '' or not f.client_id or f.client_id == '' then return nil end
  if not VALID_SIDE[f.side] or not VALID_TIF[f.time_in_force] then return nil end
  local qty = whole(f.quantity_lots, 1, 2 ^ 53)
  local price = whole(f.price_ticks, 0, 2 ^ 53)
  local created = whole(f.created_at, 0, 2 ^ 53)
  if qty == nil or price == nil or created == nil then return nil end
  -- Entries written before these fields existed (or with their defaults) mean no self-trade prevention and
  -- no session.
  local stp = f.self_trade_prevention or 'none'
  if not VALID_STP[stp] then return nil end
  if f.type == 'limit' then
    if price < 1 then return nil end
  elseif f.type == 'market' then
    if price ~= 0 or f.time_in_force ~= 'IOC' then return nil end
  else
    return nil
  end
  return {
    order_id = f.order_id, client_id = f.client_id, client_order_id = f.client_order_id or '',
    side = f.side, type = f.type, time_in_force = f.time_in_force,
    post_only = (f.post_only == '1') and 1 or 0, price_ticks = price, quantity_lots = qty, filled_lots = 0,
    status = 'open', reason = '', created_at = created, updated_at = now, arrival_seq = 0,
    notional_hi = 0, notional_lo = 0, self_trade_prevention = stp, session = f.session or '',
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
  leave_indexes(o)
end

local function finish_taker(o)
  local remaining = o.quantity_lots - o.filled_lots
  if remaining == 0 then
    o.status = 'filled'
    emit_event('filled', o, false)
    leave_indexes(o)
  elseif o.type == 'market' or o.time_in_force ~= 'GTC' then
    o.status = 'cancelled'
    if o.type ~= 'market' then
      o.reason = 'ioc_remainder'
    elseif protection_stopped then
      o.reason = 'market_protection'
      stats.market_protection = stats.market_protection + 1
    else
      o.reason = 'market_remainder'
    end
    emit_event('cancelled', o, false)
    leave_indexes(o)
  else
    rest(o)
    if o.filled_lots > 0 then
      o.status = 'partially_filled'
      emit_event('partially_filled', o, false)
    end
  end
end

-- Self-trade prevention ------------------------------------------------------------------------
-- The taker's mode decides, before each fill with a maker of the same client (docs/order-management.md).

-- Applies the taker's mode to one own maker; true when the taker stops here (its remainder is then cancelled
-- by the caller, reason self_trade_prevented).
local function prevent_self_trade(o, maker)
  local mode = o.self_trade_prevention
  if mode == 'cancel_taker' then return true end
  if mode == 'cancel_maker' then
    cancel_resting(maker, 'self_trade_prevented')
    return false
  end
  if mode == 'cancel_both' then
    cancel_resting(maker, 'self_trade_prevented')
    return true
  end
  -- decrement: the smaller remaining is cancelled, the other reduced by as much; equal, both go.
  local maker_left, taker_left = maker.quantity_lots - maker.filled_lots, o.quantity_lots - o.filled_lots
  if maker_left <= taker_left then
    cancel_resting(maker, 'self_trade_prevented')
    if maker_left == taker_left then return true end
    o.quantity_lots = o.quantity_lots - maker_left
    emit_with_reason('amended', o, true, 'self_trade_prevented', {'requeued', '0'})
    return false
  end
  maker.quantity_lots = maker.quantity_lots - taker_left
  change_depth(maker.side, maker.price_ticks, -taker_left)
  touch(maker)
  emit_with_reason('amended', maker, true, 'self_trade_prevented', {'requeued', '0'})
  return true
end

-- Whether a FOK taker would fill entirely, counting only the liquidity it may trade with: under a mode other
-- than none its own makers are skipped (cancel_maker), stop it (cancel_taker, cancel_both), or take their
-- remaining off what it needs and stop it if they are not smaller (decrement), as the match would.
local function fok_fillable(o)
  local needed = o.quantity_lots
  if o.self_trade_prevention == 'none' then return available(o, needed) >= needed end
  local keys = SIDE_KEYS[OPPOSITE[o.side]]
  local mode, offset = o.self_trade_prevention, 0
  while true do
    local heads = redis.call('ZRANGE', keys.orders, offset, offset + 63, 'WITHSCORES')
    if #heads == 0 then return false end
    for i = 1, #heads, 2 do
      if not crosses(o, keys.sign * tonumber(heads[i + 1])) then return false end
      local maker = load_order(string.sub(heads[i], MEMBER_ID_AT))
      local left = maker.quantity_lots - maker.filled_lots
      if maker.client_id ~= o.client_id then
        needed = needed - left
        if needed <= 0 then return true end
      elseif mode == 'cancel_taker' or mode == 'cancel_both' then
        return false
      elseif mode == 'decrement' then
        if left >= needed then return false end
        needed = needed - left
      end
    end
    offset = offset + 64
  end
end

-- Matching --------------------------------------------------------------------------------------

-- Trades taker o against the opposite side while it crosses. Returns true when self-trade prevention stopped
-- the taker (its remainder is to be cancelled).
local function match(o)
  local keys = SIDE_KEYS[OPPOSITE[o.side]]
  local stp = o.self_trade_prevention ~= 'none'
  while o.filled_lots < o.quantity_lots do
    local heads = redis.call('ZRANGE', keys.orders, 0, MAKERS_PER_FETCH - 1, 'WITHSCORES')
    if #heads == 0 then return false end
    for i = 1, #heads, 2 do
      local ticks = keys.sign * tonumber(heads[i + 1])
      if not crosses(o, ticks) then
        -- A market order crosses every price but its protection's.
        protection_stopped = o.type == 'market'
        return false
      end
      local maker_id = string.sub(heads[i], MEMBER_ID_AT)
      local maker = load_order(maker_id)
      if stp and maker.client_id == o.client_id then
        if prevent_self_trade(o, maker) then return true end
      else
        local lots = math.min(o.quantity_lots - o.filled_lots, maker.quantity_lots - maker.filled_lots)
        add_fill(maker, ticks, lots)
        add_fill(o, ticks, lots)
        touch(maker)
        emit_trade(o, maker, ticks, lots)
        stats.matched = stats.matched + 1
        change_depth(maker.side, ticks, -lots)
        if maker.filled_lots == maker.quantity_lots then
          redis.call('ZREM', keys.orders, heads[i])
          count_open(maker.client_id, -1)
          maker.status = 'filled'
          emit_event('filled', maker, false)
          leave_indexes(maker)
        else
          maker.status = 'partially_filled'
          emit_event('partially_filled', maker, false)
        end
      end
      if o.filled_lots == o.quantity_lots then return false end
    end
  end
  return false
end

-- The taker's remainder after self-trade prevention stopped it.
local function cancel_stopped_taker(o)
  o.status, o.reason = 'cancelled', 'self_trade_prevented'
  emit_event('cancelled', o, false)
  leave_indexes(o)
end

-- Why a new limit order is rejected before matching (nil: it is not): outside the price band, its client already
-- at the open-order cap (a GTC order: only those rest), or post-only and crossing.
local function refusal_of(o)
  if outside_band(o.price_ticks) then
    stats.price_band = stats.price_band + 1
    return 'price_band'
  end
  if MAX_OPEN > 0 and o.time_in_force == 'GTC' and open_orders_of(o.client_id) >= MAX_OPEN then
    stats.max_open_orders = stats.max_open_orders + 1
    return 'max_open_orders'
  end
  if o.post_only == 1 then
    local best = best_opposite_ticks(o)
    if best ~= nil and crosses(o, best) then return 'post_only_would_cross' end
  end
  return nil
end

local function apply_new(f)
  local o = parse_new(f)
  if o == nil then
    reject_invalid(f)
    return
  end
  local known = load_order(o.order_id)
  -- Ingest writes the record as `accepted`; any other status means this order was applied already (or
  -- cancelled before it was: cancel-on-disconnect).
  if known ~= nil and known.status ~= 'accepted' then return end
  stats.new_orders = stats.new_orders + 1
  touch(o)
  local refusal = o.type == 'limit' and refusal_of(o)
  if refusal then
    o.status, o.reason = 'rejected', refusal
    stats.rejected = stats.rejected + 1
    emit_event('rejected', o, true)
    leave_indexes(o)
    return
  end
  emit_event('accepted', o, true)
  if o.time_in_force == 'FOK' and not fok_fillable(o) then
    o.status, o.reason = 'cancelled', 'fok_not_fillable'
    emit_event('cancelled', o, false)
    leave_indexes(o)
    return
  end
  if o.type == 'market' then market_limit, protection_stopped = protection_limit(o), false end
  local stopped = match(o)
  if o.filled_lots > 0 then stats.matched = stats.matched + 1 end
  if stopped then cancel_stopped_taker(o) else finish_taker(o) end
  market_limit = nil
end

local function apply_cancel(f)
  stats.cancels = stats.cancels + 1
  local o = nil
  if f.order_id and f.order_id ~= '' then o = load_order(f.order_id) end
  if o == nil then
    emit_unknown_order('cancel_rejected', f.order_id or '', f.client_id or '')
    return
  end
  if not is_resting(o) then
    emit_with_reason('cancel_rejected', o, false, 'already_' .. o.status)
    return
  end
  cancel_resting(o, 'user')
end

-- Amend -----------------------------------------------------------------------------------------

-- wire.AmendOutcome's JSON, written out: the script runs (and would encode them) on every call.
local AMEND_UNCHANGED = '{"outcome":"unchanged","reason":""}'
local AMENDED = '{"outcome":"amended","reason":""}'

-- Validates an amend command completely before anything is written; nil when invalid.
local function parse_amend(f)
  if not filled(f.order_id) or not filled(f.client_id) or not filled(f.request_id) then return nil end
  if f.price_ticks == nil or f.quantity_lots == nil or whole(f.ts, 0, 2 ^ 53) == nil then return nil end
  local a = {order_id = f.order_id, request_id = f.request_id}
  if f.price_ticks ~= '' then
    a.price = whole(f.price_ticks, 1, 2 ^ 53)
    if a.price == nil then return nil end
  end
  if f.quantity_lots ~= '' then
    a.quantity = whole(f.quantity_lots, 1, 2 ^ 53)
    if a.quantity == nil then return nil end
  end
  return a
end

local function reject_amend(a, o, reason)
  if o == nil then
    emit_unknown_order('amend_rejected', a.order_id, a.client_id)
  else
    emit_with_reason('amend_rejected', o, false, reason)
  end
  set_result(a.request_id, cjson.encode({outcome = 'amend_rejected', reason = reason}))
end

-- A resting order's new price and/or total quantity. A decrease alone keeps the order's place; an increase or
-- a new price sends it to the back of its (new) level, and a new price that crosses trades as a taker would.
local function apply_amend(f)
  local a = parse_amend(f)
  if a == nil then
    stats.invalid = stats.invalid + 1
    return
  end
  a.client_id = f.client_id
  local o = load_order(a.order_id)
  if o == nil then return reject_amend(a, nil, 'unknown_order') end
  if not is_resting(o) then return reject_amend(a, o, 'already_' .. o.status) end
  local price, quantity = a.price or o.price_ticks, a.quantity or o.quantity_lots
  if quantity <= o.filled_lots then return reject_amend(a, o, 'quantity_not_above_filled') end
  if price == o.price_ticks and quantity == o.quantity_lots then
    set_result(a.request_id, AMEND_UNCHANGED)
    return
  end
  if price == o.price_ticks and quantity < o.quantity_lots then
    change_depth(o.side, price, quantity - o.quantity_lots)
    o.quantity_lots = quantity
    o.reason = ''
    touch(o)
    emit_event('amended', o, true, {'requeued', '0'})
    set_result(a.request_id, AMENDED)
    return
  end
  if price ~= o.price_ticks and outside_band(price) then
    stats.amend_price_band = stats.amend_price_band + 1
    return reject_amend(a, o, 'price_band')
  end
  if price ~= o.price_ticks and o.post_only == 1 then
    local best = best_opposite_ticks(o)
    if best ~= nil and within(o.side, price, best) then
      return reject_amend(a, o, 'post_only_would_cross')
    end
  end
  unrest(o)
  o.price_ticks, o.quantity_lots, o.reason = price, quantity, ''
  touch(o)
  emit_event('amended', o, true, {'requeued', '1'})
  set_result(a.request_id, AMENDED)
  local before = o.filled_lots
  if match(o) then return cancel_stopped_taker(o) end
  if o.filled_lots > before then stats.matched = stats.matched + 1 end
  if o.filled_lots == o.quantity_lots then
    o.status = 'filled'
    emit_event('filled', o, false)
    leave_indexes(o)
    return
  end
  rest(o)
  if o.filled_lots > before then
    o.status = 'partially_filled'
    emit_event('partially_filled', o, false)
  end
end

-- Cancel-all, the dead man's switch and cancel-on-disconnect -----------------------------------------

-- Cancels every resting order of the client (on `side`, '' both) with `reason`; the ids cancelled, oldest first.
local function cancel_client(client_id, side, reason)
  local cancelled = {}
  for _, id in ipairs(redis.call('ZRANGE', KEY.client_orders(client_id), 0, -1)) do
    local o = load_order(id)
    if o ~= nil and is_resting(o) and (side == '' or o.side == side) then
      cancel_resting(o, reason)
      cancelled[#cancelled + 1] = id
    end
  end
  return cancelled
end

local function apply_cancel_all(f)
  if not filled(f.client_id) or not CANCEL_ALL_SIDE[f.side] or not CANCEL_ALL_REASON[f.reason]
      or not filled(f.request_id) or f.requester == nil or whole(f.ts, 0, 2 ^ 53) == nil then
    stats.invalid = stats.invalid + 1
    return
  end
  stats.cancels = stats.cancels + 1
  local cancelled = cancel_client(f.client_id, f.side, f.reason)
  -- cjson writes an empty table as an object.
  local json = '{"cancelled":[]}'
  if #cancelled > 0 then json = cjson.encode({cancelled = cancelled}) end
  set_result(f.request_id, json)
end

-- Every live order placed through a cancel-on-disconnect session, also one still `accepted` (its new command,
-- applied later, then finds it final and is skipped); the session's set goes with it.
local function cancel_session(session)
  local key = KEY.session_orders(session)
  for _, id in ipairs(redis.call('SMEMBERS', key)) do
    local o = load_order(id)
    if o ~= nil and is_resting(o) then
      cancel_resting(o, 'disconnect')
    elseif o ~= nil and o.status == 'accepted' then
      o.status, o.reason = 'cancelled', 'disconnect'
      touch(o)
      -- The order's first event: it carries every field, as `accepted` would have.
      emit_event('cancelled', o, true)
      leave_indexes(o)
    end
  end
  redis.call('DEL', key)
  gone[key] = nil
end

local function sweep()
  for _, member in ipairs(due) do
    if string.sub(member, 1, #DEADLINE_CLIENT) == DEADLINE_CLIENT and #member > #DEADLINE_CLIENT then
      cancel_client(string.sub(member, #DEADLINE_CLIENT + 1), '', 'dead_man_switch')
    elseif string.sub(member, 1, #DEADLINE_SESSION) == DEADLINE_SESSION and #member > #DEADLINE_SESSION then
      cancel_session(string.sub(member, #DEADLINE_SESSION + 1))
    end
    redis.call('ZREM', K_DEADLINES, member)
  end
end

-- Main ------------------------------------------------------------------------------------------

sweep()

local commands = {}
for n, entry in ipairs(entries) do
  local raw, f = entry[2], {}
  for i = 1, #raw, 2 do f[raw[i]] = raw[i + 1] end
  commands[n] = f
end
if MAX_OPEN > 0 then
  -- The stored counts of the clients whose orders the cap may refuse, in one read.
  local wanted, seen = {}, {}
  for _, f in ipairs(commands) do
    local client = f.client_id
    if f.cmd == 'new' and f.type == 'limit' and f.time_in_force == 'GTC' and client and not seen[client] then
      seen[client] = true
      wanted[#wanted + 1] = client
    end
  end
  if #wanted > 0 then load_open_counts(wanted, 1, #wanted) end
end

local last_id = '0-0'
for n, entry in ipairs(entries) do
  last_id = entry[1]
  command_id = last_id
  local f = commands[n]
  if f.cmd == 'new' then
    apply_new(f)
  elseif f.cmd == 'cancel' then
    apply_cancel(f)
  elseif f.cmd == 'amend' then
    apply_amend(f)
  elseif f.cmd == 'cancel_all' then
    apply_cancel_all(f)
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
    redis.call('HSET', K_ORDER_STATE, unpack(batch))
    batch = {}
  end
end
if #batch > 0 then redis.call('HSET', K_ORDER_STATE, unpack(batch)) end

-- Orders gone final leave the client's and the session's indexes.
for _, key in ipairs(gone_keys) do
  local entry = gone[key]
  if entry ~= nil then
    for from = 1, #entry.ids, 400 do
      redis.call(entry.command, key, unpack(entry.ids, from, math.min(from + 399, #entry.ids)))
    end
  end
end

-- The clients' open-order counts: stored + this call's change, in one HSET (a client with none has no field).
local changed, unread = {}, {}
for _, client in ipairs(open_clients) do
  if open_delta[client] ~= 0 then
    changed[#changed + 1] = client
    if open_stored[client] == nil then unread[#unread + 1] = client end
  end
end
for from = 1, #unread, 400 do load_open_counts(unread, from, math.min(from + 399, #unread)) end
local counts, emptied = {}, {}
for _, client in ipairs(changed) do
  local count = open_stored[client] + open_delta[client]
  if count > 0 then
    counts[#counts + 1] = client
    counts[#counts + 1] = int_text(count)
  else
    emptied[#emptied + 1] = client
  end
end
for from = 1, #counts, 400 do
  redis.call('HSET', K_OPEN_COUNTS, unpack(counts, from, math.min(from + 399, #counts)))
end
for from = 1, #emptied, 400 do
  redis.call('HDEL', K_OPEN_COUNTS, unpack(emptied, from, math.min(from + 399, #emptied)))
end

if #level_changes > 0 then
  for _, change in ipairs(level_changes) do
    change[2], change[3] = price_text(change[2]), qty_text(change[3])
  end
  book_seq = book_seq + 1
  redis.call('XADD', K_BOOK, '*', 'seq', int_text(book_seq), 'instrument', SYMBOL,
    'changes', cjson.encode(level_changes), 'ts', now_text)
end

local meta = {'trade_seq', int_text(trade_seq), 'event_seq', int_text(event_seq), 'book_seq', int_text(book_seq),
  'arrival_seq', int_text(arrival_seq)}
if stats.trades > 0 then
  meta[#meta + 1] = 'ref_ticks'
  meta[#meta + 1] = int_text(ref_ticks)
end
if #entries > 0 then
  meta[#meta + 1] = 'last_id'
  meta[#meta + 1] = last_id
  stats.applied, stats.last_id = #entries, last_id
else
  -- Only the sweep ran: the counters moved, the group's position did not.
  stats.last_id = group_last_id() or '0-0'
end
redis.call('HSET', K_META, unpack(meta))
return reply_of(stats)
