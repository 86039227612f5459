-- Apply one processor batch atomically: every view update and the per-partition offsets together.
--
-- The batch is one or more groups, one per hash tag (core/keys.py): on Redis Cluster a call
-- holds a single group (one partition's symbols and fence: one slot); on one node a call may
-- hold every partition of a fetched batch.
-- KEYS: [1..G] the groups' offsets hashes, [G+1..2G] their symbol sets, [2G+1..3G] their
--       outboxes, then per symbol of the batch (in its order) three keys: price hash, 1m candle
--       zset, stats hash (core/keys.py apply_keys: the script builds none).
-- ARGV: [1] now (ms)  [2] candle history (ms)  [3] how far (ms) past now the history's horizon
--       may move  [4] pub/sub channel  [5] JSON batch:
--   {"groups":  [{"parts": [[partition, expected_stored_offset, last_offset], ...],
--                                                                   (strings, -1 = none)
--                 "out":   ["<outbox entry>", ...]   (optional: misrouted records, parked)}, ...],
--    "symbols": [{"g": its group (1-based; absent = 1),
--                 "s": symbol, "id": trade id of the latest trade,
--                 "p": [field, value, ...]   (the price hash, core/keys.py price_fields),
--                 "u": "<pub/sub update JSON>",
--                 "c": [[t, o, h, l, c, v, qv, n, ft, lt, (expected, merged)], ...],
--                                               (1m candle partials, see "Expectations")
--                 "n": trades, "v": base volume, "qv": quote volume   (only with several
--                  candles: with one, its own values are the batch's totals)
--                 "te": [trades, base, quote] expected totals, "tn": the same, merged
--                  (optional)}, ...]}
--
-- Fencing (compare-and-set per partition): the batch applies only if every partition's stored
-- offset (field `partition` of its group's offsets hash) is what the processor believes it is.
-- Otherwise (a zombie after a rebalance, a retry after a lost reply, a Redis that lost its data)
-- nothing is applied and {0, partition, stored, ...} comes back so the caller re-seeks. On
-- success returns {1, number_of_price_updates, candle_seeds, totals_seeds}. The same fence
-- guards the application of misrouted records at their symbols' home: field Q of the home's
-- offsets hash.
--
-- Expectations (processor/known.py): merging decimal strings was most of this script's cost,
-- so a processor that knows what a candle member or a symbol's totals hold now (it wrote them)
-- sends that stored spelling and the merged result it computed with exact integers. Where
-- Redis holds exactly the expected text, the merged one is written as is; anywhere else (an
-- expectation gone stale, or none) the partial is merged here as before, and what was written
-- comes back as a seed ({symbol index, member, ...} and {symbol index, trades, base, quote,
-- ...}) for the processor's next expectations. A wrong expectation costs a merge, never a
-- wrong value: the merged text is only written over the very text it was computed from.
--
-- Numbers that must stay exact travel as strings (Lua's numbers are doubles: exact below 2^53,
-- and cjson writes only 14 significant digits): trade ids are compared as digit strings and
-- written into the candle members verbatim; volumes and prices are decimal strings added and
-- compared digit by digit. Times (ms, below year 10000) and counts are exact as doubles.
local now, history, max_future = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local channel = ARGV[4]
local batch = cjson.decode(ARGV[5])
local groups = batch.groups
local ngroups = #groups
local first_symbol_key = 3 * ngroups + 1

-- a < b for non-negative integers written without leading zeros (any length)
local function id_less(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end

-- the candle member, fields as core/keys.py CANDLE_FIELDS
local function member(c)
  return '{"t":' .. string.format('%.0f', c[1]) .. ',"o":"' .. c[2] .. '","h":"' .. c[3]
    .. '","l":"' .. c[4] .. '","c":"' .. c[5] .. '","v":"' .. c[6] .. '","qv":"' .. c[7]
    .. '","n":' .. string.format('%.0f', c[8]) .. ',"ft":' .. c[9] .. ',"lt":' .. c[10] .. '}'
end

local function split(a)
  local i, f = string.match(a, '^(%d*)%.?(%d*)$')
  i = string.gsub(i, '^0+', '')
  f = string.gsub(f, '0+$', '')
  return i, f
end

local function pad_right(s, n) return s .. string.rep('0', n - #s) end

local function dec_cmp(a, b)
  local ai, af = split(a)
  local bi, bf = split(b)
  if #ai ~= #bi then return #ai < #bi and -1 or 1 end
  if ai ~= bi then return ai < bi and -1 or 1 end
  local n = math.max(#af, #bf)
  af, bf = pad_right(af, n), pad_right(bf, n)
  if af == bf then return 0 end
  return af < bf and -1 or 1
end

-- Exact sum of two plain decimal strings. The digit strings, aligned on the decimal point, are
-- added 14 digits at a time from the right: a chunk sum stays below 2^53, so Lua's doubles add it
-- exactly, and most volumes fit in one or two chunks (digit by digit, this was the script's
-- biggest cost).
local function dec_add(a, b)
  local ai, af = string.match(a, '^(%d*)%.?(%d*)$')
  local bi, bf = string.match(b, '^(%d*)%.?(%d*)$')
  local flen = math.max(#af, #bf)
  local x = ai .. af .. string.rep('0', flen - #af)
  local y = bi .. bf .. string.rep('0', flen - #bf)
  local n = math.max(#x, #y)
  local chunks, carry, k = {}, 0, 0  -- k digits done, from the right
  while k < n do
    local width = math.min(14, n - k)
    local s = (tonumber(string.sub(x, -(k + width), -(k + 1))) or 0)
      + (tonumber(string.sub(y, -(k + width), -(k + 1))) or 0) + carry
    local limit = 10 ^ width
    if s >= limit then carry, s = 1, s - limit else carry = 0 end
    chunks[#chunks + 1] = string.format('%0' .. width .. '.0f', s)
    k = k + width
  end
  if carry == 1 then chunks[#chunks + 1] = '1' end
  local ordered = {}
  for j = #chunks, 1, -1 do ordered[#ordered + 1] = chunks[j] end
  local all = table.concat(ordered)
  local int = string.match(string.sub(all, 1, #all - flen), '^0*(%d-)$')
  local frac = string.match(string.sub(all, #all - flen + 1), '^(%d-)0*$')
  if int == '' then int = '0' end
  if frac == '' then return int end
  return int .. '.' .. frac
end

-- 1. fencing
local conflicts = {0}
for g, group in ipairs(groups) do
  for _, part in ipairs(group.parts) do
    local stored = redis.call('HGET', KEYS[g], part[1]) or '-1'
    if stored ~= part[2] then
      conflicts[#conflicts + 1] = part[1]
      conflicts[#conflicts + 1] = stored
    end
  end
end
if #conflicts > 1 then
  return conflicts
end

-- 2. views
local published, candle_seeds, totals_seeds = {}, {}, {}
for i, sym in ipairs(batch.symbols) do
  local base = first_symbol_key + 3 * (i - 1)
  local price_key, candles_key, stats_key = KEYS[base], KEYS[base + 1], KEYS[base + 2]
  -- the batch's totals: given, or (one candle) that candle's own, read before it is merged
  local n, v, qv = sym.n, sym.v, sym.qv
  if not n then n, v, qv = sym.c[1][8], sym.c[1][6], sym.c[1][7] end
  -- latest trade, monotonic by trade id: an older trade (late backfill, replay) never wins
  local current = redis.call('HGET', price_key, 'trade_id')
  if (not current) or id_less(current, sym.id) then
    redis.call('HSET', price_key, unpack(sym.p))
    if not current then redis.call('SADD', KEYS[ngroups + (sym.g or 1)], sym.s) end  -- 1st price
    published[#published + 1] = sym.u
  end

  -- 1-minute candles: merge each partial into the stored candle of its minute (as
  -- core/views.py Candle.merge does: open and close by trade id)
  local added = false
  for _, c in ipairs(sym.c) do
    -- the expected member removed (so it was there, and nothing else at its minute): its merge
    if c[11] and redis.call('ZREM', candles_key, c[11]) == 1 then
      redis.call('ZADD', candles_key, c[1], c[12])
    else
      local stored = redis.call('ZRANGEBYSCORE', candles_key, c[1], c[1])
      if stored[1] then
        local old = cjson.decode(stored[1])
        local old_ft = string.match(stored[1], '"ft":(%d+)')
        local old_lt = string.match(stored[1], '"lt":(%d+)')
        if not id_less(c[9], old_ft) then c[2], c[9] = old.o, old_ft end
        if id_less(c[10], old_lt) then c[5], c[10] = old.c, old_lt end
        if dec_cmp(old.h, c[3]) > 0 then c[3] = old.h end
        if dec_cmp(old.l, c[4]) < 0 then c[4] = old.l end
        c[6], c[7], c[8] = dec_add(old.v, c[6]), dec_add(old.qv, c[7]), old.n + c[8]
        redis.call('ZREMRANGEBYSCORE', candles_key, c[1], c[1])
      else
        added = true
      end
      local written = member(c)
      redis.call('ZADD', candles_key, c[1], written)
      candle_seeds[#candle_seeds + 1] = i
      candle_seeds[#candle_seeds + 1] = written
    end
  end
  if added then  -- only a new minute can push the oldest one out of the history
    local newest = redis.call('ZREVRANGE', candles_key, 0, 0, 'WITHSCORES')
    -- The horizon follows the newest candle, but never past the clock: no record, however far
    -- in the future its time, can push the real candles out of the history.
    local horizon = math.min(tonumber(newest[2]), tonumber(now) + max_future)
    redis.call('ZREMRANGEBYSCORE', candles_key, '-inf',
      '(' .. string.format('%.0f', horizon - history + 60000))
  end

  -- running totals since the start of the topic (deliberately not idempotent)
  local te, merged = sym.te, false
  if te then
    local t = redis.call('HMGET', stats_key, 'trades', 'base_volume', 'quote_volume')
    if t[1] == te[1] and t[2] == te[2] and t[3] == te[3] then
      redis.call('HSET', stats_key, 'trades', sym.tn[1], 'base_volume', sym.tn[2],
        'quote_volume', sym.tn[3])
      merged = true
    end
  end
  if not merged then
    local totals = redis.call('HMGET', stats_key, 'base_volume', 'quote_volume')
    local trades = redis.call('HINCRBY', stats_key, 'trades', n)
    local base, quote = dec_add(totals[1] or '0', v), dec_add(totals[2] or '0', qv)
    redis.call('HSET', stats_key, 'base_volume', base, 'quote_volume', quote)
    totals_seeds[#totals_seeds + 1] = i
    totals_seeds[#totals_seeds + 1] = string.format('%.0f', trades)
    totals_seeds[#totals_seeds + 1] = base
    totals_seeds[#totals_seeds + 1] = quote
  end
end

-- 3. bookkeeping, in the same atomic step as the views
for g, group in ipairs(groups) do
  for _, part in ipairs(group.parts) do
    redis.call('HSET', KEYS[g], part[1], part[3])
  end
  if group.out and #group.out > 0 then
    redis.call('RPUSH', KEYS[2 * ngroups + g], unpack(group.out))
  end
end
if #published > 0 then
  redis.call('PUBLISH', channel, '[' .. table.concat(published, ',') .. ']')
end
return {1, #published, candle_seeds, totals_seeds}
