"""The order book models, without sockets: the served L2 book and its diffs, the synthetic makers
(determinism, tick/lot grid, never crossed, trades at the top of the book), the replayed book."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from marketsim.book import L2Book, ReplayDepth, SyntheticBook, depth_update_payload
from marketsim.generator import SyntheticConfig, SyntheticSource
from marketsim.model import Order
from marketsim.symbols import spec_for

SYMBOLS = ("BTCUSDT", "ETHUSDT", "XRPUSDT", "DOGEUSDT", "ETHBTC", "ZZZUSDT")


def _run(
    seed: int, trades: int, symbols: tuple[str, ...] = SYMBOLS, levels: int = 100
) -> tuple[list[Order], list[L2Book]]:
    src = SyntheticSource(
        SyntheticConfig(symbols=symbols, seed=seed, max_trades=trades, book_levels=levels)
    )
    books = src.initial_books()
    orders = []
    while (o := src.next_order()) is not None:
        orders.append(o)
    return orders, books


def test_l2book_levels_snapshot_and_diffs() -> None:
    b = L2Book("BTCUSDT", 100, buffers=1)
    b.event(True, 10, 5)
    b.event(True, 12, 1)
    b.event(False, 15, 2)
    b.event(False, 14, 3)
    assert b.snapshot() == (104, [(12, 1), (10, 5)], [(14, 3), (15, 2)])
    assert b.snapshot(1) == (104, [(12, 1)], [(14, 3)])
    assert b.best_bid() == (12, 1) and b.best_ask() == (14, 3) and not b.crossed()
    assert b.buffers[0].take(b.update_id) == (101, 104, [(12, 1), (10, 5)], [(14, 3), (15, 2)])
    assert b.buffers[0].take(b.update_id) is None  # nothing changed since
    b.event(True, 12, 0)  # removed
    b.event(True, 12, 4)  # back
    b.event(False, 99, 0)  # not there: an event, but no level to report
    assert b.buffers[0].take(b.update_id) == (105, 107, [(12, 4)], [])
    b.event(False, 14, 0)
    assert b.buffers[0].take(b.update_id) == (108, 108, [], [(14, 0)])
    assert depth_update_payload("BTCUSDT", 7, 108, 108, [], [(1_500_000_000, 0)]) == (
        b'{"e":"depthUpdate","E":7,"s":"BTCUSDT","U":108,"u":108,"b":[],'
        b'"a":[["15.00000000","0.00000000"]]}'
    )


def test_generator_books_deterministic_per_seed() -> None:
    a, books_a = _run(3, 3000)
    b, books_b = _run(3, 3000)
    c, _ = _run(4, 3000)
    assert a == b and a != c
    assert [x.snapshot() for x in books_a] == [x.snapshot() for x in books_b]
    assert sum(len(o.qtys) for o in a) == 3000


def _replay_orders(orders: list[Order], books: list[L2Book]) -> dict[str, L2Book]:
    """Apply each order's journal to the opening books, checking the trade against the top."""
    served = {b.symbol: b for b in books}
    for o in orders:
        book = served[o.symbol]
        spec = spec_for(o.symbol)
        assert o.book is not None and o.book_id == book.update_id + len(o.book)
        # the taker trades at the best level of the other side, no more than it holds: one of
        # the order's events takes the trades' quantity off the best level at the trade price
        fills = 0
        for is_bid, price, qty in o.book:
            best = book.best_bid() if is_bid else book.best_ask()
            if (is_bid, price) == (o.buyer_maker, o.price) and best == (price, qty + o.qty_total):
                fills += 1
            book.apply_changes([(is_bid, price, qty)])
        assert fills >= 1
        assert book.update_id == o.book_id
        bid, ask = book.best_bid(), book.best_ask()
        assert bid is not None and ask is not None and bid[0] < ask[0]  # never crossed, never empty
        assert (o.bid, o.bid_qty, o.ask, o.ask_qty) == (*bid, *ask)
        for p, q in book.bid_levels(30) + book.ask_levels(30):
            assert p > 0 and p % spec.tick_size == 0 and q > 0 and q % spec.step_size == 0
        assert all(q % spec.step_size == 0 and q > 0 for q in o.qtys)
    return served


def test_trades_take_the_top_of_the_book_on_the_grids() -> None:
    orders, books = _run(5, 20_000)
    served = _replay_orders(orders, books)
    for book in served.values():
        spec = spec_for(book.symbol)
        levels = book.bid_levels() + book.ask_levels()
        assert all(p % spec.tick_size == 0 and q % spec.step_size == 0 for p, q in levels)
        assert 100 <= len(book.bids) <= 125 and 100 <= len(book.asks) <= 125
    # both sides trade, and prices move with the fair price
    assert {o.buyer_maker for o in orders} == {True, False}
    btc = [o.price for o in orders if o.symbol == "BTCUSDT"]
    assert len(set(btc)) > 100


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    symbol=st.sampled_from(SYMBOLS),
    levels=st.integers(1, 40),
)
def test_never_crossed_any_seed_symbol_depth(seed: int, symbol: str, levels: int) -> None:
    orders, books = _run(seed, 600, (symbol,), levels)
    _replay_orders(orders, books)


