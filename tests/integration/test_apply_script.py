"""The Lua apply script on real Redis: atomic views + offsets, fencing of re-applied batches."""

from __future__ import annotations

import functools
from decimal import Context, Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cryptostream.core.codec import encode_trade
from cryptostream.core.keys import (
    candle_member,
    candles_1m_key,
    home_partition,
    offsets_key,
    parse_candle_member,
    price_key,
    stats_key,
    symbols_key,
)
from cryptostream.core.trades import Trade
from cryptostream.core.views import Candle, compute_views, fmt
from cryptostream.processor.batch import Batch, Group, RawRecord, apply_call, parse_conflicts
from cryptostream.processor.known import KnownViews
from cryptostream.processor.service import APPLY_SCRIPT
from tests.conftest import Env, both_topologies

pytestmark = pytest.mark.integration
N = 8  # the layout's partitions (the default CSP_PARTITIONS)
BTC, ETH = home_partition("BTCUSDT", N), home_partition("ETHUSDT", N)


def price(symbol: str) -> str:
    return price_key(symbol, N)


def stats(symbol: str) -> str:
    return stats_key(symbol, N)


def candles(symbol: str) -> str:
    return candles_1m_key(symbol, N)


def _batch(partition: int, first_offset: int, trades: list[Trade]) -> Batch:
    batch = Batch()
    for i, trade in enumerate(trades):
        batch.add(
            RawRecord(partition, first_offset + i, encode_trade(trade, 1_718_000_000_123_456))
        )
    return batch


def _run(
    script: Any,
    batch: Batch,
    topic: str,
    now: int | str,
    history: int | str,
    positions: dict[int, int],
    max_future: int | str = 10**15,
) -> Any:
    """Apply ``batch`` as the processor does (KEYS and ARGV from Batch.script_call)."""
    return script(*batch.script_call(topic, positions, int(now), int(history), int(max_future), N))


@both_topologies
def test_apply_then_reapply_is_fenced(isolated: Env) -> None:
    r = isolated.client()
    script = r.register_script(APPLY_SCRIPT)
    topic = isolated.settings.topic
    key = offsets_key(topic, BTC, N)
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("updates:price")
    pubsub.get_message(timeout=1)

    trades = [
        Trade("BTCUSDT", 10, "1.5", "2", 100, 101, False),
        Trade("BTCUSDT", 11, "1.6", "2", 102, 103, True),
    ]
    batch = _batch(BTC, 50, trades)
    day = str(1440 * 60_000)
    assert _run(script, batch, topic, "999", day, {})[:2] == [1, 1]
    assert r.hget(key, str(BTC)) == b"51"
    assert r.hget(price("BTCUSDT"), "price") == b"1.6"
    assert r.hget(price("BTCUSDT"), "ingest_time_us") == b"1718000000123456"  # 16 digits intact
    assert r.smembers(symbols_key(BTC, N)) == {b"BTCUSDT"}
    message = pubsub.get_message(timeout=5)
    assert message is not None
    assert orjson.loads(message["data"]) == [
        {
            "symbol": "BTCUSDT",
            "price": "1.6",
            "quantity": "2",
            "trade_id": 11,
            "trade_time": 102,
            "event_time": 103,
            "update_time": 999,
        }
    ]

    # The same batch again (a zombie, or a retry after a lost reply): nothing changes.
    # The same batch again, believing nothing was applied (a zombie, or a retry after a lost
    # reply): refused whole, nothing changes.
    reply = _run(script, batch, topic, "1000", day, {})
    assert parse_conflicts(reply) == {BTC: 51}
    assert r.hget(stats("BTCUSDT"), "trades") == b"2"
    # A processor that believes an older position is refused too.
    newer = _batch(BTC, 52, [Trade("BTCUSDT", 12, "9.9", "1", 104, 105, False)])
    assert parse_conflicts(_run(script, newer, topic, "1000", day, {BTC: 49})) == {BTC: 51}
    assert r.hget(price("BTCUSDT"), "price") == b"1.6"

    # An older trade id never overwrites a newer one, but its offset still counts as applied.
    older = _batch(BTC, 52, [Trade("BTCUSDT", 5, "0.1", "1", 1, 1, False)])
    assert _run(script, older, topic, "1001", day, {BTC: 51})[:2] == [1, 0]
    assert r.hget(price("BTCUSDT"), "price") == b"1.6" and r.hget(key, str(BTC)) == b"52"
    # ...while candles and totals do count it, with exact decimal sums done in Lua.
    assert r.hgetall(stats("BTCUSDT")) == {
        b"trades": b"3",
        b"base_volume": b"5",
        b"quote_volume": b"6.3",
    }
    stored = [orjson.loads(m) for m in r.zrange(candles("BTCUSDT"), 0, -1)]
    assert len(stored) == 1
    assert {k: stored[0][k] for k in "ohlcvn"} == {
        "o": "0.1",
        "h": "1.6",
        "l": "0.1",
        "c": "1.6",
        "v": "5",
        "n": 3,
    }
    pubsub.close()
    r.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("99999999"), places=8),
            st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("9999"), places=8),
        ),
        min_size=2,
        max_size=12,
    )
)
def test_lua_decimal_merge_equals_python_decimal(
    isolated: Env, rows: list[tuple[Decimal, Decimal]]
) -> None:
    """Each trade in its own batch, so every sum, max and min is done by the Lua merge."""
    r = isolated.client()
    r.flushall()
    script = r.register_script(APPLY_SCRIPT)
    trades = [
        Trade("ETHUSDT", i, fmt(p), fmt(q), 1000 + i, 1000 + i, False)
        for i, (p, q) in enumerate(rows, 1)
    ]
    for i, t in enumerate(trades):
        batch = _batch(ETH, i, [t])
        assert _run(script, batch, "t", "1", str(10**9), {ETH: i - 1} if i else {})[0] == 1
    expected = compute_views(trades)["ETHUSDT"]
    totals = r.hgetall(stats("ETHUSDT"))
    assert Decimal(totals[b"base_volume"].decode()) == expected.totals.base_volume
    assert Decimal(totals[b"quote_volume"].decode()) == expected.totals.quote_volume
    (member,) = r.zrange(candles("ETHUSDT"), 0, -1)
    # Candle.merge is the reference of every candle merge: the Lua script's must equal it,
    # field for field, in the member spelling of core/keys.py.
    singles = [compute_views([t])["ETHUSDT"].candles[0] for t in trades]
    reference = functools.reduce(Candle.merge, singles)
    assert candle_member(parse_candle_member(member)) == candle_member(reference)
    assert candle_member(reference) == candle_member(next(iter(expected.candles.values())))
    r.close()


