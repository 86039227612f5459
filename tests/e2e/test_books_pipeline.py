"""Order books on the whole path, from the genuine recordings of ``../shared/data`` (issue 16).

The simulator replays the BTCUSDT and ETHUSDT 2024-08-08 recordings (their REST snapshot line and
``@depth@100ms`` diffs; it answers REST ``/api/v3/depth`` from the replayed book) -> ``csp
ingest`` with depth on -> ``raw.depth`` -> ``csp processor`` with books on -> Redis -> ``csp
query``. At the end ``GET /book/{symbol}?depth=5000`` must equal, level by level and text by
text, the book rebuilt here from the file alone (its snapshot, then the diffs that continue it,
in plain dicts: none of the project's book code), and ``checker.check_books`` must find Redis
equal to its own rebuild from the topic.
"""

from __future__ import annotations

import gzip
import json
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from cryptostream.stack.pipeline import Pipeline, wait_for
from cryptostream_lab.checker import check_books
from tests.conftest import Env
from tests.kafka_helpers import read_all
from tests.shared_data import DEPTH_RECORDINGS, recordings

pytestmark = pytest.mark.e2e

Levels = list[list[str]]


def file_book(path: Path) -> tuple[str, int, Levels, Levels]:
    """(symbol, last update id, bids best first, asks best first) of the recording's final
    book: the snapshot line, then every diff that goes past it (those received before the
    snapshot included, as Binance's procedure says), the texts as the exchange wrote them."""
    snapshot: dict[str, object] | None = None
    early: list[dict[str, object]] = []
    diffs: list[dict[str, object]] = []
    symbol = ""
    with gzip.open(path, "rt") as f:
        for line in f:
            frame = json.loads(line.partition(" ")[2])
            if "lastUpdateId" in frame:
                snapshot = frame
            elif "@depth" in str(frame.get("stream")):
                symbol = frame["data"]["s"]
                (diffs if snapshot is not None else early).append(frame["data"])
    assert snapshot is not None and symbol, f"{path} holds no snapshot line or no diff"
    last = int(snapshot["lastUpdateId"])  # type: ignore[call-overload]
    book: dict[str, dict[Decimal, tuple[str, str]]] = {
        side: {Decimal(p): (p, q) for p, q in snapshot[side]}  # type: ignore[attr-defined]
        for side in ("bids", "asks")
    }
    applied = 0
    for data in early + diffs:
        first, final = int(data["U"]), int(data["u"])  # type: ignore[call-overload]
        if final <= last:
            continue
        assert first <= last + 1, f"{path}: a gap in the update ids after {last}"
        for side, key in (("bids", "b"), ("asks", "a")):
            for p, q in data[key]:  # type: ignore[attr-defined]
                if Decimal(q) == 0:
                    book[side].pop(Decimal(p), None)
                else:
                    book[side][Decimal(p)] = (p, q)
        last = final
        applied += 1
    assert applied > 1000  # the file is what the README says: thousands of diffs continue it
    bids = [list(book["bids"][p]) for p in sorted(book["bids"], reverse=True)]
    asks = [list(book["asks"][p]) for p in sorted(book["asks"])]
    return symbol, last, bids, asks


def test_recorded_books_reach_the_query_api_exactly(isolated: Env) -> None:
    files = recordings()
    if len(files) < len(DEPTH_RECORDINGS):
        pytest.skip(f"the depth recordings {DEPTH_RECORDINGS} are not all in the shared data")
    expected = {sym: (last, bids, asks) for sym, last, bids, asks in map(file_book, files)}
    symbols = sorted(expected)
    settings = isolated.settings
    pipeline = Pipeline(
        isolated.workdir,
        settings.kafka_bootstrap,
        settings.redis_url,
        symbols,
        extra_env=isolated.env,
    )
    try:
        # Paced (not --fast): ingest must take its REST snapshot mid-replay and continue it
        # from the buffered diffs; 6 minutes of market in about 15 s.
        args = ["--speed", "25", "--wait-for-subscribers", "1"]
        for path in files:
            args += ["--replay", str(path)]
        sim = pipeline.start_simulator(args)
        pipeline.start_processor(CSP_PROCESSOR_BOOKS="true")
        query = pipeline.start_query(CSP_QUERY_MAX_BOOK_DEPTH="5000")
        pipeline.start_ingest(
            sim.ws_url,
            CSP_DEPTH_SYMBOLS=",".join(symbols),
            CSP_DEPTH_SNAPSHOT_LIMIT="5000",  # the whole replayed book, not its top 100
            CSP_INGEST_TAIL_CHECK_S="0",
        )
        answers: dict[str, dict[str, object]] = {}

        def at_the_end() -> bool:
            pipeline.check_alive()
            for symbol in symbols:
                reply = httpx.get(f"{query.base_url}/book/{symbol}?depth=5000", timeout=5)
                if reply.status_code != 200:
                    return False
                answers[symbol] = reply.json()
            return all(answers[s]["lastUpdateId"] == expected[s][0] for s in symbols)

        try:
            wait_for(at_the_end, 90, "each book at the recording's last update id", 0.5)
        except TimeoutError:
            print({s: a.get("lastUpdateId") for s, a in answers.items()}, expected.keys())
            print(sim.stats())
            raise
        for symbol in symbols:
            last, bids, asks = expected[symbol]
            got = answers[symbol]
            assert got["symbol"] == symbol and got["lastUpdateId"] == last
            assert len(bids) > 1000 and len(asks) > 1000  # deeper than the snapshot's 1000
            assert got["bids"] == bids, f"{symbol} bids differ"
            assert got["asks"] == asks, f"{symbol} asks differ"

        report = check_books(isolated.redis, read_all(settings, settings.depth_topic))
        assert report.ok, report.summary()
        assert report.symbols == len(symbols) and report.records > 5000
        pipeline.check_alive()
    finally:
        pipeline.stop()
