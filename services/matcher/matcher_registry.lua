-- Refresh a matcher's entry in the registry of live matchers (services/matcher/lease.py) and list the live ones.
-- Scores are expiry times on Redis's clock, so matchers on hosts whose clocks differ agree on who is live.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', K_MATCHERS, '-inf', string.format('%d', now))
redis.call('ZADD', K_MATCHERS, string.format('%d', now + tonumber(A_TTL_MS)), A_HOLDER)
return redis.call('ZRANGE', K_MATCHERS, 0, -1)
