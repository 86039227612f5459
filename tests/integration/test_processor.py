"""Processors as real processes on the real broker and Redis."""

from __future__ import annotations

import orjson
import pytest

from cryptostream.core.trades import Trade
from cryptostream.stack.pipeline import Pipeline, wait_for
from tests.conftest import Env
from tests.kafka_helpers import produce, read_all, synthetic_trades, watermarks

pytestmark = pytest.mark.integration

SYMBOLS = [f"SYM{i}USDT" for i in range(40)]


def _last_by_symbol(trades: list[Trade]) -> dict[str, Trade]:
    last: dict[str, Trade] = {}
    for t in trades:
        if t.symbol not in last or last[t.symbol].trade_id < t.trade_id:
            last[t.symbol] = t
    return last


def _pipeline(env: Env) -> Pipeline:
    return Pipeline(env.workdir, env.settings.kafka_bootstrap, env.settings.redis_url, SYMBOLS,
                    extra_env=env.env)  # fmt: skip


def _all_applied(env: Env) -> bool:
    stored = env.redis.hgetall(f"offsets:{env.settings.topic}")
    return all(
        int(stored.get(str(p), -1)) == high - 1
        for p, (low, high) in watermarks(env.settings).items()
        if high > low
    )


def test_processors_share_partitions_apply_latest_and_dead_letter_poison(isolated: Env) -> None:
    trades = synthetic_trades(SYMBOLS, 20_000, seed=3)
    poison = [(b"SYM1USDT", b"not json"), (b"SYM2USDT", b'{"v": 99}'),
              (b"SYM3USDT", orjson.dumps({"v": 1, "symbol": "SYM3USDT"}))]  # fmt: skip
    produce(isolated.settings, trades, poison)
    pipeline = _pipeline(isolated)
    try:
        pipeline.start_processor()
        pipeline.start_processor()
        wait_for(
            lambda: pipeline.check_alive() or _all_applied(isolated), 60, "all offsets applied"
        )
        for symbol, trade in _last_by_symbol(trades).items():
            stored = isolated.redis.hgetall(f"price:{symbol}")
            assert stored["price"] == trade.price and int(stored["trade_id"]) == trade.trade_id
            assert stored["ingest_time_us"] == "1" and int(stored["update_time"]) > 0
        assert isolated.redis.smembers("symbols") == set(SYMBOLS)
        dead = [orjson.loads(v) for v in read_all(isolated.settings, isolated.settings.dlq_topic)]
        assert sorted(d["reason"].split(":")[0].split(" ")[0] for d in dead) == [
            "missing",
            "not",
            "unsupported",
        ]
        assert all(d["topic"] == isolated.settings.topic and d["offset"] >= 0 for d in dead)
        pipeline.check_alive()
    finally:
        pipeline.stop()


def test_restart_resumes_from_redis_offsets_not_kafka(isolated: Env) -> None:
    first = synthetic_trades(SYMBOLS, 5_000, seed=4)
    produce(isolated.settings, first)
    pipeline = _pipeline(isolated)
    try:
        proc = pipeline.start_processor()
        wait_for(lambda: _all_applied(isolated), 60, "first round applied")
        proc.kill()  # SIGKILL: no clean shutdown, Kafka commits may lag behind Redis
        # An older trade than what Redis holds must never win, even if it arrives later.
        stale = Trade("SYM0USDT", 1, "0.00000001", "1", 1, 1, False)
        second = synthetic_trades(SYMBOLS, 5_000, seed=5)
        second = [Trade(t.symbol, t.trade_id + 10_000, t.price, t.quantity, t.trade_time,
                        t.event_time, t.buyer_is_maker) for t in second]  # fmt: skip
        produce(isolated.settings, [stale, *second])
        pipeline.start_processor()
        wait_for(lambda: _all_applied(isolated), 60, "second round applied")
        for symbol, trade in _last_by_symbol(first + second).items():
            assert isolated.redis.hget(f"price:{symbol}", "price") == trade.price
    finally:
        pipeline.stop()
