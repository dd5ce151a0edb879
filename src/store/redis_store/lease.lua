-- Tollgate's global quota store: one script, four operations, both windows
-- of one (account, model) in one atomic step. Redis runs a script to the
-- end before any other command, so nothing can come between the read of
-- the counts and their update: that is what makes a grant all or nothing.
--
-- KEYS[1]  tg:{tag}:m:<epoch minute>   the minute window's count
-- KEYS[2]  tg:{tag}:d:<epoch day>      the day window's count
-- KEYS[3]  (optional) the operation's record, tg:{tag}:<g|r|p>:<id>: its
--          presence means "already done", so a retry does nothing twice
-- ARGV[1]  operation: g (grant), r (give back), p (push), c (counts)
-- ARGV[2]  epoch ms at which the minute window ends
-- ARGV[3]  epoch ms at which the day window ends
-- ARGV[4]  grace ms kept after the minute's end
-- ARGV[5]  grace ms kept after the day's end
-- ARGV[6]  ms a grant's record is kept (grant with an id only)
-- ARGV[7..] g: want, min, rpm, rpd[, hosts]    r, p: minute units, day units
--          (hosts: a grant is at most max(min, floor(room / hosts)), so a
--          lease is sized by the room as it is now, not as a host last saw it)
--
-- Reply: { replayed (0|1), a, b, minute count, day count, minute PTTL,
-- day PTTL }; a, b = units granted, 0 (g) / returned (r) / added (p) per
-- window. PTTL is Redis's: -2 no key, -1 no expiry.

-- Before Redis 5 a script that reads TIME and then writes must ask for
-- effects replication; later versions always do it and keep the call.
if redis.replicate_commands then
  redis.replicate_commands()
end

local op = ARGV[1]
local minute_end = tonumber(ARGV[2])
local day_end = tonumber(ARGV[3])
local minute_grace = tonumber(ARGV[4])
local day_grace = tonumber(ARGV[5])
local grant_record_ms = tonumber(ARGV[6])
local record = KEYS[3]

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function count(key)
  local v = redis.call('GET', key)
  if not v then
    return 0
  end
  local n = tonumber(v)
  if not n or n < 0 or n ~= math.floor(n) then
    error({ err = 'ERR tollgate: ' .. key .. ' holds no count' })
  end
  return n
end

-- Window end plus grace, and never sooner than now plus grace: a host whose
-- clock lags Redis's still finds its counts (held, never lost early).
local function expiry(window_end, grace)
  return math.max(window_end, now) + grace
end

local function charge(key, units, window_end, grace)
  redis.call('INCRBY', key, units)
  redis.call('PEXPIREAT', key, string.format('%.0f', expiry(window_end, grace)))
end

local function reply(replayed, a, b)
  return { replayed, a, b, count(KEYS[1]), count(KEYS[2]),
           redis.call('PTTL', KEYS[1]), redis.call('PTTL', KEYS[2]) }
end

if op == 'c' then
  return reply(0, 0, 0)
end

if op == 'g' then
  if record then
    local done = redis.call('GET', record)
    if done then
      return reply(1, tonumber(done) or 0, 0)
    end
  end
  local want = tonumber(ARGV[7])
  local min = tonumber(ARGV[8])
  local rpm = tonumber(ARGV[9])
  local rpd = tonumber(ARGV[10])
  local hosts = tonumber(ARGV[11]) or 1
  local room = math.min(rpm - count(KEYS[1]), rpd - count(KEYS[2]))
  local n = math.min(want, math.max(min, math.floor(room / hosts)), room)
  if n < min or n < 0 then
    n = 0
  end
  if n > 0 then
    charge(KEYS[1], n, minute_end, minute_grace)
    charge(KEYS[2], n, day_end, day_grace)
  end
  if record then
    redis.call('SET', record, n, 'PX', grant_record_ms)
  end
  return reply(0, n, 0)
end

if op == 'r' or op == 'p' then
  if redis.call('EXISTS', record) == 1 then
    return reply(1, 0, 0)
  end
  local units = { tonumber(ARGV[7]), tonumber(ARGV[8]) }
  local ends = { minute_end, day_end }
  local graces = { minute_grace, day_grace }
  local done = { 0, 0 }
  -- The record lives as long as the latest count it touched could: a retry
  -- that comes after it is gone finds its window closed (give back) or
  -- counts nobody reads any more (push).
  local keep = now + minute_grace
  for i = 1, 2 do
    local u = units[i]
    if u > 0 then
      keep = math.max(keep, expiry(ends[i], graces[i]))
      if op == 'p' then
        charge(KEYS[i], u, ends[i], graces[i])
        done[i] = u
      elseif now < ends[i] and redis.call('EXISTS', KEYS[i]) == 1 then
        -- Only while the window is open, and never below zero; DECRBY
        -- keeps the key's expiry.
        local back = math.min(u, count(KEYS[i]))
        if back > 0 then
          redis.call('DECRBY', KEYS[i], back)
        end
        done[i] = back
      end
    end
  end
  redis.call('SET', record, 1, 'PX', string.format('%.0f', keep - now))
  return reply(0, done[1], done[2])
end

error({ err = 'ERR tollgate: unknown operation' })