_digits = st.text(alphabet="0123456789", min_size=0, max_size=30)
_plain = st.builds(lambda i, f: f"{i or '0'}.{f}" if f else (i or "0"), _digits, _digits)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.tuples(_plain, _plain), min_size=1, max_size=20))
def test_lua_dec_add_is_exact_and_canonical(isolated: Env, pairs: list[tuple[str, str]]) -> None:
    """The script's chunked decimal addition, alone, against Python's Decimal: long numbers,
    carries across its 14-digit chunks, leading and trailing zeros."""
    helpers = APPLY_SCRIPT[APPLY_SCRIPT.index("local function split") : APPLY_SCRIPT.index("-- 1.")]
    body = helpers + (
        "local out = {}\n"
        "for i = 1, #ARGV, 2 do out[#out + 1] = dec_add(ARGV[i], ARGV[i + 1]) end\n"
        "return out\n"
    )
    r = isolated.client()
    got = [x.decode() for x in r.eval(body, 0, *[x for pair in pairs for x in pair])]
    r.close()
    exact = Context(prec=100)  # (the default 28 digits would round these sums)
    assert got == [fmt(exact.add(Decimal(a), Decimal(b))) for a, b in pairs]


def test_candle_history_keeps_the_newest_minutes(isolated: Env) -> None:
    """``CSP_CANDLE_HISTORY_MINUTES``: a new minute pushes the oldest out; merging into a kept
    minute keeps them all; a late trade for a minute already out of the history is not kept."""
    r = isolated.client()
    r.flushall()
    script = r.register_script(APPLY_SCRIPT)
    history = str(3 * 60_000)
    offset = -1

    def apply(trade_id: int, minute: int) -> None:
        nonlocal offset
        t = Trade("ETHUSDT", trade_id, "2", "1", minute * 60_000 + 5, minute * 60_000 + 5, False)
        batch = _batch(ETH, offset + 1, [t])
        assert _run(script, batch, "h", "1", history, {ETH: offset} if offset >= 0 else {})[0] == 1
        offset += 1

    def minutes() -> list[int]:
        return [int(s) // 60_000 for _m, s in r.zrange(candles("ETHUSDT"), 0, -1, withscores=True)]

    for i, minute in enumerate([0, 1, 2]):
        apply(i + 1, minute)
    assert minutes() == [0, 1, 2]
    apply(10, 3)
    assert minutes() == [1, 2, 3]
    apply(11, 1)  # merged into a kept minute: nothing moves
    assert minutes() == [1, 2, 3]
    assert orjson.loads(r.zrange(candles("ETHUSDT"), 0, 0)[0])["n"] == 2
    apply(12, 0)  # too old for the history
    assert minutes() == [1, 2, 3]
    apply(13, 5)
    assert minutes() == [3, 5]
    assert int(r.hget(stats("ETHUSDT"), "trades") or 0) == 7  # the totals keep every trade
    r.close()


def test_ids_beyond_doubles_stay_exact_through_merges(isolated: Env) -> None:
    """19-digit ids (up to 2^63-1), each trade in its own batch and out of id order: Lua's doubles
    cannot tell these ids apart, so open, close, the latest price and the stored ids must come
    from digit-string comparisons."""
    r = isolated.client()
    r.flushall()
    script = r.register_script(APPLY_SCRIPT)
    top = 2**63 - 1
    ids = [top - 3, top, top - 1, 2**53 + 1, 2**53, top - 2]  # arrival order
    trades = [
        Trade("BTCUSDT", tid, f"{i + 1}.5", "1", 60_000, 60_001, False) for i, tid in enumerate(ids)
    ]
    for offset, t in enumerate(trades):
        batch = _batch(BTC, offset, [t])
        assert (
            _run(script, batch, "x", "1", str(10**9), {BTC: offset - 1} if offset else {})[0] == 1
        )
    assert r.hget(price("BTCUSDT"), "trade_id") == str(top).encode()
    assert r.hget(price("BTCUSDT"), "price") == b"2.5"  # the trade with id 2^63-1
    (member,) = r.zrange(candles("BTCUSDT"), 0, -1)
    candle = orjson.loads(member)  # orjson reads 64-bit integers exactly
    assert (candle["ft"], candle["lt"]) == (2**53, top)
    assert (candle["o"], candle["c"], candle["n"]) == ("5.5", "2.5", 6)
    r.close()


def test_a_far_future_record_cannot_trim_the_real_candles(isolated: Env) -> None:
    """A record the decoder would refuse (trade time in 2100), written by a producer that also
    lies about its ingest time, still cannot move the candle history past the clock."""
    r = isolated.client()
    r.flushall()
    script = r.register_script(APPLY_SCRIPT)
    now_ms = 1_718_000_000_000
    history, max_future = str(60 * 60_000), "600000"
    real = [Trade("ETHUSDT", i, "2", "1", now_ms - i * 60_000, now_ms, False) for i in range(5)]
    future = Trade("ETHUSDT", 99, "3", "1", 4_102_444_800_000, 4_102_444_800_000, False)
    lying = Batch(max_future_ms=10**15)
    lying.add(RawRecord(ETH, 5, encode_trade(future, 4_102_444_800_000_000)))
    assert not lying.poison
    for offset, t in enumerate(real):
        batch = _batch(ETH, offset, [t])
        positions = {ETH: offset - 1} if offset else {}
        assert _run(script, batch, "f", now_ms, history, positions, max_future)[0] == 1
    assert _run(script, lying, "f", now_ms, history, {ETH: 4}, max_future)[0] == 1
    kept = [int(s) for _m, s in r.zrange(candles("ETHUSDT"), 0, -1, withscores=True)]
    assert len(kept) == 6  # the five real minutes and the bad one: nothing trimmed
    r.close()


def test_one_call_for_several_partitions_is_all_or_nothing(isolated: Env) -> None:
    """CSP_PROCESSOR_APPLY=batch on one node: one call holds each partition's group (its own
    offsets hash, symbol set and keys); a stale fence in one refuses the whole call."""
    assert BTC != ETH
    r = isolated.client()
    script = r.register_script(APPLY_SCRIPT)
    topic, day = isolated.settings.topic, str(1440 * 60_000)
    batch = _batch(BTC, 10, [Trade("BTCUSDT", 1, "2", "1", 100, 101, False)])
    for i, trade in enumerate([Trade("ETHUSDT", 1, "3", "1", 100, 101, False)]):
        batch.add(RawRecord(ETH, 20 + i, encode_trade(trade, 1_718_000_000_123_456)))
    assert _run(script, batch, topic, "1", day, {})[:2] == [1, 2]
    assert r.hget(offsets_key(topic, BTC, N), str(BTC)) == b"10"
    assert r.hget(offsets_key(topic, ETH, N), str(ETH)) == b"20"
    assert r.smembers(symbols_key(ETH, N)) == {b"ETHUSDT"}
    later = _batch(BTC, 11, [Trade("BTCUSDT", 2, "4", "1", 102, 103, False)])
    later.add(RawRecord(ETH, 21, encode_trade(Trade("ETHUSDT", 2, "5", "1", 102, 103, False), 1)))
    # BTC's position is right, ETH's is stale: nothing of either is applied
    reply = _run(script, later, topic, "1", day, {BTC: 10, ETH: 19})
    assert parse_conflicts(reply) == {ETH: 20}
    assert r.hget(price("BTCUSDT"), "price") == b"2" and r.hget(stats("ETHUSDT"), "trades") == b"1"
    assert _run(script, later, topic, "1", day, {BTC: 10, ETH: 20})[:2] == [1, 2]
    assert (r.hget(price("BTCUSDT"), "price"), r.hget(price("ETHUSDT"), "price")) == (b"4", b"5")
    r.close()


_prices = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("99999"), places=6)
_sizes = st.decimals(min_value=Decimal("0.00000001"), max_value=Decimal("500"), places=8)
_trade_rows = st.tuples(st.sampled_from(["BTCUSDT", "ETHUSDT", "btcusdt"]), _prices, _sizes)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.lists(st.tuples(_trade_rows, st.integers(0, 2)), min_size=1, max_size=6),
            st.lists(_trade_rows, max_size=2),  # another writer's trades, before this call
        ),
        min_size=1,
        max_size=8,
    ),
    st.integers(0, 2),
)
def test_expectations_write_what_the_lua_merge_would(
    isolated: Env,
    calls: list[tuple[list[tuple[tuple[str, Decimal, Decimal], int]], list[Any]]],
    clears: int,
) -> None:
    """Calls with the processor's expectations (processor/known.py), built as the processor
    builds them (the next before the previous one's reply is settled), interleaved with another
    writer of the same views (as the outbox drain is): the candles and totals equal the
    reference views of all the trades, whichever calls met their expectations."""
    r = isolated.client()
    r.flushall()
    script = r.register_script(APPLY_SCRIPT)
    known = KnownViews()
    topic, day, now = "t", 10**12, 10**6
    positions: dict[int, int] = {}
    offsets: dict[int, int] = {}
    other_fence: dict[int, int] = {}
    ids = iter(range(1, 10**6))
    trades: list[Trade] = []
    pending: tuple[int, list[str], Any] | None = None

    def trade(symbol: str, p: Decimal, q: Decimal, minute: int) -> Trade:
        tid = next(ids)
        at = minute * 60_000 + tid
        trades.append(Trade(symbol.upper(), tid, fmt(p), fmt(q), at, at, False))
        return Trade(symbol, tid, fmt(p), fmt(q), at, at, False)

    for index, (rows, others) in enumerate(calls):
        for symbol, p, q in others:  # a writer the expectations know nothing of
            home = home_partition(symbol.upper(), N)
            fence = other_fence.get(home, -1)
            record = RawRecord(99, fence + 1, encode_trade(trade(symbol, p, q, 1), 1))
            batch = Batch(max_future_ms=10**15)
            batch.add(record)
            (views,) = batch.symbols.items()
            group = Group(home, [["99", str(fence), str(fence + 1)]], [views])
            keys, args = apply_call([group], topic, N, now, day, 10**15)
            assert script(keys=keys, args=args)[0] == 1
            other_fence[home] = fence + 1
        batch = Batch(max_future_ms=10**15)
        for (symbol, p, q), minute in rows:
            home = home_partition(symbol.upper(), N)
            offsets[home] = offsets.get(home, -1) + 1
            batch.add(RawRecord(home, offsets[home], encode_trade(trade(symbol, p, q, minute), 1)))
        groups = batch.groups(positions, N)
        number = known.next_call()
        keys, args = apply_call(groups, topic, N, now, day, 10**15, known, number)
        names = [symbol for group in groups for symbol, _views in group.symbols]
        if pending is not None:  # the previous call's reply, settled after this one was built
            known.settle(*pending)
        reply = script(keys=keys, args=args)
        assert reply[0] == 1
        pending = (number, names, reply)
        for partition, (_first, last) in batch.parts.items():
            positions[partition] = last
        if index < clears:
            known.clear()  # (a rebalance: everything is learnt again from seeds)

    for symbol, views in compute_views(trades).items():
        stored = [parse_candle_member(m) for m in r.zrange(candles(symbol), 0, -1)]
        assert [candle_member(c) for c in stored] == [
            candle_member(views.candles[m]) for m in sorted(views.candles)
        ]
        totals = r.hgetall(stats(symbol))
        assert int(totals[b"trades"]) == views.totals.trades
        assert Decimal(totals[b"base_volume"].decode()) == views.totals.base_volume
        assert Decimal(totals[b"quote_volume"].decode()) == views.totals.quote_volume
    r.close()


