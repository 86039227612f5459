"""Prometheus metrics of the query API.

Each app owns its registry (tests build many apps in one process). With several uvicorn workers,
``csp query`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before the workers start;
prometheus-client then keeps every worker's values in shared files and any worker's
``/metrics`` answers with the sum over all of them.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.5, 1.0)


class QueryMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "csp_query_requests",
            "HTTP requests served, by route template and status code",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "csp_query_request_seconds",
            "Time from request to last response byte handed to the server, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.redis_errors = Counter(
            "csp_query_redis_unavailable",
            "Requests answered 503 because Redis did not answer",
            registry=self.registry,
        )
        self.stream_clients = Gauge(
            "csp_query_stream_clients",
            "Connected live-push clients",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.stream_updates = Counter(
            "csp_query_stream_updates_received",
            "Price updates received from the Redis pub/sub channel",
            registry=self.registry,
        )
        self.stream_book_updates = Counter(
            "csp_query_stream_book_updates_received",
            "Top-of-book updates received from the Redis pub/sub channel",
            registry=self.registry,
        )
        self.stream_coalesced = Counter(
            "csp_query_stream_updates_coalesced",
            "Updates replaced by a newer one for the same symbol before a slow client took them",
            registry=self.registry,
        )
        self.stream_pending = Gauge(
            "csp_query_stream_pending_updates",
            "Updates waiting for live clients (at most one per client and subscribed symbol)",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.stream_dropped_clients = Counter(
            "csp_query_stream_clients_dropped",
            "Live-push clients disconnected because a send blocked too long",
            registry=self.registry,
        )
        self.pubsub_reconnects = Counter(
            "csp_query_pubsub_reconnects",
            "Times the shared pub/sub subscription was re-established",
            registry=self.registry,
        )
        self.connections_refused = Counter(
            "csp_query_connections_refused",
            "Connections closed before a request: header too large (431) or header timeout",
            ["reason"],
            registry=self.registry,
        )
        self.price_route = self.latency.labels("/price/{symbol}")
        self._price_status = {
            status: self.requests.labels("/price/{symbol}", str(status))
            for status in (200, 400, 404, 500, 503)
        }

        self._health_ok = self.requests.labels("/health", "200")
        self.health_route = self.latency.labels("/health")

    def health_served(self, seconds: float) -> None:
        self._health_ok.inc()
        self.health_route.observe(seconds)

    def price_served(self, status: int, seconds: float) -> None:
        """Hot path: pre-bound children, no label lookup per request."""
        self._price_status[status].inc()
        self.price_route.observe(seconds)

    def connection_refused(self, reason: str) -> None:
        self.connections_refused.labels(reason).inc()

    def exposition(self) -> bytes:
        if os.environ.get(MULTIPROC_ENV):  # several workers: the sum over all of them
            merged = CollectorRegistry()
            MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
            return generate_latest(merged)
        return generate_latest(self.registry)
