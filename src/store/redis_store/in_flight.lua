-- Requests in flight across hosts: one sorted set per (account, model),
-- member an admission (the host's id and its ledger entry), score when the
-- member expires unless its host renews it, every date Redis's own (TIME),
-- so hosts whose clocks disagree share the set.
--
-- KEYS[1]  tg:{tag}:f   (tag: the key's in-flight tag, so one Cluster slot)
-- ARGV[1]  operation: a (admit), r (release), n (renew), c (count)
-- ARGV[2]  ms a member lives unless renewed (a, n)
-- ARGV[3]  a: the limit N, then the member; r: the member; n: the members
--
-- Reply: a: { admitted (0|1), replayed (0|1), live members };
--        r, n, c: live members.

if redis.replicate_commands then
  redis.replicate_commands()
end

local key = KEYS[1]
local op = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function ms(n)
  return string.format('%.0f', n)
end

if op == 'c' then
  return redis.call('ZCOUNT', key, '(' .. ms(now), '+inf')
end

-- Members of hosts that stopped renewing them (dead, or cut off) go first.
redis.call('ZREMRANGEBYSCORE', key, '-inf', ms(now))

if op == 'r' then
  redis.call('ZREM', key, ARGV[2])
  return redis.call('ZCARD', key)
end

local life = tonumber(ARGV[2])
local expiry = ms(now + life)
local n
if op == 'a' then
  local max = tonumber(ARGV[3])
  local member = ARGV[4]
  local admitted, replayed = 0, 0
  if redis.call('ZSCORE', key, member) then
    -- A retry of an admission whose reply was lost: counted once.
    admitted, replayed = 1, 1
    redis.call('ZADD', key, expiry, member)
  elseif redis.call('ZCARD', key) < max then
    admitted = 1
    redis.call('ZADD', key, expiry, member)
  end
  n = redis.call('ZCARD', key)
  if n > 0 then
    redis.call('PEXPIRE', key, life)
  end
  return { admitted, replayed, n }
elseif op == 'n' then
  for i = 3, #ARGV do
    redis.call('ZADD', key, expiry, ARGV[i])
  end
  n = redis.call('ZCARD', key)
  if n > 0 then
    -- The set outlives its newest member, so nothing is left behind.
    redis.call('PEXPIRE', key, life)
  end
  return n
end
return redis.error_reply('ERR tollgate: unknown in-flight operation ' .. tostring(op))
