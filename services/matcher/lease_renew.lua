-- Renew a matcher's lease on an instrument (services/matcher/lease.py): extend it only while it is still the
-- caller's, so a matcher whose lease expired and was taken by another never takes it back by renewing.
-- Returns 1 when renewed, 0 when the lease is another's or gone.
if redis.call('GET', K_MATCHER_LEASE) == A_HOLDER then
  return redis.call('PEXPIRE', K_MATCHER_LEASE, A_LEASE_MS)
end
return 0
