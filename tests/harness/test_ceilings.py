"""Parsers of Kafka's and Redis's own benchmark tools (output captured from real runs)."""

from __future__ import annotations

import pytest

from cryptostream_lab.harness import ceilings

PRODUCER = """\
249761 records sent, 49932.2 records/sec (10.71 MB/sec), 1520.3 ms avg latency, 2406.0 ms max latency.
500000 records sent, 196773.0 records/sec (42.22 MB/sec), 276.46 ms avg latency, 681.00 ms max latency, 181 ms 50th, 635 ms 95th, 661 ms 99th, 680 ms 99.9th.
"""

CONSUMER = """\
WARNING: some log line, with, commas, but, no, header
start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
2026-11-25 11:33:02:101, 2026-11-25 11:33:03:600, 107.2884, 71.5733, 500000, 333555.7038, 853, 646, 166.0811, 773993.8080
"""

REDIS = """\
"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
"SET","71890.73","0.143","0.040","0.135","0.223","0.351","1.191"
"GET","80385.85","0.124","0.032","0.119","0.183","0.263","0.783"
"HSET","75414.78","0.135","0.040","0.127","0.207","0.319","0.967"
"""


def test_producer_summary_is_the_last_line() -> None:
    result = ceilings.parse_producer_perf(PRODUCER)
    assert result["records"] == 500000
    assert result["records_per_s"] == pytest.approx(196773.0)
    assert result["mb_per_s"] == pytest.approx(42.22)
    assert result["p99_ms"] == 661 and result["p99.9_ms"] == 680


def test_consumer_header_and_values() -> None:
    result = ceilings.parse_consumer_perf(CONSUMER)
    assert result["records"] == 500000
    assert result["records_per_s"] == pytest.approx(333555.7038)
    assert result["fetch_records_per_s"] == pytest.approx(773993.808)


def test_redis_benchmark_csv() -> None:
    assert ceilings.parse_redis_benchmark(REDIS) == {
        "SET": pytest.approx(71890.73),
        "GET": pytest.approx(80385.85),
        "HSET": pytest.approx(75414.78),
    }


@pytest.mark.parametrize(
    "parse",
    [
        ceilings.parse_producer_perf,
        ceilings.parse_consumer_perf,
        ceilings.parse_redis_benchmark,
    ],
)
def test_unexpected_output_is_an_error(parse: object) -> None:
    with pytest.raises(ValueError, match="output"):
        parse("Exception in thread main: something broke")  # type: ignore[operator]


def test_ceiling_records_are_trade_sized() -> None:
    assert 180 < ceilings.trade_value_size() < 300
