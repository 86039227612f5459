"""The seeded synthetic market: pure, deterministic, no I/O and no wall clock.

Model (documented here because tests and experiments rely on it):

* Orders arrive as a Poisson process with a total rate of ``rate / mean_trades_per_order`` orders
  per simulated second, so the trade rate is ``rate``. Each order picks a symbol with a Zipf-like
  weight ``1 / rank**zipf_s`` (the first symbol listed is the busiest), then fills 1..8 trades
  (geometric) at one price: one ``aggTrade`` per order, consecutive trade ids per symbol.
* Optional bursts: with probability ``burst_prob`` per order, the next ``burst_len`` orders arrive
  ``burst_mult`` times faster.
* A per-symbol *fair price* follows a Gaussian random walk in ticks (about 1 bp per order), never
  below one tick. Makers quote an L2 book around it (:class:`marketsim.book.SyntheticBook`: bids
  at or below the fair price, asks above it, ``book_levels`` levels a side); the order then takes
  liquidity from the top of that book: a buy (buyer-is-maker false) trades at the best ask, a sell
  at the best bid, never more than that level holds (its trades are cut to it). The taker side
  follows the fair price's move with probability 0.7 (else a fair coin); quantities are
  exponential around ~200 quote units, rounded to the step size (at least one step).
* Each order carries the journal of the book events of its step (``Order.book``, one update id
  each; ``book_id`` is the id after them) and ``bid``/``ask`` are the book's best levels after it.
* Time: a simulated clock starting at ``start_time_us``; event time ``E`` equals trade time ``T``.
  Nothing depends on the wall clock, so the same seed and parameters produce the same orders.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass

from marketsim.book import DEFAULT_LEVELS, L2Book, SyntheticBook
from marketsim.model import Order
from marketsim.symbols import SymbolSpec, spec_for
from marketsim.units import SCALE

DEFAULT_START_TIME_US = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z
MAX_TRADES_PER_ORDER = 8
_P_MORE = 0.45  # geometric continuation probability for trades per order
MEAN_TRADES_PER_ORDER = sum(
    min(k, MAX_TRADES_PER_ORDER) * (1 - _P_MORE) * _P_MORE ** (k - 1) for k in range(1, 200)
)


@dataclass(frozen=True, slots=True)
class SyntheticConfig:
    symbols: Sequence[str]
    seed: int = 1
    rate: float = 1000.0  # simulated trades per second, all symbols together
    start_time_us: int = DEFAULT_START_TIME_US
    zipf_s: float = 1.0
    volatility_bp: float = 1.0
    burst_prob: float = 0.0
    burst_mult: float = 10.0
    burst_len: int = 200
    max_trades: int | None = None
    book_levels: int = DEFAULT_LEVELS


class _SymState:
    __slots__ = (
        "agg_id",
        "book",
        "book_id",
        "mean_qty_steps",
        "price",
        "sigma",
        "spec",
        "trade_id",
    )

    def __init__(
        self, spec: SymbolSpec, rng: random.Random, volatility_bp: float, levels: int
    ) -> None:
        self.spec = spec
        self.price = spec.initial_price // spec.tick_size  # the fair price, in ticks
        self.trade_id = rng.randrange(10**7, 4 * 10**9)
        self.agg_id = rng.randrange(10**6, self.trade_id)
        self.book_id = rng.randrange(10**9, 6 * 10**10)
        self.sigma = max(0.6, self.price * volatility_bp / 10_000)
        notional_qty = 200 * SCALE * SCALE // max(1, spec.initial_price)  # 200 quote units
        self.mean_qty_steps = max(1.0, notional_qty / spec.step_size)
        self.book: SyntheticBook | None = None
        if levels <= 0:
            return
        self.book = SyntheticBook(
            spec.symbol,
            spec.tick_size,
            spec.step_size,
            rng,
            self.price,
            self.sigma,
            self.mean_qty_steps,
            self.book_id,
            levels,
        )


class SyntheticSource:
    """Deterministic stream of :class:`Order` for the configured symbols."""

    def __init__(self, config: SyntheticConfig) -> None:
        if not config.symbols:
            raise ValueError("at least one symbol")
        if config.rate <= 0:
            raise ValueError("rate must be > 0 (pacing is the server's business)")
        self.config = config
        self._rng = random.Random(config.seed)
        self._states = [
            _SymState(spec_for(s), self._rng, config.volatility_bp, config.book_levels)
            for s in config.symbols
        ]
        weights = [1.0 / (rank**config.zipf_s) for rank in range(1, len(self._states) + 1)]
        total = sum(weights)
        acc = 0.0
        self._cum: list[float] = []
        for w in weights:
            acc += w / total
            self._cum.append(acc)
        self._cum[-1] = 1.0
        self._order_rate = config.rate / MEAN_TRADES_PER_ORDER
        self._t = float(config.start_time_us)
        self._burst_left = 0
        self.trades = 0
        self.done = False

    @property
    def specs(self) -> list[SymbolSpec]:
        return [s.spec for s in self._states]

    def initial_books(self) -> list[L2Book]:
        """Copies of the books as they are now (before the first order: the opening books)."""
        return [s.book.book.copy() for s in self._states if s.book is not None]

    def symbol_weights(self) -> dict[str, float]:
        prev = 0.0
        out = {}
        for st, c in zip(self._states, self._cum, strict=True):
            out[st.spec.symbol] = c - prev
            prev = c
        return out

    def next_order(self) -> Order | None:
        """The next order, or None once ``max_trades`` trades were generated."""
        if self.done:
            return None
        cfg = self.config
        rng = self._rng
        rnd = rng.random
        rate = self._order_rate
        if self._burst_left > 0:
            self._burst_left -= 1
            rate *= cfg.burst_mult
        elif cfg.burst_prob > 0.0 and rnd() < cfg.burst_prob:
            self._burst_left = cfg.burst_len
        self._t += rng.expovariate(rate) * 1e6
        st = self._states[bisect.bisect_left(self._cum, rnd())]
        spec = st.spec
        n = 1
        while n < MAX_TRADES_PER_ORDER and rnd() < _P_MORE:
            n += 1
        if cfg.max_trades is not None:
            left = cfg.max_trades - self.trades
            if left <= 0:
                self.done = True
                return None
            n = min(n, left)
        price = st.price + round(rng.gauss(0.0, st.sigma))
        if price < 1:
            price = 1
        moved = price - st.price
        st.price = price
        mean = st.mean_qty_steps
        step = spec.step_size
        sb = st.book
        if sb is None:
            return self._bookless(st, price, n)
        book = sb.book
        journal: list[tuple[bool, int, int]] = []
        book.journal = journal
        sb.requote(price)
        qtys = [(int(rng.expovariate(1.0) * mean) + 1) * step for _ in range(n)]
        # the taker pushed the price (a buyer up, a seller down), or a fair coin
        buyer_maker = moved < 0 if moved and rnd() < 0.7 else rnd() < 0.5
        p, qtys = sb.take(not buyer_maker, qtys)
        book.journal = None
        n = len(qtys)
        if cfg.max_trades is not None and self.trades + n >= cfg.max_trades:
            self.done = True
        bid, ask = book._bp[-1], book._ap[0]
        bid_qty, ask_qty = book.bids[bid], book.asks[ask]
        order = Order(
            spec.symbol,
            st.agg_id,
            st.trade_id,
            p,
            qtys,
            int(self._t),
            buyer_maker,
            bid,
            bid_qty,
            ask,
            ask_qty,
            book.update_id,
            journal,
        )
        st.agg_id += 1
        st.trade_id += n
        self.trades += n
        return order

    def _bookless(self, st: _SymState, price: int, n: int) -> Order:
        """``book_levels=0``: no book, the trade at the fair price and a made-up top of book
        (the generator as it was before books; several times faster)."""
        rng = self._rng
        rnd = rng.random
        spec = st.spec
        mean = st.mean_qty_steps
        step = spec.step_size
        qtys = [(int(rng.expovariate(1.0) * mean) + 1) * step for _ in range(n)]
        buyer_maker = rnd() < 0.5
        tick = spec.tick_size
        spread = 1 + int(rnd() * 3)
        other_qty = (int(rng.expovariate(1.0) * mean * 4) + 1) * step
        p = price * tick
        if buyer_maker:  # taker sold into the bid
            bid, ask = p, p + spread * tick
            bid_qty, ask_qty = qtys[-1], other_qty
        else:
            bid, ask = max(tick, p - spread * tick), p
            bid_qty, ask_qty = other_qty, qtys[-1]
        st.book_id += 1 + n
        if self.config.max_trades is not None and self.trades + n >= self.config.max_trades:
            self.done = True
        order = Order(
            spec.symbol,
            st.agg_id,
            st.trade_id,
            p,
            qtys,
            int(self._t),
            buyer_maker,
            bid,
            bid_qty,
            ask,
            ask_qty,
            st.book_id,
        )
        st.agg_id += 1
        st.trade_id += n
        self.trades += n
        return order
