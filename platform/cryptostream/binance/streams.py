"""Binance's streams and connection limits (sans-I/O): which connections to open for which
streams, and how to pace their subscriptions.

Binance's limits: at most 1024 streams per connection, at most 5 incoming messages per second
per connection (SUBSCRIBE and pongs count), 300 connection attempts per 5 minutes per IP.
Streams are spread over as few connections as the stream limit allows; each connection names up
to ``url_streams`` streams in its combined-stream URL (keeping URLs short) and subscribes to the
rest with SUBSCRIBE messages of up to ``per_subscribe`` streams, sent ``SUBSCRIBE_INTERVAL_S``
apart (3 messages/s, leaving room for pongs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import orjson

MAX_STREAMS_PER_CONNECTION = 1024
SUBSCRIBE_INTERVAL_S = 0.34


def stream_name(symbol: str, kind: str = "trade") -> str:
    return f"{symbol.lower()}@{kind}"


@dataclass(frozen=True, slots=True)
class ConnectionPlan:
    url: str
    streams: tuple[str, ...]
    subscribe_batches: tuple[tuple[str, ...], ...] = field(default=())

    @property
    def symbols(self) -> list[str]:
        return [s.partition("@")[0].upper() for s in self.streams]


def plan_connections(
    base_url: str,
    symbols: list[str],
    kind: str = "trade",
    per_connection: int = MAX_STREAMS_PER_CONNECTION,
    url_streams: int = 200,
    per_subscribe: int = 200,
) -> list[ConnectionPlan]:
    per_connection = max(1, min(per_connection, MAX_STREAMS_PER_CONNECTION))
    url_streams = max(1, min(url_streams, per_connection))
    per_subscribe = max(1, per_subscribe)
    base = base_url.rstrip("/")
    names = [stream_name(s, kind) for s in dict.fromkeys(symbols)]
    plans = []
    for start in range(0, len(names), per_connection):
        chunk = names[start : start + per_connection]
        in_url, rest = chunk[:url_streams], chunk[url_streams:]
        batches = tuple(
            tuple(rest[i : i + per_subscribe]) for i in range(0, len(rest), per_subscribe)
        )
        plans.append(
            ConnectionPlan(f"{base}/stream?streams=" + "/".join(in_url), tuple(chunk), batches)
        )
    return plans


def combined_stream_urls(
    base_url: str, symbols: list[str], kind: str = "trade", per_connection: int = 200
) -> list[str]:
    """Combined-stream URLs naming every stream (``per_connection`` streams each)."""
    return [
        plan.url
        for plan in plan_connections(base_url, symbols, kind, per_connection, per_connection)
    ]


def subscribe_message(request_id: int, streams: tuple[str, ...]) -> bytes:
    return orjson.dumps({"method": "SUBSCRIBE", "params": list(streams), "id": request_id})
