-- The host heartbeat: one sorted set of the live hosts, each member scored
-- by when it expires, every date Redis's own (TIME), so hosts whose clocks
-- disagree count each other.
--
-- KEYS[1]  tg:{hosts}
-- ARGV[1]  this host's id
-- ARGV[2]  ms its entry lives
-- ARGV[3]  ms beyond that an entry may be dated and still be a host's
-- ARGV[4]  ms the set outlives its newest entry by
-- Reply: the live entries, this host's included.

-- Before Redis 5 a script that reads TIME and then writes must ask for
-- effects replication (later versions always do).
if redis.replicate_commands then
  redis.replicate_commands()
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local life = tonumber(ARGV[2])
local horizon = now + life + tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
redis.call('ZREMRANGEBYSCORE', KEYS[1], string.format('(%.0f', horizon), '+inf')
redis.call('ZADD', KEYS[1], string.format('%.0f', now + life), ARGV[1])
redis.call('PEXPIRE', KEYS[1], life + tonumber(ARGV[4]))
return redis.call('ZCARD', KEYS[1])
