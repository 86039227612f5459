"""An in-process view of the latest prices for ``GET /price``, kept fresh by ``updates:price``.

Opt-in (``CSP_QUERY_PRICE_VIEW=true``): it relies on the processor being the only writer of
``price:{SYMBOL}`` -- its batch script changes the hash and publishes the new latest trade on
``updates:price`` in one atomic step. Writes that bypass the processor (a manual ``HSET``, a
``FLUSHALL``) are not seen by the view until the subscription is re-established.

Guarantee: an answer from the view is never older than Redis by more than ``max_lag_s``
(``CSP_QUERY_PRICE_VIEW_MAX_LAG_MS``). How:

- The push hub's subscription connection carries a ``PING`` every ``max_lag_s / 4``. Redis
  answers in order on that connection, so when the pong of a ping sent at ``t`` has been read,
  every update published before ``t`` has been read and applied before it. The view may then
  answer until ``t + max_lag_s`` (:meth:`PriceView.confirmed`); a late pong (a hung Redis, a busy
  worker) lets that lapse and every request falls back to Redis until the next pong.
- Entries come from the channel and from Redis reads made on a miss, merged by trade id (the
  latest-price view in Redis is monotonic by trade id), so an older value never replaces a newer
  one whatever order the read and the message arrive in. A read is learned only if it was sent
  while the view was confirmed (so after Redis processed the ``SUBSCRIBE``) and the subscription
  did not change since (:attr:`PriceView.generation`).
- Losing the subscription empties the view and stops it answering (:meth:`PriceView.lost`);
  every request reads Redis until a new subscription is confirmed by a pong.
- A miss is always read from Redis and a 404 is never cached: a symbol that appears in Redis is
  served as soon as it is there.
"""

from __future__ import annotations

import time
from typing import Any

from cryptostream.query.responses import price_body


class PriceView:
    """symbol -> (trade id, rendered 200 body), and whether it may answer right now."""

    def __init__(self, max_lag_s: float) -> None:
        self.max_lag_s = max_lag_s
        self.entries: dict[str, tuple[int, bytes]] = {}
        self.generation = 0
        self.live = False  # subscribed, and not lost since
        self.fresh_until = 0.0  # time.monotonic() until which the view may answer
        self.hits = 0
        self.misses = 0

    # --- the hot path ------------------------------------------------------------------------

    def lookup(self, symbol: str) -> bytes | None:
        """The 200 body for ``symbol`` if the view is fresh and has it, else None (read Redis)."""
        if time.monotonic() < self.fresh_until:
            entry = self.entries.get(symbol)
            if entry is not None:
                self.hits += 1
                return entry[1]
        self.misses += 1
        return None

    def read_token(self) -> int | None:
        """Taken before a Redis read: the read may be learned only if this is not None and
        still equals :attr:`generation` when its reply arrives."""
        return self.generation if self.live and self.fresh_until > 0.0 else None

    def learn(self, token: int | None, symbol: str, trade_id: int, body: bytes) -> None:
        if token is not None and token == self.generation and self.live:
            self._merge(symbol, trade_id, body)

    # --- fed by the push hub -----------------------------------------------------------------

    def subscribed(self) -> None:
        """A new subscription: nothing learned before it can be trusted; not fresh until the
        first pong confirms it."""
        self.generation += 1
        self.entries.clear()
        self.live = True
        self.fresh_until = 0.0

    def lost(self) -> None:
        self.generation += 1
        self.entries.clear()
        self.live = False
        self.fresh_until = 0.0

    def confirmed(self, ping_sent_at: float) -> None:
        """The pong of a ping sent at ``ping_sent_at`` (time.monotonic()) has been read."""
        if self.live:
            self.fresh_until = max(self.fresh_until, ping_sent_at + self.max_lag_s)

    def apply(self, update: dict[str, Any]) -> None:
        """One element of an ``updates:price`` message."""
        if not self.live:
            return
        symbol, price, trade_id = update.get("symbol"), update.get("price"), update.get("trade_id")
        if not isinstance(symbol, str):
            return
        try:
            tid = int(trade_id)  # type: ignore[arg-type]
            body = price_body(symbol, str(price).encode())
        except (TypeError, ValueError):
            # Not something the view can serve: let Redis answer this symbol (a 500 for a
            # malformed price, exactly as without the view).
            self.entries.pop(symbol, None)
            return
        self._merge(symbol, tid, body)

    def _merge(self, symbol: str, trade_id: int, body: bytes) -> None:
        current = self.entries.get(symbol)
        if current is None or current[0] < trade_id:
            self.entries[symbol] = (trade_id, body)
