"""Kafka's key partitioner, so that readers can tell a symbol's partition from its name.

Producers here use librdkafka's ``murmur2_random`` partitioner (kafka_clients.py), which is the
Java client's default for keyed records: ``(murmur2(key) & 0x7fffffff) % partitions``, with
the Java client's murmur2 (seed ``0x9747b28c``) over the key's bytes. The Redis layout
(core/keys.py) puts a symbol's keys under its partition's hash tag, so the query API computes
the tag from the symbol alone, without scanning.
"""

from __future__ import annotations

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """The Java client's ``Utils.murmur2`` as a signed 32-bit int (as Java returns it)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    tail = length & ~3
    for i in range(0, tail, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def kafka_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java; librdkafka ``murmur2_random``) picks
    for a keyed record."""
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    return (murmur2(key) & 0x7FFFFFFF) % partitions
