"""How to pace connection attempts (sans-I/O): backoff with jitter, the attempt limit.

The connection plans (Binance's stream names, URLs and limits) are in
:mod:`cryptostream.binance.streams`, re-exported here for the old names.
"""

from __future__ import annotations

import random

from cryptostream.binance.streams import (
    MAX_STREAMS_PER_CONNECTION,
    SUBSCRIBE_INTERVAL_S,
    ConnectionPlan,
    combined_stream_urls,
    plan_connections,
    stream_name,
    subscribe_message,
)

__all__ = [
    "MAX_STREAMS_PER_CONNECTION",
    "SUBSCRIBE_INTERVAL_S",
    "AttemptLimiter",
    "Backoff",
    "ConnectionPlan",
    "combined_stream_urls",
    "plan_connections",
    "stream_name",
    "subscribe_message",
]


class Backoff:
    """Exponential reconnect delays with jitter: ``min(cap, base * 2**n)`` scaled by a random
    factor in [0.5, 1.0]. ``reset`` after a connection proved healthy."""

    def __init__(
        self, base_s: float = 0.5, cap_s: float = 30.0, rand: random.Random | None = None
    ) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.attempt = 0
        self._random = rand if rand is not None else random.Random()

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * (2.0 ** min(self.attempt, 30)))
        self.attempt += 1
        return ceiling * (0.5 + 0.5 * self._random.random())

    def reset(self) -> None:
        self.attempt = 0


class AttemptLimiter:
    """At most ``limit`` connection attempts per ``window_s`` (Binance: 300 per 5 minutes)."""

    def __init__(self, limit: int = 300, window_s: float = 300.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self._times: list[float] = []

    def wait_s(self, now: float) -> float:
        """Seconds to wait before the next attempt may start (0: go now, and it is counted)."""
        self._times = [t for t in self._times if now - t < self.window_s]
        if len(self._times) < self.limit:
            self._times.append(now)
            return 0.0
        return self._times[0] + self.window_s - now
