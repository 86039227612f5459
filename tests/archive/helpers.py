"""Building a real archive folder for tests: trades through the sink's core and store."""

from __future__ import annotations

import random
import zlib
from pathlib import Path

from cryptostream.archive.core import SinkCore
from cryptostream.archive.objects import ObjectRoot, ObjectStore
from cryptostream.archive.store import ArchiveStore, Store
from cryptostream.core.codec import encode_trade
from cryptostream.core.trades import Trade

DAY = 86_400_000
T0 = 1_718_000_000_000 - 1_718_000_000_000 % DAY  # a midnight


def trades(symbols: list[str], count: int, seed: int = 1, span_ms: int = 2 * DAY) -> list[Trade]:
    rng = random.Random(seed)
    ids = dict.fromkeys(symbols, 100)
    out = []
    for i in range(count):
        sym = rng.choice(symbols)
        ids[sym] += 1
        out.append(
            Trade(
                sym,
                ids[sym],
                f"{rng.uniform(1, 70000):.8f}",
                f"{rng.uniform(0.001, 5):.8f}",
                T0 + i * span_ms // count,
                T0 + i * span_ms // count,
                rng.random() < 0.5,
            )
        )
    return out


def store_at(root: Path | ObjectRoot) -> Store:
    if isinstance(root, ObjectRoot):
        return ObjectStore(root, "raw.trades", 8, 1024)
    return ArchiveStore(root, "raw.trades", 8, 1024)


def sink_all(
    root: Path | ObjectRoot, records: list[tuple[int, bytes | None]], flush_rows: int = 10**9
) -> SinkCore:
    """Feed (partition, value) records with consecutive offsets per partition, flush everything."""
    core = SinkCore(flush_rows, 3600.0)
    st = store_at(root)
    offsets: dict[int, int] = {}
    for partition, value in records:
        offset = offsets.get(partition, 0)
        offsets[partition] = offset + 1
        core.add(partition, offset, value, 0.0)
        for p in core.due(0.0):
            st.commit(core.take(p))
    for p in core.due(0.0, everything=True):
        st.commit(core.take(p))
    return core


def values(ts: list[Trade]) -> list[tuple[int, bytes | None]]:
    return [(zlib.crc32(t.symbol.encode()) % 4, encode_trade(t, t.trade_time * 1000)) for t in ts]