def test_diff_chain_rebuilds_the_book() -> None:
    """Diffs taken at arbitrary points (two speeds) chain U = previous u + 1 and, applied to the
    opening book, give the served book level by level."""
    orders, books = _run(9, 8000, ("BTCUSDT", "XRPUSDT"))
    served = {b.symbol: b.copy(buffers=2) for b in books}
    local = {b.symbol: [b.copy(), b.copy()] for b in books}
    prev_u = {(s, k): b.update_id for s, b in served.items() for k in (0, 1)}
    rng = random.Random(1)

    def take(sym: str, k: int) -> None:
        book = served[sym]
        d = book.buffers[k].take(book.update_id)
        if d is None:
            return
        first, final, bids, asks = d
        assert first == prev_u[(sym, k)] + 1 and final >= first
        prev_u[(sym, k)] = final
        local[sym][k].apply_diff(first, final, bids, asks)

    for o in orders:
        assert o.book is not None
        served[o.symbol].apply_changes(o.book)
        if rng.random() < 0.2:
            take(o.symbol, 0)
        if rng.random() < 0.02:
            take(o.symbol, 1)
    for sym, book in served.items():
        for k in (0, 1):
            take(sym, k)
            assert local[sym][k].snapshot() == book.snapshot()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(1, 30), st.integers(0, 3), st.booleans()),
        max_size=80,
    )
)
def test_any_event_sequence_diffs_rebuild(events: list[tuple[bool, int, int, bool]]) -> None:
    book = L2Book("X", 1000, buffers=1)
    local = book.copy()
    u = 1000
    for is_bid, price, qty, cut in events:
        book.event(is_bid, price * 2 + (0 if is_bid else 100), qty)
        if cut:
            d = book.buffers[0].take(book.update_id)
            if d is not None:
                assert d[0] == u + 1
                u = d[1]
                local.apply_diff(*d)
    d = book.buffers[0].take(book.update_id)
    if d is not None:
        local.apply_diff(*d)
    assert local.snapshot() == book.snapshot()


def test_synthetic_book_holes_and_depth() -> None:
    rng = random.Random(2)
    sb = SyntheticBook("BTCUSDT", 1_000_000, 1000, rng, 6_600_000, 600.0, 30.0, 10, levels=50)
    b = sb.book
    assert len(b.bids) == 50 and len(b.asks) == 50 and not b.crossed()
    for fair in (6_600_000 + 20_000, 6_600_000 - 40_000, 6_600_000):  # big jumps either way
        sb.requote(fair)
        bid, ask = b.best_bid(), b.best_ask()
        assert bid is not None and ask is not None
        assert fair * 1_000_000 - sb.gap * 1_000_000 <= bid[0] <= fair * 1_000_000 < ask[0]
        assert ask[0] <= (fair + 1 + sb.gap) * 1_000_000
        assert 50 <= len(b.bids) <= 62 and 50 <= len(b.asks) <= 62


def _levels(*pairs: tuple[int, int]) -> list[tuple[int, int]]:
    return list(pairs)


def test_replay_depth_syncs_like_a_client() -> None:
    rd = ReplayDepth(buffers=1)
    rd.on_diff("BTCUSDT", 90, 95, _levels((10, 1)), [])  # before the snapshot: dropped later
    rd.on_diff("BTCUSDT", 96, 101, _levels((11, 2)), _levels((20, 1)))  # fits 100
    assert "BTCUSDT" not in rd.books
    assert rd.on_snapshot(100, _levels((10, 5), (11, 1)), _levels((20, 3), (21, 1))) == "BTCUSDT"
    book = rd.books["BTCUSDT"]
    assert book.snapshot() == (101, [(11, 2), (10, 5)], [(20, 1), (21, 1)])
    rd.on_diff("BTCUSDT", 102, 104, [], _levels((21, 0)))
    rd.on_diff("BTCUSDT", 100, 103, [], [])  # old: already in the book
    assert rd.breaks == 0 and book.snapshot() == (104, [(11, 2), (10, 5)], [(20, 1)])
    rd.on_diff("BTCUSDT", 110, 111, [], [])  # a break in the recording: counted, applied
    assert rd.breaks == 1 and book.update_id == 111
    # a snapshot that arrives first waits for the symbol whose diff it fits
    rd.on_diff("ETHUSDT", 1, 4, [], [])
    assert rd.on_snapshot(50, _levels((1, 1)), _levels((2, 1))) is None
    rd.on_diff("ETHUSDT", 5, 49, [], [])
    assert "ETHUSDT" not in rd.books
    rd.on_diff("ETHUSDT", 50, 52, _levels((1, 0)), [])
    assert rd.books["ETHUSDT"].snapshot() == (52, [], [(2, 1)])


def test_replay_depth_starts_over_when_a_loop_restarts() -> None:
    rd = ReplayDepth()
    for _ in range(2):  # the same recording twice, as --loop replays it
        rd.on_diff("BTCUSDT", 80, 95, _levels((12, 1)), [])  # older than the snapshot
        assert "BTCUSDT" not in rd.books  # (the second time: the book is dropped here)
        rd.on_diff("BTCUSDT", 96, 101, _levels((11, 2)), [])
        rd.on_snapshot(100, _levels((10, 5)), _levels((20, 3)))
        rd.on_diff("BTCUSDT", 102, 104, [], _levels((21, 1)))
        assert rd.books["BTCUSDT"].snapshot() == (104, [(11, 2), (10, 5)], [(20, 3), (21, 1)])
    assert rd.breaks == 0
