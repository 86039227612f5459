-- wrk script for bench_query.py: GET /price/{symbol} over SYMBOLS_N symbols, uniformly at random
-- (SYM0000USDT..), and a JSON summary with latency percentiles (microseconds) at the end.
local n = tonumber(os.getenv("SYMBOLS_N") or "1000")
local paths = {}
for i = 0, n - 1 do
  paths[i + 1] = string.format("/price/SYM%04dUSDT", i)
end
math.randomseed(os.time())

request = function()
  return wrk.format("GET", paths[math.random(n)])
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
