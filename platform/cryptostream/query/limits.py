"""Bounds on what one request may ask for.

Local constants until they earn a place in :class:`cryptostream.config.Settings`; each one caps
how much Redis work or memory a single client can cause.
"""

from __future__ import annotations

#: Symbols in one ``GET /prices`` call (one pipelined round trip of this many ``HGET``).
MAX_SYMBOLS_PER_REQUEST = 100
#: Candles in one ``GET /candles`` answer.
MAX_CANDLE_LIMIT = 500
DEFAULT_CANDLE_LIMIT = 100
#: Symbols one live-push client may subscribe to (its coalescing buffer holds at most this many).
MAX_STREAM_SYMBOLS = 1000
#: Seconds a Redis command may take before the request fails with 503.
REDIS_TIMEOUT_S = 1.0
#: Seconds one push to a live client may block before that client is dropped.
PUSH_SEND_TIMEOUT_S = 10.0