def test_expectations_spare_the_merge_and_survive_a_stale_one(isolated: Env) -> None:
    """Once a candle and its totals are known, a call writes the merged texts computed in
    Python (no seed comes back); a text changed behind the processor's back is merged in Lua
    instead (a seed comes back), and the result is exact either way."""
    r = isolated.client()
    r.flushall()
    script = r.register_script(APPLY_SCRIPT)
    known = KnownViews()
    positions: dict[int, int] = {}
    replies = []
    sent: list[Trade] = []
    for i in range(1, 6):
        t = Trade("ETHUSDT", i, f"{i}.5", "0.1", 60_000 + i, 60_000 + i, False)
        sent.append(t)
        batch = _batch(ETH, i, [t])
        groups = batch.groups(positions, N)
        number = known.next_call()
        keys, args = apply_call(groups, "t", N, 1, 10**12, 10**15, known, number)
        replies.append(script(keys=keys, args=args))
        known.settle(number, ["ETHUSDT"], replies[-1])
        positions[ETH] = i
        if i == 3:  # another writer changes the totals: the next expectation is stale
            r.hset(stats("ETHUSDT"), "trades", "1000")
    seeds = [(list(reply[2]) != [], list(reply[3]) != []) for reply in replies]
    # 1: new, seeded; 2, 3: expected and met; 4: totals stale (merged in Lua, seeded); 5: met
    assert seeds == [(True, True), (False, False), (False, False), (False, True), (False, False)]
    assert known.stats["expected"] == 8
    reference = compute_views(sent)["ETHUSDT"]
    (member,) = r.zrange(candles("ETHUSDT"), 0, -1)
    assert candle_member(parse_candle_member(member)) == candle_member(reference.candles[60_000])
    totals = r.hgetall(stats("ETHUSDT"))
    assert totals[b"trades"] == b"1002"  # 1000 + the two trades after the change
    assert Decimal(totals[b"base_volume"].decode()) == reference.totals.base_volume
    r.close()


