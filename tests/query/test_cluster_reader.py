"""The ``/price`` fast path on a Redis Cluster (query/fastredis.py ClusterReader): each command
to the master of its slot, MOVED and ASK followed, the slot map refreshed."""

from __future__ import annotations

import asyncio

import pytest
import redis

from cryptostream.core.keys import key_slot
from cryptostream.query.fastredis import ClusterReader, encode
from cryptostream.stack.redis_cluster import RedisCluster, _command

KEYS = [f"price:{{p{i}}}:S{i}USDT" for i in range(40)]


@pytest.fixture
def cluster_keys(redis_cluster: RedisCluster) -> dict[str, str]:
    client = redis.RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    client.flushall()
    for i, key in enumerate(KEYS):
        client.hset(key, "price", str(i))
    client.close()
    return {key: str(i) for i, key in enumerate(KEYS)}


async def _read(reader: ClusterReader, keys: list[str]) -> list[bytes | None]:
    return list(
        await asyncio.gather(
            *(reader.send(encode(b"HGET", k.encode(), b"price"), key_slot(k)) for k in keys)
        )
    )


async def test_a_stale_slot_map_is_corrected_by_moved(
    redis_cluster: RedisCluster, cluster_keys: dict[str, str]
) -> None:
    reader = ClusterReader(redis_cluster.url, timeout=2.0)
    try:
        await reader.refresh()
        assert reader.slots[key_slot(KEYS[0])] is not None
        seed = reader.seed
        reader.slots = [seed] * len(reader.slots)  # as if every slot lived on the seed
        values = await _read(reader, KEYS)
        assert [v.decode() if v else None for v in values] == list(cluster_keys.values())
        assert reader.redirects > 0  # the other masters' keys came back MOVED
        await asyncio.sleep(0.3)  # the refresh a MOVED schedules
        await reader.refresh(force=True)
        before = reader.redirects
        await _read(reader, KEYS)
        assert reader.redirects == before  # the map is right again: no more redirections
        assert len(reader.nodes) == 3  # one pipelined connection per master
    finally:
        reader.close()


async def test_a_slot_being_migrated_is_followed_with_asking(
    redis_cluster: RedisCluster, cluster_keys: dict[str, str]
) -> None:
    key = KEYS[5]
    slot = key_slot(key)
    source = redis_cluster.master_of(slot)
    target = next(p for p in redis_cluster.ports[:3] if p != source)
    src, dst = redis_cluster.client(source), redis_cluster.client(target)
    src_id, dst_id = redis_cluster.ids[source], redis_cluster.ids[target]
    reader = ClusterReader(redis_cluster.url, timeout=2.0)
    try:
        await reader.refresh()
        _command(dst, "CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        _command(src, "CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        _command(src, "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", key)
        # the source answers ASK for the moved key; the reader asks the target, this once
        (value,) = await _read(reader, [key])
        assert value == cluster_keys[key].encode()
        assert reader.redirects == 1
        assert reader.slots[slot] == ("127.0.0.1", source)  # an ASK does not move the slot
    finally:
        reader.close()
        # undo (the cluster is shared): the key off the importing node (ASKING and DEL on one
        # connection), the slot stable on both, the key back on its owner
        pipe = dst.pipeline(transaction=False)
        pipe.execute_command("ASKING")
        pipe.execute_command("DEL", key)
        pipe.execute()
        for client in (src, dst):
            _command(client, "CLUSTER", "SETSLOT", slot, "STABLE")
            client.close()
        restore = redis.RedisCluster.from_url(redis_cluster.url)
        restore.hset(key, "price", cluster_keys[key])
        restore.close()
