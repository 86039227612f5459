"""Prometheus metrics of an archive sink, read from its plain counters at scrape time (the hot
path pays nothing per record).

Exported names (all prefixed ``csp_archive_``):

- ``records_total`` (consumed), ``archived_total`` (rows written), ``files_total``,
  ``flushes_total``, ``undecodable_total`` (records that are not schema-v1 trades or
  depth records: the processor dead-letters the same records), ``stale_total`` (records of a range already
  archived, read again after a rebalance), ``unrepresentable_total`` (records with a decimal of
  more than 38 significant digits, which no decimal128 holds: not archived, logged with their
  offsets) — counters, summed over the sink's topics (trades, and depth with
  ``CSP_ARCHIVE_DEPTH``)
- ``buffered`` — gauge: trades waiting for their flush
- ``flush_seconds`` — histogram: one durable flush (files, marker, renames)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "csp_archive_"
COUNTERS = ("records", "archived", "files", "flushes", "undecodable", "stale", "unrepresentable")


class _Collector(Collector):
    def __init__(self, counters: Callable[[], Mapping[str, int]], buffered: Callable[[], int]):
        self.counters = counters
        self.buffered = buffered

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        values = self.counters()
        for name in COUNTERS:
            yield CounterMetricFamily(PREFIX + name, f"{name} since start", value=values[name])
        yield GaugeMetricFamily(
            PREFIX + "buffered", "trades waiting for their flush", value=self.buffered()
        )


class ArchiveMetrics:
    def __init__(self, counters: Callable[[], Mapping[str, int]], buffered: Callable[[], int]):
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(counters, buffered))
        self.flush_seconds = Histogram(
            PREFIX + "flush_seconds",
            "one durable flush",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
