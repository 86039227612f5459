"""Prometheus metrics of a processor. Counters are read from plain ints at scrape time, so the
hot path pays nothing per record; histograms are observed once per batch or per visible update.

Exported names (all prefixed ``csp_processor_``):

- ``records_total``, ``batches_total``, ``poison_total`` (sent to the DLQ), ``conflicts_total``
  (batches refused by the offset compare-and-set), ``rebalances_total``, ``dlq_failed_total``
  (dead letters the DLQ producer could not write), ``kafka_errors_total`` (DLQ producer client
  errors) — counters
- ``consumer_lag{partition}`` — gauge: high watermark minus the next offset to apply
- ``batch_size`` — histogram of records per applied batch
- ``redis_apply_seconds`` — histogram of the Lua apply round trip
- ``event_to_visible_seconds``, ``ingest_to_visible_seconds`` — histograms, per visible update
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "csp_processor_"
COUNTERS = ("records", "batches", "poison", "conflicts", "rebalances", "dlq_failed", "kafka_errors")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _StatsCollector(Collector):
    def __init__(self, stats: Mapping[str, int], lag: Callable[[], Mapping[int, int]]) -> None:
        self.stats = stats
        self.lag = lag

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        for name in COUNTERS:
            yield CounterMetricFamily(PREFIX + name, f"{name} since start", value=self.stats[name])
        gauge = GaugeMetricFamily(
            PREFIX + "consumer_lag", "records not yet applied, per partition", labels=["partition"]
        )
        for partition, lag in sorted(self.lag().items()):
            gauge.add_metric([str(partition)], lag)
        yield gauge


class ProcessorMetrics:
    def __init__(self, stats: Mapping[str, int], lag: Callable[[], Mapping[int, int]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StatsCollector(stats, lag))
        self.batch_size = Histogram(
            PREFIX + "batch_size", "records per applied batch", registry=self.registry,
            buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000),
        )  # fmt: skip
        self.redis_apply = Histogram(
            PREFIX + "redis_apply_seconds", "Lua apply round trip", registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        self.event_to_visible = Histogram(
            PREFIX + "event_to_visible_seconds", "exchange event time to visible in Redis",
            registry=self.registry, buckets=_LATENCY_BUCKETS,
        )  # fmt: skip
        self.ingest_to_visible = Histogram(
            PREFIX + "ingest_to_visible_seconds", "ingest receive time to visible in Redis",
            registry=self.registry, buckets=_LATENCY_BUCKETS,
        )  # fmt: skip

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
