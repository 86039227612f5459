"""Redis connections of the services and tools, on one node or a Redis Cluster.

``CSP_REDIS_CLUSTER=true`` makes ``CSP_REDIS_URL`` the address of any one node of a Redis
Cluster: redis-py's ``RedisCluster`` discovers the others, routes every command to the master
of its key's slot and follows the cluster's MOVED/ASK redirections and failovers. The layout
(core/keys.py) keeps each atomic write within one slot, so the same calls run on both.
``CSP_REDIS_CLUSTER_NODES`` adds seed nodes (``Settings.redis_seeds``): a client starts from
whichever answers first, so one seed being down does not hold a starting process up.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    NoScriptError,
    SlotNotCoveredError,
    TryAgainError,
)

from cryptostream.core.keys import LAYOUT_KEY, LAYOUT_VERSION, layout_doc, offsets_key

log = logging.getLogger("cryptostream.redis")

Client = redis.Redis | RedisCluster

# "Redis is not answering right now": the processor retries these (with backoff) instead of
# stopping. On a cluster, during a failover: CLUSTERDOWN, TRYAGAIN, MASTERDOWN, a slot without
# a master in the client's map, redirections that did not settle, a node that refuses
# connections.
RETRYABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    ClusterDownError,
    ClusterError,
    TryAgainError,
    SlotNotCoveredError,
)


def make_client(
    url: str,
    cluster: bool,
    *,
    seeds: Sequence[tuple[str, int]] = (),
    decode_responses: bool = False,
    **options: Any,
) -> Client:
    """A client of the one node at ``url``, or (``cluster``) of the cluster it belongs to,
    discovered from ``url``'s node or any of ``seeds`` (``url``'s scheme, password and options
    apply to all)."""
    if cluster:
        startup = [ClusterNode(host, port) for host, port in seeds]  # type: ignore[no-untyped-call]
        return RedisCluster.from_url(
            url, startup_nodes=startup, decode_responses=decode_responses, **options
        )
    return redis.Redis.from_url(url, decode_responses=decode_responses, **options)


def node_url(url: str, host: str, port: int) -> str:
    """``url`` pointed at another node (same scheme, credentials, database and options)."""
    parts = urlsplit(url)
    auth, at, _ = parts.netloc.rpartition("@")
    address = f"[{host}]" if ":" in host else host
    return urlunsplit(parts._replace(netloc=f"{auth}{at}{address}:{port}"))


def is_cluster(client: object) -> bool:
    return isinstance(client, RedisCluster)


def stored_offsets(
    client: Client, topic: str, partitions: Iterable[int], layout_partitions: int
) -> dict[int, int]:
    """The last applied offset of each of ``partitions`` (field P of ``offsets:{pP}:TOPIC``),
    absent ones left out; one pipelined round trip (per node on a cluster)."""
    wanted = list(partitions)
    if not wanted:
        return {}
    pipe = client.pipeline(transaction=False)
    for p in wanted:
        pipe.hget(offsets_key(topic, p, layout_partitions), str(p))
    values = pipe.execute()
    return {p: int(v) for p, v in zip(wanted, values, strict=True) if v is not None}


class LayoutMismatch(RuntimeError):
    """Redis holds views written with another layout (another ``CSP_PARTITIONS``)."""


def ensure_layout(client: Client, partitions: int) -> None:
    """Record the layout the views are written with, or refuse one that differs: a symbol's
    keys and its home partition depend on the partition count, so views written with another
    count are not where this process would look (``csp rebuild`` rewrites them)."""
    want = layout_doc(partitions)
    client.set(LAYOUT_KEY, want, nx=True)
    have = client.get(LAYOUT_KEY)
    if have is None:
        return
    text = have.decode() if isinstance(have, bytes) else str(have)
    if text != want.decode():
        raise LayoutMismatch(
            f"Redis holds views written with the layout {text}, this process writes "
            f"{want.decode()} (CSP_PARTITIONS={partitions}, layout version {LAYOUT_VERSION}): "
            "run `csp rebuild` to rewrite the views with the configured partitions"
        )


def layout_partitions(client: Client) -> int | None:
    """The partition count the stored views were written with (None: no layout recorded)."""
    have = client.get(LAYOUT_KEY)
    if have is None:
        return None
    doc = orjson.loads(have)
    return int(doc["partitions"]) if doc.get("version") == LAYOUT_VERSION else None


class ScriptRunner:
    """One Lua script, called once or many times in one pipelined round trip (one per node on a
    cluster). A node that does not know the script (a fresh master after a failover: the
    script cache is not replicated) gets it loaded, and the calls it refused are sent again --
    a refused EVALSHA ran nothing, so resending is safe."""

    def __init__(self, client: Client, text: str) -> None:
        self.client = client
        self.text = text
        self.script = client.register_script(text)

    def __call__(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self.script(keys=keys, args=args)

    def many(self, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list[Any]:
        if len(calls) == 1:
            keys, args = calls[0]
            return [self.script(keys=keys, args=args)]
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for _attempt in range(3):
            pipe = self.client.pipeline(transaction=False)
            for i in todo:
                keys, args = calls[i]
                # (not pipe.evalsha: redis-py's cluster pipeline refuses that method, but routes
                # the command itself by its keys' slot)
                pipe.execute_command("EVALSHA", self.script.sha, len(keys), *keys, *args)
            results = pipe.execute(raise_on_error=False)
            missing = []
            for i, result in zip(todo, results, strict=True):
                if isinstance(result, NoScriptError):
                    missing.append(i)
                elif isinstance(result, Exception):
                    raise result
                else:
                    replies[i] = result
            if not missing:
                return replies
            self.script.sha = self.client.script_load(self.text)
            todo = missing
        raise NoScriptError("the apply script could not be loaded on every node")
