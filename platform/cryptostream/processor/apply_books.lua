-- Apply one batch of raw.depth atomically: every book change and the per-partition offsets together.
--
-- KEYS: [1] the depth topic's offsets hash, then per symbol of the batch (in its order) three
--       keys: book hash, bids zset, asks zset (core/keys.py book_apply_keys: the script builds none).
-- ARGV (processor/books.py BookBatch.script_call; flat, so nothing is decoded here and every
-- command takes its arguments straight from ARGV with unpack):
--   [1] pub/sub channel, [2] P = number of partitions, then P triples
--       partition, expected_stored_offset, last_offset                    (-1 = none)
--   then per symbol, in KEYS order, seven counts
--       r (1 after a snapshot: both sets are rewritten, else 0), nh, nx, nbr, nar, nba, naa
--   and then: the pub/sub update JSON, nh items (the book hash after the batch, field value ...),
--   nx items (hash fields it no longer has), nbr bid members to remove, nar ask members to
--   remove, nba items of bids to add ("0" member "0" member ...), naa items of asks to add.
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
local nparts = tonumber(ARGV[2])
local CHUNK = 4000 -- ARGV items per call (unpack's stack limit is 8000); even: ZADD pairs stay whole

-- 1. fencing
local conflicts = {0}
for p = 0, nparts - 1 do
  local partition, expected = ARGV[3 + 3 * p], ARGV[4 + 3 * p]
  local stored = redis.call('HGET', offsets_key, partition) or '-1'
  if stored ~= expected then
    conflicts[#conflicts + 1] = partition
    conflicts[#conflicts + 1] = stored
  end
end
if #conflicts > 1 then
  return conflicts
end

-- ARGV[first .. first + n - 1] as the arguments of `command key ...`, in chunks
local function each(command, key, first, n)
  local last = first + n - 1
  while first <= last do
    local stop = math.min(first + CHUNK - 1, last)
    redis.call(command, key, unpack(ARGV, first, stop))
    first = stop + 1
  end
end

-- 2. books
local published = {}
local i = 3 + 3 * nparts
for s = 1, (#KEYS - 1) / 3 do
  local book_key, bids_key, asks_key = KEYS[3 * s - 1], KEYS[3 * s], KEYS[3 * s + 1]
  local replaced = ARGV[i] == '1'
  local nh, nx = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  local nbr, nar = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
  local nba, naa = tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6])
  published[#published + 1] = ARGV[i + 7]
  i = i + 8
  local hash_at = i
  local gone_at = hash_at + nh
  i = gone_at + nx
  if replaced then
    redis.call('DEL', bids_key, asks_key)
  end
  each('ZREM', bids_key, i, nbr)
  i = i + nbr
  each('ZREM', asks_key, i, nar)
  i = i + nar
  each('ZADD', bids_key, i, nba)
  i = i + nba
  each('ZADD', asks_key, i, naa)
  i = i + naa
  if nx > 0 then
    redis.call('HDEL', book_key, unpack(ARGV, gone_at, gone_at + nx - 1))
  end
  redis.call('HSET', book_key, unpack(ARGV, hash_at, hash_at + nh - 1))
end

-- 3. bookkeeping, in the same atomic step as the books
for p = 0, nparts - 1 do
  redis.call('HSET', offsets_key, ARGV[3 + 3 * p], ARGV[5 + 3 * p])
end
if #published > 0 then
  redis.call('PUBLISH', channel, '[' .. table.concat(published, ',') .. ']')
end
return {1, #published}
