-- wrk script for bench_query.py.
--   GET /price/{symbol} over SYMBOLS_N symbols (SYM0000USDT..), Zipf-distributed: rank k (1-based)
--   is requested with probability proportional to 1 / k^ZIPF_S (default 1.0), so a few symbols
--   are hot and a long tail is cold, as on a real exchange. With WRK_PATH set, every request
--   asks that one path instead (the empty route, for the same server's ceiling).
-- Prints one JSON summary line with latency percentiles (microseconds) at the end.
local n = tonumber(os.getenv("SYMBOLS_N") or "1000")
local s = tonumber(os.getenv("ZIPF_S") or "1.0")
local fixed = os.getenv("WRK_PATH")
local paths = {}
local cdf = {}
local total = 0
for k = 1, n do
  paths[k] = string.format("/price/SYM%04dUSDT", k - 1)
  total = total + 1 / (k ^ s)
  cdf[k] = total
end
for k = 1, n do
  cdf[k] = cdf[k] / total
end
math.randomseed(os.time())

local function zipf_rank()
  local u = math.random()
  local lo, hi = 1, n
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo
end

local fixed_request = fixed and wrk.format("GET", fixed)

request = function()
  if fixed_request then
    return fixed_request
  end
  return wrk.format("GET", paths[zipf_rank()])
end

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"non_2xx":%d,' ..
    '"socket_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, errors.status,
    errors.connect + errors.read + errors.write, errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
