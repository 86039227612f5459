"""Building a real archive for tests: trades and depth records through the sink's cores and
stores."""

from __future__ import annotations

import random
import zlib
from decimal import Decimal
from pathlib import Path

from cryptostream.archive import layout
from cryptostream.archive.core import DepthSinkCore, SinkCore
from cryptostream.archive.objects import ObjectRoot, ObjectStore
from cryptostream.archive.store import ArchiveStore, Store
from cryptostream.core.codec import encode_trade
from cryptostream.core.depth import TopicBook, decode_depth, encode_diff, encode_snapshot
from cryptostream.core.orderbook import Book, DepthDiff, DepthSnapshot
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


def _price(rng: random.Random, mid: int, side: int) -> str:
    ticks = rng.randint(1, 400)
    # now and then 11 digits: more than CSP_ARCHIVE_SCALE's 8
    digits = 11 if rng.random() < 0.002 else rng.choice([2, 4, 8])
    value = (
        Decimal(mid)
        + side * Decimal(ticks) / 100
        + side * Decimal(rng.randint(0, 99)) / (10**digits)
    )
    return f"{value:.{digits}f}"


def _qty(rng: random.Random) -> str:
    return f"{Decimal(rng.randint(1, 10**6)) / 10 ** rng.choice([3, 8]):f}"


def depth_stream(
    symbol: str, count: int, seed: int, start_us: int, span_us: int
) -> list[tuple[int, bytes]]:
    """(ingest_time_us, value) records as ingest publishes them: a snapshot, chained diffs (a
    quantity of 0 removes a level), now and then a gap followed by a fresh snapshot."""
    rng = random.Random(seed)
    mid = rng.randint(100, 70_000)
    truth = Book()
    last = rng.randint(1000, 10**6)
    out: list[tuple[int, bytes]] = []

    def snapshot(t: int) -> bytes:
        bids, asks = truth.top(10**6)
        return encode_snapshot(symbol, DepthSnapshot(last, tuple(bids), tuple(asks)), t)

    first_bids = tuple((_price(rng, mid, -1), _qty(rng)) for _ in range(40))
    first_asks = tuple((_price(rng, mid, +1), _qty(rng)) for _ in range(40))
    truth.reset(DepthSnapshot(last, first_bids, first_asks))
    for i in range(count):
        t = start_us + i * span_us // count
        if i == 0:
            out.append((t, snapshot(t)))
            continue
        gap = rng.random() < 0.02
        first = last + (rng.randint(2, 9) if gap else 1)
        final = first + rng.randint(0, 3)
        bids: list[tuple[str, str]] = []
        asks: list[tuple[str, str]] = []
        for _ in range(rng.randint(0, 5)):
            side, levels, sign = rng.choice([(truth.bids, bids, -1), (truth.asks, asks, +1)])
            if side and rng.random() < 0.3:  # remove an existing level
                levels.append((side[rng.choice(list(side))][0], "0"))
            else:
                levels.append((_price(rng, mid, sign), _qty(rng)))
        diff = DepthDiff(symbol, first, final, tuple(bids), tuple(asks), t // 1000)
        truth.apply(diff)
        last = final
        out.append((t, encode_diff(diff, t)))
        if gap:  # ingest resyncs after a break: a snapshot of the exchange's book
            out.append((t + 1, snapshot(t + 1)))
    return out


def archive_depth(
    root: Path | ObjectRoot, records: list[tuple[int, bytes | None]], flush_rows: int
) -> None:
    """Records through the sink's depth core and store, flushed every ``flush_rows``."""
    core = DepthSinkCore(flush_rows, 3600.0)
    store: Store
    if isinstance(root, ObjectRoot):
        store = ObjectStore(root, "raw.depth", 8, 1024, dataset=layout.DEPTH)
    else:
        store = ArchiveStore(root, "raw.depth", 8, 1024, dataset=layout.DEPTH)
    for offset, (_, value) in enumerate(records):
        core.add(0, offset, value, 0.0)
        for p in core.due(0.0):
            store.commit(core.take(p))
    for p in core.due(0.0, everything=True):
        store.commit(core.take(p))
    assert store.unrepresentable == 0


def reference_book(records: list[tuple[int, bytes]], at_ms: int) -> TopicBook | None:
    """TopicBook over every record from the first, up to the last one received by ``at_ms``
    (None: no record by then)."""
    cut = max((i for i, (t, _) in enumerate(records) if t <= at_ms * 1000 + 999), default=-1)
    if cut < 0:
        return None
    ref = TopicBook()
    for _, value in records[: cut + 1]:
        ref.apply(decode_depth(value))
    return ref
