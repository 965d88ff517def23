-- Reads the best N levels of both sides of one instrument's book, and its book seq, atomically:
-- the levels and the seq always belong to the same state (a snapshot plus the deltas after seq
-- rebuild the book exactly).
--
-- KEYS (K_*) and ARGV (A_*) are declared once, in services/common/scripts.py (BOOK), and put on this
-- script's first line by the loader.
-- Returns {book seq, {bid ticks, bid lots, ...}, {ask ticks, ask lots, ...}}, best first, as strings.

local n = tonumber(A_LEVELS)
if n == nil or n < 1 then return redis.error_reply('levels must be a positive integer') end

local function side(levels_key, depth_key)
  local out = {}
  local levels = redis.call('ZRANGE', levels_key, 0, n - 1)
  if #levels == 0 then return out end
  -- HMGET in chunks: Lua's unpack() fails beyond a few thousand values.
  for first = 1, #levels, 1000 do
    local last = math.min(first + 999, #levels)
    local depths = redis.call('HMGET', depth_key, unpack(levels, first, last))
    for i = first, last do
      out[#out + 1] = levels[i]
      out[#out + 1] = depths[i - first + 1] or '0'
    end
  end
  return out
end

local seq = redis.call('HGET', K_META, 'book_seq') or '0'
return {seq, side(K_BID_LEVELS, K_BID_DEPTH), side(K_ASK_LEVELS, K_ASK_DEPTH)}
