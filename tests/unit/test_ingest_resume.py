"""Resuming ingest from the ids already published (pure parts)."""

from __future__ import annotations

from cryptostream.core.codec import encode_trade
from cryptostream.core.trades import Trade
from cryptostream.ingest.resume import last_trade_ids, start_offsets
from cryptostream.ingest.tracker import SymbolTracker


def _value(symbol: str, tid: int) -> bytes:
    trade = Trade(
        symbol=symbol,
        trade_id=tid,
        price="1.5",
        quantity="2",
        trade_time=1,
        event_time=1,
        buyer_is_maker=False,
    )
    return encode_trade(trade, 1)


def test_highest_id_per_wanted_symbol_poison_skipped() -> None:
    values = [_value("BTCUSDT", 7), _value("BTCUSDT", 5), b"not json", None,
              _value("ETHUSDT", 3), _value("XRPUSDT", 99)]  # fmt: skip
    assert last_trade_ids(values, {"BTCUSDT", "ETHUSDT", "SOLUSDT"}) == {"BTCUSDT": 7, "ETHUSDT": 3}


def test_start_offsets_read_at_most_the_tail() -> None:
    assert start_offsets({0: (0, 100), 1: (90, 100), 2: (5, 5)}, scan=20) == {0: 80, 1: 90}


def test_a_seeded_tracker_turns_the_downtime_into_a_reconnect_gap() -> None:
    tracker = SymbolTracker("BTCUSDT", grace_s=0.0)
    tracker.last, tracker.after_reconnect = 100, True
    assert not tracker.observe(100, now=0.0), "already published: a duplicate"
    assert tracker.observe(151, now=0.0)
    (gap,) = tracker.due(now=1.0, now_us=1)
    assert (gap.first, gap.last, gap.cause) == (101, 150, "reconnect")
