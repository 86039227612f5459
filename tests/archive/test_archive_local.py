"""The sink's core and store and the history queries on a real local folder (no Kafka)."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cryptostream.archive import layout, store
from cryptostream.archive.core import SinkCore, day_of
from cryptostream.archive.store import ArchiveStore
from cryptostream.core.codec import encode_trade
from cryptostream.core.decimals import EXACT, fmt
from cryptostream.core.keys import candle_member
from cryptostream.core.trades import Trade
from cryptostream.core.views import compute_views
from cryptostream.history.queries import History
from tests.archive.helpers import DAY, T0, sink_all, trades, values


def test_core_groups_by_day_symbol_and_partition_and_counts_bad_records() -> None:
    core = SinkCore(flush_rows=100, flush_s=5.0)
    a = Trade("BTCUSDT", 1, "1.5", "2", T0 + 10, T0 + 10, False)
    b = Trade("BTCUSDT", 2, "1.6", "1", T0 + DAY + 10, T0 + DAY + 10, True)
    core.add(3, 7, encode_trade(a, a.trade_time * 1000), now=0.0)
    core.add(3, 8, b"not json", now=0.0)
    core.add(3, 9, encode_trade(b, b.trade_time * 1000), now=1.0)
    core.add(3, 9, encode_trade(b, b.trade_time * 1000), now=1.0)  # a fetch racing a seek
    assert core.undecodable == 1 and core.stale == 1
    assert core.due(4.9) == [] and core.due(5.0) == [3]
    flush = core.take(3)
    assert (flush.first, flush.last, flush.rows) == (7, 9, 2)
    assert sorted(flush.groups) == [(day_of(T0), "BTCUSDT"), (day_of(T0 + DAY), "BTCUSDT")]
    assert core.buffered == 0


def test_only_ranges_a_marker_covers_count_as_committed() -> None:
    names = [
        layout.data_name("raw.trades", 0, 0, 99),
        layout.data_name("raw.trades", 0, 100, 199),  # the marker's own flush
        layout.data_name("raw.trades", 0, 200, 299),  # a flush killed before its marker
        layout.data_name("raw.trades", 1, 0, 5),  # a partition without a marker
        layout.data_name("raw.other", 0, 0, 50),  # another topic's partition 0
        "notes.txt",
    ]
    marks = {("raw.trades", 0): 199, ("raw.other", 0): 49}
    assert layout.committed(names, marks) == names[:2]


def test_the_object_stores_resume_plan() -> None:
    plan = layout.resume_plan([300, 100], [400, 300, 500])
    assert plan == layout.ResumePlan(301, [400, 500], [300], [100])
    assert layout.resume_plan([], [99]) == layout.ResumePlan(None, [99], [], [])
    assert layout.resume_plan([], []) == layout.ResumePlan(None, [], [], [])


def test_flush_by_row_count_and_revocation_drops_the_buffer() -> None:
    core = SinkCore(flush_rows=2, flush_s=3600.0)
    t = Trade("ETHUSDT", 1, "1", "1", T0, T0, False)
    core.add(0, 0, encode_trade(t, T0 * 1000), 0.0)
    core.add(1, 0, encode_trade(t, T0 * 1000), 0.0)
    assert core.due(0.0) == [0, 1]
    core.drop(1)
    assert core.buffered == 1 and core.due(0.0) == []


def test_archive_equals_the_views_math_and_pages_cover_every_trade(tmp_path: Path) -> None:
    ts = trades(["BTCUSDT", "ETHUSDT", "SOLUSDT"], 6000)
    sink_all(tmp_path, values(ts), flush_rows=700)
    history = History(tmp_path)
    views = compute_views(ts)
    for sym, view in views.items():
        candles, bad = history.candles(sym, T0, T0 + 2 * DAY)
        assert not bad
        expected = sorted(view.candles.values(), key=lambda c: c.open_time)
        # the same candles as the views' reference math, in the layout's spelling
        assert [candle_member(c) for c in candles] == [candle_member(c) for c in expected]
        # every trade once, across pages
        seen: list[int] = []
        after = -1
        while True:
            page = history.trades(sym, T0, T0 + 2 * DAY, after, 333)
            seen += [t["trade_id"] for t in page.trades]
            if page.next_after is None:
                break
            after = page.next_after
        assert seen == sorted(t.trade_id for t in ts if t.symbol == sym)
        first = next(t for t in ts if t.symbol == sym)
        page = history.trades(sym, T0, T0 + 2 * DAY, -1, 1)
        assert page.trades[0]["price"] == first.price.rstrip("0").rstrip(".")


def test_empty_ranges_and_missing_archive_answer_empty(tmp_path: Path) -> None:
    history = History(tmp_path / "nothing-here")
    assert history.candles("BTCUSDT", T0, T0 + DAY) == ([], [])
    assert history.trades("BTCUSDT", T0, T0 + DAY, -1, 10).trades == []
    assert history.sql("SELECT count(*) FROM trades").rows == [(0,)]
    sink_all(tmp_path, values(trades(["BTCUSDT"], 100)))
    history = History(tmp_path)
    assert history.candles("BTCUSDT", T0 - 10 * DAY, T0 - 9 * DAY) == ([], [])
    assert history.candles("NOSUCHSYM", T0, T0 + DAY) == ([], [])
    assert history.trades("BTCUSDT", T0 + DAY, T0, -1, 10).trades == []


def _data_files(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("date=*/symbol=*/*.parquet"))


def test_truncated_and_damaged_files_are_reported_and_skipped(tmp_path: Path) -> None:
    ts = trades(["BTCUSDT"], 3000, span_ms=DAY // 2)
    sink_all(tmp_path, values(ts), flush_rows=1000)
    files = _data_files(tmp_path)
    assert len(files) == 3
    rows = [pq.read_metadata(f).num_rows for f in files]
    # a crash mid-write / a truncated upload: half the bytes, no footer
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])
    # a damaged page behind an intact footer
    data = bytearray(files[1].read_bytes())
    for i in range(8, min(len(data) - 200, 600)):
        data[i] ^= 0xFF
    files[1].write_bytes(bytes(data))
    history = History(tmp_path)
    candles, bad = history.candles("BTCUSDT", T0, T0 + DAY)
    assert sorted(p for p, _ in bad) == sorted([str(files[0]), str(files[1])])
    assert sum(c.trades for c in candles) == rows[2]
    page = history.trades("BTCUSDT", T0, T0 + DAY, -1, 10_000)
    assert len(page.trades) == rows[2]
    assert {p for p, _ in page.skipped} == {str(files[0]), str(files[1])}
    result = history.sql("SELECT count(*) FROM trades")
    assert result.rows == [(rows[2],)] and len(result.skipped) == 2


def test_a_file_covered_by_a_compacted_one_is_never_read(tmp_path: Path) -> None:
    ts = trades(["BTCUSDT"], 2000, span_ms=DAY // 2)
    sink_all(tmp_path, values(ts), flush_rows=1000)
    files = _data_files(tmp_path)
    ranges = [layout.parse_name(f.name) for f in files]
    assert all(r is not None for r in ranges) and len(files) == 2
    first, last = min(r.first for r in ranges if r), max(r.last for r in ranges if r)
    table = pa.concat_tables([pq.read_table(f) for f in files])
    name = layout.data_name("raw.trades", ranges[0].partition if ranges[0] else 0, first, last)
    pq.write_table(table, files[0].parent / name)  # a compaction that crashed before deleting
    assert History(tmp_path).sql("SELECT count(*) FROM trades").rows == [(2000,)]


def test_resume_rolls_a_committed_flush_forward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ts = trades(["BTCUSDT", "ETHUSDT"], 500)
    st = ArchiveStore(tmp_path, "raw.trades", 8, 1024)
    core = SinkCore(10**9, 3600.0)
    for i, t in enumerate(ts):
        core.add(0, i, encode_trade(t, t.trade_time * 1000), 0.0)
    monkeypatch.setattr(ArchiveStore, "_place", lambda self, staging, files: 0)  # killed here
    st.commit(core.take(0))
    assert _data_files(tmp_path) == []
    monkeypatch.undo()
    assert ArchiveStore(tmp_path, "raw.trades", 8, 1024).resume(0) == 500
    assert History(tmp_path).sql("SELECT count(*) FROM trades").rows == [(500,)]


def test_resume_discards_a_flush_that_did_not_reach_its_commit_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ts = trades(["BTCUSDT"], 300)
    st = ArchiveStore(tmp_path, "raw.trades", 8, 1024)
    core = SinkCore(10**9, 3600.0)
    for i, t in enumerate(ts[:100]):
        core.add(0, i, encode_trade(t, t.trade_time * 1000), 0.0)
    st.commit(core.take(0))
    for i, t in enumerate(ts[100:], start=100):
        core.add(0, i, encode_trade(t, t.trade_time * 1000), 0.0)

    def killed(path: Path, data: bytes) -> None:
        raise SystemExit("SIGKILL before the marker")

    monkeypatch.setattr(store, "write_atomic", killed)
    with pytest.raises(SystemExit):
        st.commit(core.take(0))
    monkeypatch.undo()
    staging = st.partition_dir(0) / "staging"
    assert any(staging.iterdir())  # the staged file of the lost flush
    assert ArchiveStore(tmp_path, "raw.trades", 8, 1024).resume(0) == 100
    assert not any(staging.iterdir())
    assert History(tmp_path).sql("SELECT count(*) FROM trades").rows == [(100,)]


def test_trades_at_an_unusual_scale_round_trip_exactly(tmp_path: Path) -> None:
    """More fractional digits than CSP_ARCHIVE_SCALE: the file is written at the scale its
    values need, and queries over files of several scales read every digit (DuckDB's own
    multi-file read would cast the second file to the first one's scale: rounding)."""
    from cryptostream.archive import maintain

    usual = [Trade("BTCUSDT", i, "1.5", "2", T0 + i, T0 + i, False) for i in range(1, 4)]
    odd = [
        Trade("BTCUSDT", 4, "1.000000001", "0.000000000012", T0 + 4, T0 + 4, True),
        Trade("BTCUSDT", 5, "66398.10000000000", "3", T0 + 5, T0 + 5, False),  # zeros fit 8
        Trade("BTCUSDT", 6, "12345678901234567890.123456789012345678", "1", T0 + 6, T0 + 6, True),
    ]
    huge = Trade("BTCUSDT", 7, "12345678901234567890.12345678901234567891", "1", T0, T0, False)
    st = ArchiveStore(tmp_path, "raw.trades", 8, 1024)
    core = SinkCore(10**9, 3600.0)
    for i, t in enumerate(usual):
        core.add(0, i, encode_trade(t, T0 * 1000), 0.0)
    st.commit(core.take(0))
    for i, t in enumerate([*odd, huge], start=len(usual)):
        core.add(0, i, encode_trade(t, T0 * 1000), 0.0)
    st.commit(core.take(0))
    # 40 significant digits fit no decimal128: the one record not archived, counted and logged
    assert st.unrepresentable == 1
    scales = sorted(pq.read_schema(f).field("price").type.scale for f in _data_files(tmp_path))
    assert scales == [8, 18]
    want = [(t.trade_id, Decimal(t.price), Decimal(t.quantity)) for t in [*usual, *odd]]

    def check_exact(history: History) -> None:
        rows = history.sql("SELECT trade_id, price, quantity FROM trades ORDER BY 1").rows
        assert rows == want
        page = history.trades("BTCUSDT", T0, T0 + DAY, -1, 100)
        assert [(t["trade_id"], t["price"], t["quantity"]) for t in page.trades] == [
            (t.trade_id, fmt(Decimal(t.price)), fmt(Decimal(t.quantity))) for t in [*usual, *odd]
        ]
        (candle,), bad = history.candles("BTCUSDT", T0, T0 + 60_000)
        assert not bad and candle.base_volume == sum(Decimal(t.quantity) for t in [*usual, *odd])
        quote = Decimal(0)
        for t in [*usual, *odd]:
            quote = EXACT.add(quote, EXACT.multiply(Decimal(t.price), Decimal(t.quantity)))
        assert candle.quote_volume == quote
        assert candle.high == Decimal(odd[2].price)

    check_exact(History(tmp_path))
    report = maintain.compact(tmp_path, 2, 1024)  # merging both scales keeps every digit
    assert report.written == 1 and not report.bad
    assert [pq.read_schema(f).field("price").type.scale for f in _data_files(tmp_path)] == [18]
    check_exact(History(tmp_path))
    assert os.listdir(st.partition_dir(0) / "staging") == []


def test_compaction_merges_small_files_and_a_crash_midway_never_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptostream.archive import maintain

    ts = trades(["BTCUSDT", "ETHUSDT"], 5000, span_ms=DAY // 2)
    sink_all(tmp_path, values(ts), flush_rows=400)
    before = (
        History(tmp_path)
        .sql("SELECT symbol, count(*), sum(quantity), sum(price) FROM trades GROUP BY 1 ORDER BY 1")
        .rows
    )
    n_files = len(_data_files(tmp_path))
    assert n_files > 10

    def killed(self: Path, missing_ok: bool = False) -> None:
        raise SystemExit("SIGKILL after the merged file, before deleting its sources")

    monkeypatch.setattr(Path, "unlink", killed)
    with pytest.raises(SystemExit):
        maintain.compact(tmp_path, 2, 1024)
    monkeypatch.undo()
    assert len(_data_files(tmp_path)) == n_files + 1  # merged file + every source
    query = "SELECT symbol, count(*), sum(quantity), sum(price) FROM trades GROUP BY 1 ORDER BY 1"
    assert History(tmp_path).sql(query).rows == before
    report = maintain.compact(tmp_path, 2, 1024)
    assert report.removed_covered > 0 and not report.bad
    assert len(_data_files(tmp_path)) == 2  # one file per symbol folder
    assert History(tmp_path).sql(query).rows == before
    ids = History(tmp_path).sql("SELECT trade_id FROM trades WHERE symbol = 'BTCUSDT'").rows
    assert [i for (i,) in ids] == sorted(t.trade_id for t in ts if t.symbol == "BTCUSDT")


def test_compaction_leaves_a_folder_with_a_corrupt_file_alone(tmp_path: Path) -> None:
    from cryptostream.archive import maintain

    sink_all(tmp_path, values(trades(["BTCUSDT"], 3000, span_ms=DAY // 2)), flush_rows=1000)
    files = _data_files(tmp_path)
    files[1].write_bytes(files[1].read_bytes()[:100])
    report = maintain.compact(tmp_path, 2, 1024)
    assert report.written == 0 and [p for p, _ in report.bad] == [str(files[1])]
    assert _data_files(tmp_path) == files


def test_retention_removes_whole_old_days(tmp_path: Path) -> None:
    import datetime as dt

    from cryptostream.archive import maintain

    sink_all(tmp_path, values(trades(["BTCUSDT"], 3000, span_ms=3 * DAY)))
    days = sorted(p.name for p in tmp_path.glob("date=*"))
    assert len(days) == 3
    last = dt.date.fromisoformat(days[-1].removeprefix("date="))
    assert maintain.retain(tmp_path, 0, today=last) == []
    removed = maintain.retain(tmp_path, 2, today=last)
    assert [Path(p).name for p in removed] == days[:1]
    assert sorted(p.name for p in tmp_path.glob("date=*")) == days[1:]


def test_export_writes_binance_archive_csv_that_the_simulator_replays(tmp_path: Path) -> None:
    from cryptostream.history.queries import export_day
    from marketsim.replay import read_archive
    from marketsim.units import fmt8

    ts = trades(["BTCUSDT", "ETHUSDT"], 4000, span_ms=2 * DAY)
    sink_all(tmp_path / "archive", values(ts), flush_rows=900)
    history = History(tmp_path / "archive")
    day = day_of(T0 + DAY)
    out = tmp_path / "out" / f"BTCUSDT-trades-{day}.csv"
    rows, bad = export_day(history, "BTCUSDT", day, out)
    want = [t for t in ts if t.symbol == "BTCUSDT" and T0 + DAY <= t.trade_time < T0 + 2 * DAY]
    assert rows == len(want) and not bad
    first = out.read_text().splitlines()[0].split(",")
    assert first[0] == str(want[0].trade_id) and first[5] in ("True", "False")
    assert Decimal(first[3]) == Decimal(want[0].price) * Decimal(want[0].quantity)
    orders = list(read_archive(out))
    assert [o.first_id for o in orders] == [t.trade_id for t in want]
    assert [fmt8(o.price) for o in orders] == [t.price for t in want]
    assert [fmt8(o.qtys[0]) for o in orders] == [t.quantity for t in want]
    assert [o.time_us for o in orders] == [t.trade_time * 1000 for t in want]
    assert [o.buyer_maker for o in orders] == [t.buyer_is_maker for t in want]
    empty = tmp_path / "out" / "BTCUSDT-trades-2001-01-01.csv"
    assert export_day(history, "BTCUSDT", "2001-01-01", empty) == (0, [])
    assert empty.read_text() == ""


def test_csp_history_sql_and_archive_commands(tmp_path: Path) -> None:
    import subprocess
    import sys

    sink_all(tmp_path, values(trades(["BTCUSDT", "ETHUSDT"], 1000)), flush_rows=100)
    env = {**os.environ, "CSP_ARCHIVE_DIR": str(tmp_path), "CSP_RUN_DIR": str(tmp_path)}

    def csp(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cryptostream", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    out = csp("history", "sql", "SELECT symbol, count(*) AS n FROM trades GROUP BY 1 ORDER BY 1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "symbol\tn" and len(lines) == 3
    assert sum(int(line.split("\t")[1]) for line in lines[1:]) == 1000
    bad = csp("history", "sql", "SELECT nope FROM trades")
    assert bad.returncode == 2 and "error" in bad.stderr
    assert csp("archive", "compact", "--min-files", "2").returncode == 0
    again = csp("history", "sql", "SELECT count(*) FROM trades", "--csv")
    assert again.stdout.splitlines()[1] == "1000"
    assert len(_data_files(tmp_path)) == 4  # one per day and symbol


def test_the_sinks_counters_are_its_metrics(tmp_path: Path) -> None:
    """What the sink counts (records, flushes, bad records, the buffer) is what Prometheus
    scrapes: the collector reads the live counters, so they cannot drift apart."""
    from prometheus_client import generate_latest

    from cryptostream.archive.service import ArchiveSink
    from cryptostream.config import Settings

    sink = ArchiveSink(Settings(archive_dir=tmp_path, kafka_bootstrap="127.0.0.1:9"))
    try:
        now = 0.0
        sink.core.start(0, 0)
        records = [v for _p, v in values(trades(["BTCUSDT"], 5, span_ms=1000))]
        for offset, value in enumerate([*records, b"{not json"]):
            sink.core.add(0, offset, value, now)
        sink.stats["records"] = 6
        sink._flush(sink.lanes[sink.topic], 0)
        text = generate_latest(sink.metrics.registry).decode()
    finally:
        sink.consumer.close()
    for line in (
        "csp_archive_records_total 6.0",
        "csp_archive_archived_total 5.0",
        "csp_archive_flushes_total 1.0",
        "csp_archive_undecodable_total 1.0",
        "csp_archive_buffered 0.0",
        "csp_archive_flush_seconds_count 1.0",
    ):
        assert line in text, text
