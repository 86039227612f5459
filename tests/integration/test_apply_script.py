"""The Lua apply script on real Redis: atomic views + offsets, fencing of re-applied batches."""

from __future__ import annotations

import orjson
import pytest
import redis

from cryptostream.core.codec import encode_trade
from cryptostream.core.trades import Trade
from cryptostream.processor.batch import Batch, RawRecord, parse_conflicts
from cryptostream.processor.service import APPLY_SCRIPT
from tests.conftest import Env

pytestmark = pytest.mark.integration


def _batch(partition: int, first_offset: int, trades: list[Trade]) -> Batch:
    batch = Batch()
    for i, trade in enumerate(trades):
        batch.add(
            RawRecord(partition, first_offset + i, encode_trade(trade, 1_718_000_000_123_456))
        )
    return batch


def test_apply_then_reapply_is_fenced(isolated: Env) -> None:
    r = redis.Redis.from_url(isolated.settings.redis_url)
    script = r.register_script(APPLY_SCRIPT)
    key = f"offsets:{isolated.settings.topic}"
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("updates:price")
    pubsub.get_message(timeout=1)

    trades = [
        Trade("BTCUSDT", 10, "1.5", "2", 100, 101, False),
        Trade("BTCUSDT", 11, "1.6", "2", 102, 103, True),
    ]
    batch = _batch(2, 50, trades)
    assert script(args=[key, "999", batch.script_payload(999)]) == [1, 1]
    assert r.hget(key, "2") == b"51"
    assert r.hget("price:BTCUSDT", "price") == b"1.6"
    assert r.hget("price:BTCUSDT", "ingest_time_us") == b"1718000000123456"  # 16 digits intact
    message = pubsub.get_message(timeout=5)
    assert message is not None
    assert orjson.loads(message["data"]) == [
        {"symbol": "BTCUSDT", "price": "1.6", "quantity": "2", "trade_id": 11,
         "trade_time": 102, "event_time": 103, "update_time": 999}
    ]  # fmt: skip

    # The same batch again (a zombie, or a retry after a lost reply): nothing changes.
    newer = _batch(2, 51, [Trade("BTCUSDT", 12, "9.9", "1", 104, 105, False)])
    reply = script(args=[key, "1000", newer.script_payload(1000)])
    assert parse_conflicts(reply) == {2: 51}
    assert r.hget("price:BTCUSDT", "price") == b"1.6"

    # An older trade id never overwrites a newer one, but its offset still counts as applied.
    older = _batch(2, 52, [Trade("BTCUSDT", 5, "0.1", "1", 1, 1, False)])
    assert script(args=[key, "1001", older.script_payload(1001)]) == [1, 0]
    assert r.hget("price:BTCUSDT", "price") == b"1.6" and r.hget(key, "2") == b"52"
    pubsub.close()
    r.close()
