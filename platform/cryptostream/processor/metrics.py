"""Prometheus metrics of a processor. Counters are read from plain ints at scrape time, so the
hot path pays nothing per record; histograms are observed once per batch or per visible update.

Exported names (all prefixed ``csp_processor_``):

- ``records_total``, ``batches_total``, ``poison_total`` (sent to the DLQ), ``conflicts_total``
  (batches refused by the offset compare-and-set), ``rebalances_total``, ``dlq_failed_total``
  (dead letters the DLQ producer could not write), ``kafka_errors_total`` (DLQ producer client
  errors), ``misrouted_total`` (records on another partition than their symbol's home, applied
  there through the outbox), ``misrouted_reapplied_total`` (of those, applied again after their
  home's Redis master lost them in a failover) — counters
- ``consumer_lag{partition}`` — gauge: high watermark minus the next offset to apply
- ``batch_size`` — histogram of records per applied batch
- ``redis_apply_seconds`` — histogram of the Lua apply round trip
- ``event_to_visible_seconds``, ``ingest_to_visible_seconds`` — histograms, per visible update

With ``CSP_PROCESSOR_BOOKS`` on, the same set again as ``csp_processor_books_*`` for raw.depth
(on the same port), with the counters ``snapshots``, ``diffs`` (applied), ``stale_diffs`` (already
in the book), ``unsynced`` (diffs skipped while a book waits for a snapshot), ``breaks`` (gaps
and crossed books; each also logged, rate-limited, and written to the book's ``reason``) and
``misrouted`` (depth records on another partition than their symbol's home: dead-lettered).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "csp_processor_"
COUNTERS = (
    "records",
    "batches",
    "poison",
    "conflicts",
    "rebalances",
    "dlq_failed",
    "kafka_errors",
    "misrouted",
    "misrouted_reapplied",
)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _StatsCollector(Collector):
    def __init__(
        self,
        stats: Mapping[str, int],
        lag: Callable[[], Mapping[int, int]],
        prefix: str,
        counters: tuple[str, ...],
    ) -> None:
        self.stats = stats
        self.lag = lag
        self.prefix = prefix
        self.counters = counters

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        prefix = self.prefix
        for name in self.counters:
            yield CounterMetricFamily(prefix + name, f"{name} since start", value=self.stats[name])
        gauge = GaugeMetricFamily(
            prefix + "consumer_lag", "records not yet applied, per partition", labels=["partition"]
        )
        for partition, lag in sorted(self.lag().items()):
            gauge.add_metric([str(partition)], lag)
        yield gauge


class _Joined(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


class ProcessorMetrics:
    """``prefix``/``counters``: the books processor exports the same set as
    ``csp_processor_books_*`` with its own counters (processor/books_service.py)."""

    def __init__(
        self,
        stats: Mapping[str, int],
        lag: Callable[[], Mapping[int, int]],
        prefix: str = PREFIX,
        counters: tuple[str, ...] = COUNTERS,
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StatsCollector(stats, lag, prefix, counters))
        self.batch_size = Histogram(
            prefix + "batch_size",
            "records per applied batch",
            registry=self.registry,
            buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000),
        )
        self.redis_apply = Histogram(
            prefix + "redis_apply_seconds",
            "Lua apply round trip",
            registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        )
        self.event_to_visible = Histogram(
            prefix + "event_to_visible_seconds",
            "exchange event time to visible in Redis",
            registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        )
        self.ingest_to_visible = Histogram(
            prefix + "ingest_to_visible_seconds",
            "ingest receive time to visible in Redis",
            registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        )

    def include(self, other: ProcessorMetrics) -> None:
        """Export ``other``'s metrics too (one port for the trades and books processors)."""
        self.registry.register(_Joined(other.registry))

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
