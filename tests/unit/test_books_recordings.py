"""The genuine recordings of ../shared/data as ``raw.depth`` records (the snapshot line, then the
``@depth@100ms`` diffs that continue it, as ingest publishes them), and an independent reconstruction of their book (plain
Decimal dicts, none of the project's book code) that the processor's result is held to."""

from __future__ import annotations

import gzip
import json
from decimal import Decimal

import pytest

from cryptostream.binance.depth import parse_depth_diff, parse_depth_snapshot
from cryptostream.core.depth import TopicBook, decode_depth, encode_diff, encode_snapshot
from tests.shared_data import SHARED_DATA as SHARED

RECORDINGS = {
    "btcusdt_20240808": SHARED / "hftbacktest_spot_btcusdt_20240808.gz",
    "ethusdt_20240808": SHARED / "hftbacktest_spot_ethusdt_20240808.gz",
}
Shadow = dict[str, dict[Decimal, Decimal]]


def _frames(name: str) -> list[dict[str, object]]:
    """The snapshot frame, then the depth diffs in the order ingest publishes them: those
    received before the snapshot that go past it (buffered, as Binance's procedure says), then
    every later one, in file order."""
    path = RECORDINGS[name]
    if not path.exists():
        pytest.skip(f"{path} is not here")
    early: list[dict[str, object]] = []
    out: list[dict[str, object]] = []
    with gzip.open(path, "rt") as f:
        for line in f:
            frame = json.loads(line.partition(" ")[2])
            if "lastUpdateId" in frame:
                last = int(frame["lastUpdateId"])
                out = [frame, *(d for d in early if int(d["u"]) > last)]  # type: ignore[call-overload]
            elif "@depth" in str(frame.get("stream")):
                (out if out else early).append(frame["data"])
    return out


def recorded_values(name: str, diffs: int | None = None) -> list[bytes]:
    """raw.depth values: the recording's snapshot, then (the first ``diffs`` of) its diffs."""
    frames = _frames(name)
    snapshot, rest = frames[0], frames[1 : None if diffs is None else diffs + 1]
    symbol = str(rest[0]["s"])
    values = [encode_snapshot(symbol, parse_depth_snapshot(snapshot), 1_723_161_255_000_000)]
    for i, data in enumerate(rest):
        values.append(encode_diff(parse_depth_diff(data), 1_723_161_255_000_000 + i))
    return values


def independent_book(name: str, diffs: int | None = None) -> tuple[int, Shadow]:
    """(last update id, {side: {price: qty}}) of the same prefix, by plain Decimal arithmetic."""
    frames = _frames(name)
    snapshot, rest = frames[0], frames[1 : None if diffs is None else diffs + 1]
    book = {
        side: {Decimal(p): Decimal(q) for p, q in snapshot[side]}  # type: ignore[attr-defined]
        for side in ("bids", "asks")
    }
    last = int(snapshot["lastUpdateId"])  # type: ignore[call-overload]
    for data in rest:
        if int(data["u"]) <= last:  # type: ignore[call-overload]
            continue
        assert int(data["U"]) <= last + 1  # type: ignore[call-overload]  # the file has no gap
        for side, key in (("bids", "b"), ("asks", "a")):
            for p, q in data[key]:  # type: ignore[attr-defined]
                if Decimal(q) == 0:
                    book[side].pop(Decimal(p), None)
                else:
                    book[side][Decimal(p)] = Decimal(q)
        last = int(data["u"])  # type: ignore[call-overload]
    return last, book


def as_decimal(levels: list[tuple[str, str]]) -> dict[Decimal, Decimal]:
    return {Decimal(p): Decimal(q) for p, q in levels}


@pytest.mark.parametrize("name", sorted(RECORDINGS))
def test_recording_as_records_rebuilds_to_the_independent_book(name: str) -> None:
    values = recorded_values(name)
    book = TopicBook()
    outcomes = [book.apply(decode_depth(v)) for v in values]
    assert "break" not in outcomes and outcomes.count("applied") > 1000 and book.synced
    last, shadow = independent_book(name)
    assert book.book.last_update_id == last
    assert as_decimal(list(book.book.bids.values())) == shadow["bids"]
    assert as_decimal(list(book.book.asks.values())) == shadow["asks"]
