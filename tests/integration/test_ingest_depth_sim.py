"""Simulator -> ``csp ingest`` (depth on) -> ``raw.depth`` -> read back as a consumer does, against
the real broker and the real simulator's synthetic order books (``@depth@100ms`` diffs and REST
``/api/v3/depth`` from the same served book).

Without faults the rebuilt book of each symbol equals the simulator's REST snapshot at the same
update id once the market has ended, with one snapshot and no break. With lost diffs, malformed
frames and stale snapshots, the chain on the topic still never breaks for a consumer, every loss
is a recorded break followed by a resync, and malformed depth frames are in the DLQ with the
reason.
"""

from __future__ import annotations

import re
from collections import Counter
from decimal import Decimal

import httpx
import orjson
import pytest

from cryptostream.config import Settings
from cryptostream.core.depth import TopicBook, decode_depth
from cryptostream.ingest.gaps import decode_depth_break
from cryptostream.stack.pipeline import Pipeline, SimulatorHandle, wait_for
from cryptostream.stack.supervisor import ManagedProcess, free_port
from cryptostream_lab.reliability.gaps import summarize
from tests.conftest import Env
from tests.integration.test_ingest_depth import depth_env  # noqa: F401 (the fixture)
from tests.kafka_helpers import read_all

pytestmark = pytest.mark.integration

SYMBOLS = ["BTCUSDT", "ETHUSDT"]


def start(
    pipeline: Pipeline, sim_args: list[str], port: int
) -> tuple[SimulatorHandle, ManagedProcess]:
    market = ["--rate=300", "--max-trades=3000", "--wait-for-subscribers=2"]
    sim = pipeline.start_simulator(["--symbols", ",".join(SYMBOLS), *market, *sim_args])
    ingest = pipeline.start_ingest(
        sim.ws_url,
        CSP_SYMBOLS=",".join(SYMBOLS),
        CSP_DEPTH_SYMBOLS="*",
        CSP_INGEST_TAIL_CHECK_S="0",
        CSP_INGEST_METRICS_PORT=str(port),
    )
    return sim, ingest


def consume(settings: Settings) -> tuple[dict[str, TopicBook], dict[str, list[str]], int]:
    """The whole depth topic read back per symbol: books, what each record did, records."""
    books: dict[str, TopicBook] = {s: TopicBook() for s in SYMBOLS}
    outcomes: dict[str, list[str]] = {s: [] for s in SYMBOLS}
    values = read_all(settings, settings.depth_topic)
    for value in values:
        record = decode_depth(value)
        outcomes[record.symbol].append(books[record.symbol].apply(record))
    return books, outcomes, len(values)


def settle(settings: Settings, sim: SimulatorHandle) -> dict[str, int]:
    """Wait for the market's end and for the topic to stop growing; the final update ids."""
    wait_for(lambda: sim.stats()["done"], timeout=120, what="the end of the simulated market")
    counts: list[int] = []

    def quiet() -> bool:
        counts.append(consume(settings)[2])
        return len(counts) >= 3 and counts[-1] == counts[-3] > 0

    wait_for(quiet, timeout=60, what="a depth topic that stopped growing", interval=1.0)
    books = sim.stats()["books"]
    return {s: books[s]["last_update_id"] for s in SYMBOLS}  # type: ignore[index]


def levels(book: TopicBook) -> dict[str, dict[Decimal, Decimal]]:
    return {
        side: {Decimal(p): Decimal(q) for p, q in lv.values()}
        for side, lv in (("bids", book.book.bids), ("asks", book.book.asks))
    }


def rest_book(sim: SimulatorHandle, symbol: str) -> tuple[int, dict[str, dict[Decimal, Decimal]]]:
    doc = httpx.get(f"{sim.rest_url}/api/v3/depth?symbol={symbol}&limit=5000", timeout=10).json()
    book = {side: {Decimal(p): Decimal(q) for p, q in doc[side]} for side in ("bids", "asks")}
    return doc["lastUpdateId"], book


def metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    found = re.search(rf"^csp_ingest_{re.escape(name)} (\S+)$", text, flags=re.M)
    return float(found.group(1)) if found else 0.0


def test_the_simulators_books_reach_the_topic_exactly(
    depth_env: tuple[Env, Settings, Pipeline],  # noqa: F811
) -> None:
    _env, settings, pipeline = depth_env
    port = free_port()
    sim, ingest = start(pipeline, [], port)
    final = settle(settings, sim)
    books, outcomes, _n = consume(settings)
    for symbol in SYMBOLS:
        assert outcomes[symbol][0] == "snapshot" and outcomes[symbol].count("snapshot") == 1
        assert set(outcomes[symbol]) == {"snapshot", "applied"}, Counter(outcomes[symbol])
        assert books[symbol].synced and books[symbol].breaks == 0
        last_id, book = rest_book(sim, symbol)
        assert books[symbol].book.last_update_id == last_id == final[symbol]
        assert levels(books[symbol]) == book and not books[symbol].book.crossed()
    assert read_all(settings, settings.gap_topic) == []  # no break, no trade gap
    assert metric(port, "depth_symbols_live") == len(SYMBOLS) and ingest.alive()


def test_lost_and_malformed_diffs_and_stale_snapshots_are_resynced_never_published(
    depth_env: tuple[Env, Settings, Pipeline],  # noqa: F811
) -> None:
    _env, settings, pipeline = depth_env
    port = free_port()
    faults = ["--fault-depth-gap-rate=0.02", "--fault-malformed-rate=0.01", "--fault-seed=7"]
    faults += ["--fault-stale-snapshots=3", "--fault-stale-snapshot-age=1"]
    sim, ingest = start(pipeline, faults, port)
    final = settle(settings, sim)
    books, outcomes, _n = consume(settings)
    gap_values = read_all(settings, settings.gap_topic)
    breaks = [decode_depth_break(v) for v in gap_values if b'"status":"depth_break"' in v]
    per_symbol = Counter(b.symbol for b in breaks)
    assert breaks and {b.cause for b in breaks} == {"depth_gap"}, breaks
    for symbol in SYMBOLS:
        # the consumer never sees a break: every record is a snapshot or continues the chain
        assert set(outcomes[symbol]) <= {"snapshot", "applied"}, Counter(outcomes[symbol])
        assert books[symbol].breaks == 0 and outcomes[symbol][0] == "snapshot"
        # one snapshot at the start and one per break, the last one unless no diff came after
        snapshots = outcomes[symbol].count("snapshot")
        assert snapshots - 1 <= per_symbol[symbol] <= snapshots, (symbol, snapshots, per_symbol)
        if books[symbol].book.last_update_id == final[symbol]:
            last_id, book = rest_book(sim, symbol)
            assert last_id == final[symbol] and levels(books[symbol]) == book
    assert metric(port, 'depth_breaks_total{cause="depth_gap"}') == len(breaks)
    published = sum(o.count("snapshot") for o in outcomes.values())
    assert metric(port, "depth_snapshots_total") == published
    # malformed depth frames: in the DLQ with the reason (trade frames are malformed too)
    dead = [orjson.loads(v) for v in read_all(settings, settings.dlq_topic)]
    depth_dead = [d for d in dead if "@depth" in d["source"]]
    assert depth_dead and all(d["reason"] and d["stage"] == "ingest" for d in depth_dead)
    assert metric(port, "depth_malformed_total") == len(depth_dead)
    audit = summarize(gap_values)  # the trade-gap audit: depth breaks are not lost trades
    assert audit.invalid == 0
    assert ingest.alive(), ingest.log_tail()
