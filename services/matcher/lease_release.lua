-- Give up a matcher's lease on an instrument (services/matcher/lease.py) only while it is still the caller's:
-- a lease that expired and was taken by another stays the other's. Returns 1 when released, 0 otherwise.
if redis.call('GET', K_MATCHER_LEASE) == A_HOLDER then
  return redis.call('DEL', K_MATCHER_LEASE)
end
return 0
