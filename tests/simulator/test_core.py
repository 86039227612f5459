"""Pure cores: decimals, symbols, the generator, payloads, path and control parsing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from marketsim import payloads as pl
from marketsim.generator import SyntheticConfig, SyntheticSource
from marketsim.model import Order
from marketsim.protocol import (
    PathError,
    RateLimiter,
    Session,
    canonical_stream,
    handle_control,
    parse_path,
)
from marketsim.symbols import parse_symbols, spec_for
from marketsim.units import _parse8_general, fmt8, parse8


@given(st.integers(min_value=-(10**20), max_value=10**20))
def test_fmt_parse_roundtrip(v: int) -> None:
    assert parse8(fmt8(v)) == v


def test_decimal_formats() -> None:
    assert fmt8(6639885000000) == "66398.85000000"
    assert parse8("0.1") == 10_000_000
    assert parse8("7599.00000000") == 759_900_000_000
    with pytest.raises(ValueError):
        parse8("1e5")


@given(st.text(alphabet="0123456789.+-eE \u0663", max_size=14))
def test_parse8_fast_path_agrees_with_the_general_parser(text: str) -> None:
    def parsed(parse: Any) -> int | str:
        try:
            return int(parse(text))
        except ValueError:
            return "error"

    assert parsed(parse8) == parsed(_parse8_general)


def test_symbols() -> None:
    assert parse_symbols("btcusdt, ETHUSDT,btcusdt") == ("BTCUSDT", "ETHUSDT")
    with pytest.raises(ValueError):
        parse_symbols("bad symbol")
    s = spec_for("FOOUSDT")
    assert s == spec_for("FOOUSDT") and s.quote_asset == "USDT" and s.base_asset == "FOO"
    assert s.initial_price % s.tick_size == 0


def _orders(**kw: Any) -> list[Order]:
    kw.setdefault("symbols", ("BTCUSDT", "ETHUSDT", "XRPUSDT"))
    src = SyntheticSource(SyntheticConfig(**kw))
    out = []
    while (o := src.next_order()) is not None:
        out.append(o)
    return out


def test_generator_deterministic_and_consistent() -> None:
    a = _orders(seed=3, max_trades=2000)
    b = _orders(seed=3, max_trades=2000)
    c = _orders(seed=4, max_trades=2000)
    assert a == b and a != c
    assert sum(len(o.qtys) for o in a) == 2000
    last: dict[str, int] = {}
    prev_t = 0
    for o in a:
        spec = spec_for(o.symbol)
        assert o.price % spec.tick_size == 0
        assert all(q % spec.step_size == 0 and q > 0 for q in o.qtys)
        if o.symbol in last:
            assert o.first_id == last[o.symbol] + 1
        last[o.symbol] = o.last_id
        assert o.time_us >= prev_t
        prev_t = o.time_us
        assert o.bid < o.ask


def test_zipf_skew_and_rate() -> None:
    orders = _orders(seed=1, max_trades=30_000, rate=1000.0)
    counts: dict[str, int] = {}
    for o in orders:
        counts[o.symbol] = counts.get(o.symbol, 0) + len(o.qtys)
    assert counts["BTCUSDT"] > counts["ETHUSDT"] > counts["XRPUSDT"]
    span_s = (orders[-1].time_us - orders[0].time_us) / 1e6
    assert 25 < span_s < 35  # 30,000 trades at 1000/s


def test_bursts_compress_time() -> None:
    calm = _orders(seed=1, max_trades=5000)
    bursty = _orders(seed=1, max_trades=5000, burst_prob=0.01, burst_mult=20.0)

    def span(os: list[Order]) -> int:
        return os[-1].time_us - os[0].time_us

    assert span(bursty) < span(calm) * 0.8


def test_payload_shapes() -> None:
    o = _orders(seed=2, max_trades=50)[0]
    for p in pl.trade_payloads(o):
        d = json.loads(p)
        assert list(d) == ["e", "E", "s", "t", "p", "q", "T", "m", "M"]
    agg = json.loads(pl.agg_trade_payload(o))
    assert list(agg) == ["e", "E", "s", "a", "p", "q", "f", "l", "T", "m", "M"]
    us = json.loads(pl.agg_trade_payload(o, micro=True))
    assert us["T"] == o.time_us and agg["T"] == o.time_us // 1000
    book = json.loads(pl.book_ticker_payload(o))
    assert list(book) == ["u", "s", "b", "B", "a", "A"]


def test_kline_emission_and_close() -> None:
    orders = _orders(seed=5, max_trades=3000, rate=20.0, symbols=("BTCUSDT",))
    k = pl.Kline1m("BTCUSDT")
    closed = []
    n_updates = 0
    for o in orders:
        for ms, _us in k.apply(o, True, False):
            d = json.loads(ms)
            n_updates += 1
            if d["k"]["x"]:
                closed.append(d["k"])
    assert closed, "a minute boundary must close a candle"
    first = closed[0]
    assert first["T"] - first["t"] == 59_999 and first["i"] == "1m"
    in_first = [o for o in orders if o.time_us // 60_000_000 * 60_000 == first["t"]]
    assert first["n"] == sum(len(o.qtys) for o in in_first)
    assert first["o"] == fmt8(in_first[0].price) and first["c"] == fmt8(in_first[-1].price)
    assert first["f"] == in_first[0].first_id and first["L"] == in_first[-1].last_id
    assert parse8(first["v"]) == sum(o.qty_total for o in in_first)


def test_parse_path_forms() -> None:
    assert parse_path("/ws").combined is False
    assert parse_path("/ws/BTCUSDT@trade").streams == ("btcusdt@trade",)
    assert parse_path("/ws/0").streams == ()
    p = parse_path("/stream?streams=btcusdt@trade/ethusdt@aggTrade&timeUnit=MICROSECOND")
    assert p is not None and p.combined and p.micro
    assert p.streams == ("btcusdt@trade", "ethusdt@aggTrade")
    assert parse_path("/stream?streams=btcusdt@trade/stream").streams == ("btcusdt@trade",)
    assert parse_path("/other") is None
    with pytest.raises(PathError):
        parse_path("/ws?timeUnit=SECONDS")
    with pytest.raises(PathError):
        parse_path(
            "/stream?streams=" + "/".join(f"s{i}usdt@trade" for i in range(3)), max_streams=2
        )
    assert canonical_stream("BTCUSDT@aggTrade") == "btcusdt@aggTrade"
    assert canonical_stream("!miniTicker@arr") == "!miniTicker@arr"
    assert canonical_stream("no spaces@trade x") is None


def _ctl(session: Session, msg: object) -> object:
    text = msg if isinstance(msg, str) else json.dumps(msg, separators=(",", ":"))
    return json.loads(handle_control(session, text).response)


def test_control_methods() -> None:
    s = Session(combined=False)
    sub = {"method": "SUBSCRIBE", "params": ["btcusdt@trade", "BTCUSDT@aggTrade"], "id": 1}
    assert _ctl(s, sub) == {"result": None, "id": 1}
    assert _ctl(s, {"method": "LIST_SUBSCRIPTIONS", "id": 3}) == {
        "result": ["btcusdt@trade", "btcusdt@aggTrade"],
        "id": 3,
    }
    assert _ctl(s, {"method": "UNSUBSCRIBE", "params": ["btcusdt@trade"], "id": 312}) == {
        "result": None,
        "id": 312,
    }
    assert _ctl(s, {"method": "GET_PROPERTY", "params": ["combined"], "id": 2}) == {
        "result": False,
        "id": 2,
    }
    assert _ctl(s, {"method": "SET_PROPERTY", "params": ["combined", True], "id": 5}) == {
        "result": None,
        "id": 5,
    }
    assert s.combined is True
    uuid = "0b7f3c1e-2d4a-4c55-9a43-0c0ffee00000"
    assert _ctl(s, {"method": "LIST_SUBSCRIPTIONS", "id": uuid})["id"] == uuid
    assert _ctl(s, {"method": "LIST_SUBSCRIPTIONS", "id": None})["result"] == ["btcusdt@aggTrade"]


def _error(session: Session, msg: object) -> tuple[int, str, object]:
    r = _ctl(session, msg)
    assert isinstance(r, dict) and set(r) == {"error", "id"}, r
    return r["error"]["code"], r["error"]["msg"], r["id"]


def test_control_errors() -> None:
    s = Session(combined=False, max_streams=3)
    assert _error(s, "{")[:2] == (3, "Invalid JSON: expected value at line 1 column 2")
    assert _error(s, "nope")[:2] == (3, "Invalid JSON: expected value at line 1 column 1")
    code, msg, _ = _error(s, '{"method":"FOO","id":1}')
    assert code == 2 and msg == (
        "Invalid request: unknown variant `FOO`, expected one of `SUBSCRIBE`, `UNSUBSCRIBE`, "
        "`LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY` at line 1 column 15"
    )
    assert _error(s, '{"params":[],"id":1}')[:2] == (
        2,
        "Invalid request: missing field `method` at line 1 column 20",
    )
    for bad_id in (
        {"method": "LIST_SUBSCRIPTIONS"},
        {"method": "LIST_SUBSCRIPTIONS", "id": 1.5},
        {"method": "LIST_SUBSCRIPTIONS", "id": "x" * 37},
        {"method": "LIST_SUBSCRIPTIONS", "id": True},
    ):
        assert _error(s, bad_id) == (
            2,
            "Invalid request: request ID must be an unsigned integer",
            None,
        )
    assert _error(s, {"method": "LIST_SUBSCRIPTIONS", "params": [1], "id": 4}) == (
        2,
        "Invalid request: too many parameters",
        4,
    )
    assert _error(s, {"method": "GET_PROPERTY", "params": ["combined", 1], "id": 4})[:2] == (
        2,
        "Invalid request: too many parameters",
    )
    assert _error(s, {"method": "SET_PROPERTY", "params": [1, True], "id": 4})[:2] == (
        2,
        "Invalid request: property name must be a string",
    )
    assert _error(s, {"method": "GET_PROPERTY", "id": 4})[:2] == (
        2,
        "Invalid request: property name must be a string",
    )
    assert _error(s, {"method": "GET_PROPERTY", "params": ["speed"], "id": 9}) == (
        0,
        "Unknown property",
        9,
    )
    assert _error(s, {"method": "SET_PROPERTY", "params": ["combined", "yes"], "id": 4})[:2] == (
        1,
        "Invalid value type: expected Boolean",
    )
    assert _error(s, {"method": "SUBSCRIBE", "params": ["not a stream"], "id": 6}) == (
        2,
        "Invalid request: invalid stream",
        6,
    )
    assert _error(s, {"method": "SUBSCRIBE", "params": [5], "id": 6})[0] == 2
    too_many = {"method": "SUBSCRIBE", "params": [f"s{i}usdt@trade" for i in range(4)], "id": 7}
    code, msg, id_ = _error(s, too_many)
    assert code == 2 and "too many streams" in msg and id_ == 7
    assert s.subscriptions == {}  # refused as a whole


def test_rate_limiter() -> None:
    r = RateLimiter(5, 1.0)
    assert all(r.hit(0.1 * i) for i in range(5))
    assert not r.hit(0.55)
    r2 = RateLimiter(5, 1.0)
    assert all(r2.hit(0.3 * i) for i in range(20))  # ~3.3/s is fine
    assert RateLimiter(0).hit(0.0)
