"""Which URL to open for which symbols (sans-I/O)."""

from __future__ import annotations

MAX_STREAMS_PER_CONNECTION = 1024


def stream_name(symbol: str, kind: str = "trade") -> str:
    return f"{symbol.lower()}@{kind}"


def combined_stream_urls(
    base_url: str, symbols: list[str], kind: str = "trade", per_connection: int = 200
) -> list[str]:
    """Combined-stream URLs, the symbols spread over as few connections as the limits allow.

    ``per_connection`` stays well below Binance's 1024-stream cap so URLs stay short.
    """
    per_connection = max(1, min(per_connection, MAX_STREAMS_PER_CONNECTION))
    base = base_url.rstrip("/")
    urls = []
    for start in range(0, len(symbols), per_connection):
        chunk = symbols[start : start + per_connection]
        urls.append(f"{base}/stream?streams=" + "/".join(stream_name(s, kind) for s in chunk))
    return urls
