"""The Redis layout (core/keys.py): Kafka's partitioner, hash tags, one slot per apply."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot as redis_py_key_slot

from cryptostream.core.keys import (
    CLUSTER_SLOTS,
    apply_keys,
    book_apply_keys,
    book_key,
    book_side_key,
    candles_1m_key,
    home_partition,
    key_slot,
    offsets_key,
    outbox_key,
    partition_tag,
    price_key,
    stats_key,
    symbols_key,
)
from cryptostream.core.partitioner import kafka_partition, murmur2

# Kafka's own test vectors (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java,
# testMurmur2): the Java client's Utils.murmur2, which librdkafka's murmur2 partitioners match.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "expected"), sorted(JAVA_MURMUR2.items()))
def test_murmur2_equals_the_java_clients(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


def test_partition_is_the_positive_hash_modulo_the_count() -> None:
    assert kafka_partition(b"foobar", 8) == (-790332482 & 0x7FFFFFFF) % 8
    assert kafka_partition(b"", 3) == (murmur2(b"") & 0x7FFFFFFF) % 3
    with pytest.raises(ValueError):
        kafka_partition(b"x", 0)


@given(st.binary(max_size=64))
def test_murmur2_is_a_signed_32_bit_int(key: bytes) -> None:
    assert -(2**31) <= murmur2(key) < 2**31


@given(st.text(max_size=30))
def test_key_slot_is_redis_clusters(key: str) -> None:
    assert key_slot(key) == redis_py_key_slot(key.encode())


@pytest.mark.parametrize("partitions", [1, 3, 8, 12, 64])
def test_tags_spread_partitions_evenly_over_equal_slot_ranges(partitions: int) -> None:
    slots = [key_slot(partition_tag(p, partitions)) for p in range(partitions)]
    assert len(set(slots)) == partitions  # one slot each: never two partitions in one slot
    masters = 3
    owners = [slot * masters // CLUSTER_SLOTS for slot in slots]
    counts = [owners.count(m) for m in range(masters)]
    assert max(counts) - min(counts) <= 1, counts
    tag = partition_tag(3, 8)
    assert tag.startswith("{p3") and tag.endswith("}") and tag == partition_tag(3, 8)


def test_every_key_of_a_symbol_and_its_partitions_fence_share_one_slot() -> None:
    n = 8
    for symbol in [f"S{i:04d}USDT" for i in range(300)] + ["BTCUSDT", "ETHUSDT"]:
        home = home_partition(symbol, n)
        assert home == kafka_partition(symbol.encode(), n)
        slot = key_slot(partition_tag(home, n))
        keys = [
            price_key(symbol, n),
            candles_1m_key(symbol, n),
            stats_key(symbol, n),
            book_key(symbol, n),
            book_side_key(symbol, "bids", n),
            book_side_key(symbol, "asks", n),
            symbols_key(home, n),
            offsets_key("raw.trades", home, n),
            offsets_key("raw.depth", home, n),
            outbox_key("raw.trades", home, n),
        ]
        assert {key_slot(k) for k in keys} == {slot}, symbol
        assert price_key(symbol, n) == f"price:{partition_tag(home, n)}:{symbol}"


def test_an_apply_call_of_one_partition_touches_one_slot() -> None:
    n = 8
    symbols = [s for s in (f"X{i}USDT" for i in range(500)) if home_partition(s, n) == 5]
    assert len(symbols) > 20
    assert len({key_slot(k) for k in apply_keys("raw.trades", [5], symbols, n)}) == 1
    assert len({key_slot(k) for k in book_apply_keys("raw.depth", 5, symbols, n)}) == 1


def test_cluster_settings_refuse_what_a_cluster_cannot_do() -> None:
    from pydantic import ValidationError

    from cryptostream.config import Settings

    assert Settings(redis_cluster=True).apply_style == "partition"
    assert Settings().apply_style == "auto"  # one node: chosen per batch (below)
    assert Settings(processor_apply="batch").apply_style == "batch"  # one node: allowed
    assert Settings(processor_apply="partition").apply_style == "partition"
    for bad, message in (
        ({"redis_url": "redis://127.0.0.1:7000/2"}, "database 0 only"),
        ({"processor_apply": "batch"}, "needs one Redis node"),
        ({"query_price_view": True}, "cluster bus"),
    ):
        with pytest.raises(ValidationError, match=message):
            Settings(redis_cluster=True, **bad)  # type: ignore[arg-type]


def test_auto_applies_small_batches_in_one_call_and_large_ones_per_partition() -> None:
    from cryptostream.processor.service import AUTO_ONE_CALL_RECORDS, one_call

    assert one_call("auto", 1) and one_call("auto", AUTO_ONE_CALL_RECORDS)
    assert not one_call("auto", AUTO_ONE_CALL_RECORDS + 1)
    assert one_call("batch", 10**6) and not one_call("partition", 1)
