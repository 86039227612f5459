"""The internal event model shared by sources, payload builders and the server. Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Order:
    """One taker order: 1..n trades at one price and time (so exactly one aggTrade).

    Amounts are ints in 1e-8 units, times in microseconds since the Unix epoch.
    ``bid``/``ask`` describe the top of the book right after the order (bookTicker), ``book_id``
    its update id then. ``book``: the journal of the book events of the order's step, in order
    (``(is_bid, price, new quantity)``, one update id each, ending at ``book_id``), for the server
    to apply to the served book when it sends the order (then cleared); None for sources without
    a book (archive replays).
    """

    symbol: str
    agg_id: int
    first_id: int
    price: int
    qtys: list[int]
    time_us: int
    buyer_maker: bool
    bid: int
    bid_qty: int
    ask: int
    ask_qty: int
    book_id: int
    book: list[tuple[bool, int, int]] | None = None

    @property
    def last_id(self) -> int:
        return self.first_id + len(self.qtys) - 1

    @property
    def qty_total(self) -> int:
        return sum(self.qtys)


@dataclass(slots=True)
class RawFrame:
    """A recorded frame replayed verbatim to the subscribers of ``stream``.

    ``payload`` is the raw (unwrapped) payload text as bytes; ``trade`` is set when the frame is a
    trade event, so the truth statistics and the REST history can follow it; ``depth`` when it is
    a depth diff or a recorded REST depth snapshot (``stream`` is then ``""``: sent to nobody),
    so the replayed book can follow it.
    """

    stream: str
    payload: bytes
    time_us: int
    trade: TradeInfo | None = None
    depth: DepthInfo | None = None


@dataclass(frozen=True, slots=True)
class TradeInfo:
    symbol: str
    trade_id: int
    price: int
    qty: int
    time_us: int
    buyer_maker: bool


@dataclass(frozen=True, slots=True)
class DepthInfo:
    """A recorded depth diff (``U``..``u``) or REST snapshot (``lastUpdateId`` in both ids, no
    symbol: the line names none); levels as (price, quantity) in 1e-8 units."""

    symbol: str
    first_id: int
    final_id: int
    bids: list[tuple[int, int]]
    asks: list[tuple[int, int]]
    snapshot: bool = False


Item = Order | RawFrame
