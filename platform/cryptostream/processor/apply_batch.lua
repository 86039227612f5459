-- Apply one processor batch atomically: the view updates and the per-partition offsets together.
--
-- ARGV[1] offsets hash key     ARGV[2] now (ms, string)     ARGV[3] JSON batch:
--   {"parts":  [[partition, first_offset, last_offset], ...],          (strings)
--    "prices": [[symbol, price, quantity, trade_id, trade_time, event_time, ingest_time_us,
--                update_json], ...]}                                   (strings)
--
-- Fencing: if any partition's stored offset is >= the batch's first offset for it, part of the
-- batch was already applied (a zombie after a rebalance, a retry after a lost reply). Nothing is
-- applied and {0, partition, stored, ...} is returned so the caller re-seeks past what is stored.
-- Otherwise returns {1, number_of_price_updates}.
--
-- Every number travels as a string: Lua's number-to-string conversion keeps only 14 significant
-- digits, which would corrupt microsecond timestamps.
local offsets_key = ARGV[1]
local now = ARGV[2]
local batch = cjson.decode(ARGV[3])

local conflicts = {0}
for _, part in ipairs(batch.parts) do
  local stored = redis.call('HGET', offsets_key, part[1])
  if stored and tonumber(stored) >= tonumber(part[2]) then
    conflicts[#conflicts + 1] = part[1]
    conflicts[#conflicts + 1] = stored
  end
end
if #conflicts > 1 then
  return conflicts
end

local published = {}
for _, t in ipairs(batch.prices) do
  local key = 'price:' .. t[1]
  local current = redis.call('HGET', key, 'trade_id')
  -- Monotonic by trade id: an older trade (a replay, a late backfill) never wins.
  if (not current) or tonumber(current) < tonumber(t[4]) then
    redis.call('HSET', key, 'price', t[2], 'quantity', t[3], 'trade_id', t[4],
      'trade_time', t[5], 'event_time', t[6], 'ingest_time_us', t[7], 'update_time', now)
    redis.call('SADD', 'symbols', t[1])
    published[#published + 1] = t[8]
  end
end

for _, part in ipairs(batch.parts) do
  redis.call('HSET', offsets_key, part[1], part[3])
end
if #published > 0 then
  redis.call('PUBLISH', 'updates:price', '[' .. table.concat(published, ',') .. ']')
end
return {1, #published}
