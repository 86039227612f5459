-- Apply one batch of raw.depth atomically: every book change and the per-partition offsets together.
--
-- KEYS: [1] the depth topic's offsets hash, then per symbol of the batch (in its order) three
--       keys: book hash, bids zset, asks zset (core/keys.py book_apply_keys: the script builds none).
-- ARGV: [1] pub/sub channel  [2] JSON batch (processor/books.py BookBatch.script_call):
--   {"parts":   [[partition, expected_stored_offset, last_offset], ...],     (strings, -1 = none)
--    "symbols": [{"h": [field, value, ...]   (the book hash after the batch),
--                 "x": [field, ...]           (hash fields it no longer has),
--                 "u": "<pub/sub update JSON>",
--                 "r": 1                      (only after a snapshot: both sets are rewritten),
--                 "br"/"ar": [[member, ...], ...]   (bid/ask members to remove, in chunks),
--                 "ba"/"aa": [[member, ...], ...]   (bid/ask members to add, in chunks)}, ...]}
--
-- The chain rule (stale, gap, first diff after a snapshot, crossed book) was run by the processor
-- on its copy of the books, which equals what Redis holds whenever the fence below passes: each
-- member is "<level key> <price> <qty>" (core/keys.py level_member) with score 0, and the
-- members removed are exactly the stored ones of the changed levels.
--
-- Fencing (compare-and-set per partition): the batch applies only if every partition's stored
-- offset is what the processor believes it is; otherwise nothing is applied and
-- {0, partition, stored, ...} comes back so the caller reloads its copies and re-seeks.
-- On success returns {1, number_of_books_written}.
local offsets_key, channel = KEYS[1], ARGV[1]
local batch = cjson.decode(ARGV[2])

-- 1. fencing
local conflicts = {0}
for _, part in ipairs(batch.parts) do
  local stored = redis.call('HGET', offsets_key, part[1]) or '-1'
  if stored ~= part[2] then
    conflicts[#conflicts + 1] = part[1]
    conflicts[#conflicts + 1] = stored
  end
end
if #conflicts > 1 then
  return conflicts
end

local function zrem(key, chunks)
  for _, chunk in ipairs(chunks) do
    redis.call('ZREM', key, unpack(chunk))
  end
end

local function zadd(key, chunks)
  for _, chunk in ipairs(chunks) do
    local args = {}
    for j, m in ipairs(chunk) do
      args[2 * j - 1] = 0
      args[2 * j] = m
    end
    redis.call('ZADD', key, unpack(args))
  end
end

-- 2. books
local published = {}
for i, sym in ipairs(batch.symbols) do
  local book_key, bids_key, asks_key = KEYS[3 * i - 1], KEYS[3 * i], KEYS[3 * i + 1]
  if sym.r then
    redis.call('DEL', bids_key, asks_key)
  else
    zrem(bids_key, sym.br)
    zrem(asks_key, sym.ar)
  end
  zadd(bids_key, sym.ba)
  zadd(asks_key, sym.aa)
  if #sym.x > 0 then
    redis.call('HDEL', book_key, unpack(sym.x))
  end
  redis.call('HSET', book_key, unpack(sym.h))
  published[#published + 1] = sym.u
end

-- 3. bookkeeping, in the same atomic step as the books
for _, part in ipairs(batch.parts) do
  redis.call('HSET', offsets_key, part[1], part[3])
end
if #published > 0 then
  redis.call('PUBLISH', channel, '[' .. table.concat(published, ',') .. ']')
end
return {1, #published}