def test_expectations_keep_the_schemas_extremes_exact(isolated: Env) -> None:
    """The longest prices and quantities the schema admits and trade ids next to 2^63, merged
    through expectations (Python integers) and seeds (Lua strings): exact to the digit."""
    r = isolated.client()
    r.flushall()
    script = r.register_script(APPLY_SCRIPT)
    known = KnownViews()
    big = "9" * 20 + "." + "9" * 20
    tiny = "0." + "0" * 19 + "1"
    top = 2**63 - 1
    sent = [
        Trade("ETHUSDT", top - 3, big, big, 60_000, 60_000, False),
        Trade("ETHUSDT", top - 1, tiny, big, 60_001, 60_001, False),
        Trade("ETHUSDT", top - 2, big, tiny, 60_002, 60_002, False),
        Trade("ETHUSDT", top, "1", big, 60_003, 60_003, False),
    ]
    positions: dict[int, int] = {}
    for i, trade in enumerate(sent):
        groups = _batch(ETH, i, [trade]).groups(positions, N)
        number = known.next_call()
        keys, args = apply_call(groups, "t", N, 1, 10**12, 10**15, known, number)
        reply = script(keys=keys, args=args)
        assert reply[0] == 1
        known.settle(number, ["ETHUSDT"], reply)
        positions[ETH] = i
    assert known.stats["expected"] == 6  # calls 2-4: the candle and the totals each
    reference = compute_views(sent)["ETHUSDT"]
    (member,) = r.zrange(candles("ETHUSDT"), 0, -1)
    assert candle_member(parse_candle_member(member)) == candle_member(reference.candles[60_000])
    totals = r.hgetall(stats("ETHUSDT"))
    assert Decimal(totals[b"base_volume"].decode()) == reference.totals.base_volume
    assert Decimal(totals[b"quote_volume"].decode()) == reference.totals.quote_volume
    r.close()
