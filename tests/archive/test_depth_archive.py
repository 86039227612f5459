"""The depth archive on a real local folder (no Kafka): raw.depth records through the sink's
depth core and store into Parquet, read back by the history queries, compacted and retained.

The book at a time is compared with core/depth.py's TopicBook applied to the same records from
the first one (the reference every consumer of raw.depth is tested against).
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from pathlib import Path

import pyarrow.parquet as pq

from cryptostream.archive import layout, maintain
from cryptostream.archive.check import compare_depth, depth_archive_totals, depth_truth
from cryptostream.core.depth import decode_depth
from cryptostream.core.orderbook import Book
from cryptostream.history.queries import History
from tests.archive.helpers import DAY, T0, archive_depth, depth_stream, reference_book


def _sides(book: Book) -> tuple[dict[Decimal, Decimal], dict[Decimal, Decimal]]:
    return (
        {Decimal(p): Decimal(q) for p, q in book.bids.values()},
        {Decimal(p): Decimal(q) for p, q in book.asks.values()},
    )


def _depth_files(root: Path) -> list[Path]:
    return sorted((root / layout.DEPTH).glob("date=*/symbol=*/*.parquet"))


def test_the_book_at_a_time_equals_topic_book_over_the_same_records(tmp_path: Path) -> None:
    start = T0 * 1000 + DAY * 1000 // 2
    btc = depth_stream("BTCUSDT", 1500, 1, start, DAY * 1000)  # across a UTC midnight
    eth = depth_stream("ETHUSDT", 300, 2, start, DAY * 1000)
    records: list[tuple[int, bytes | None]] = sorted([*btc, *eth])
    records.insert(10, (records[10][0], b"{not a depth record"))
    archive_depth(tmp_path, records, flush_rows=200)
    files = _depth_files(tmp_path)
    assert len(files) > 8 and {f.parent.parent.name for f in files} == {
        f"date={(dt.date(1970, 1, 1) + dt.timedelta(days=T0 // DAY + d)).isoformat()}"
        for d in (0, 1)
    }
    assert not list(tmp_path.glob("date=*")), "depth files stay out of the trades' folders"
    scales = {
        pq.read_schema(f).field("bids").type.value_type.field("price").type.scale for f in files
    }
    assert 8 in scales and max(scales) > 8  # files with 11-digit prices: wider, exact
    history = History(tmp_path)
    compared = unsynced = 0
    rng = random.Random(3)
    ats = [
        start // 1000 - 1,
        *(rng.randint(start // 1000, (start // 1000) + DAY) for _ in range(12)),
    ]
    for at in [*ats, start // 1000 + 2 * DAY]:
        got = history.book("BTCUSDT", at)
        ref = reference_book(btc, at)
        if ref is None:
            assert got.book is None and "no snapshot" in got.problem
            continue
        if not ref.synced:
            assert got.book is None and "broke" in got.problem, got
            unsynced += 1
            continue
        assert got.book is not None, got.problem
        assert _sides(got.book) == _sides(ref.book)
        assert got.last_update_id == ref.book.last_update_id
        compared += 1
    assert compared >= 5
    # the SQL view, and what the checker compares
    expected, records_n, bad = depth_truth(value for _, value in records)
    assert (records_n, bad) == (len(records), 1)
    actual, skipped = depth_archive_totals(history)
    assert not skipped and actual == expected
    assert history.sql("SELECT count(*) FROM trades").rows == [(0,)]
    levels = history.sql(
        "SELECT sum(len(bids) + len(asks)) FROM depth WHERE symbol = 'ETHUSDT'"
    ).rows[0][0]
    assert levels == sum(
        len(r.diff.bids + r.diff.asks)
        if hasattr(r, "diff")
        else len(r.snapshot.bids + r.snapshot.asks)
        for r in (decode_depth(v) for _, v in eth)
    )


def test_depth_compaction_retention_and_the_checker_catch_a_loss(tmp_path: Path) -> None:
    start = T0 * 1000
    records: list[tuple[int, bytes | None]] = list(
        depth_stream("BTCUSDT", 900, 5, start, 3 * DAY * 1000)
    )
    archive_depth(tmp_path, records, flush_rows=100)
    history = History(tmp_path)
    at = (start + 2 * DAY * 1000) // 1000
    before = history.book("BTCUSDT", at)
    n_files = len(_depth_files(tmp_path))
    report = maintain.compact(tmp_path, 2, 1024)
    assert report.written == 3 and report.merged == n_files and not report.bad
    after = History(tmp_path).book("BTCUSDT", at)
    assert (after.book is None) == (before.book is None) and after.problem == before.problem
    if before.book is not None and after.book is not None:
        assert _sides(after.book) == _sides(before.book)
    expected, _, _ = depth_truth(v for _, v in records)
    actual, _ = depth_archive_totals(History(tmp_path))
    assert actual == expected
    # the checker sees a lost file
    first = _depth_files(tmp_path)[0]
    first.unlink()
    from cryptostream.archive.check import ArchiveReport

    lost, _ = depth_archive_totals(History(tmp_path))
    problems = compare_depth(expected, lost, ArchiveReport()).problems
    assert any("depth records" in p for p in problems)
    # retention removes old depth days too
    last_day = dt.date(1970, 1, 1) + dt.timedelta(days=(start // 1000 + 3 * DAY - 1) // DAY)
    removed = maintain.retain(tmp_path, 1, today=last_day)
    assert removed and all("/depth/date=" in p for p in removed)
    assert len(list((tmp_path / layout.DEPTH).glob("date=*"))) == 1
