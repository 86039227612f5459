"""Issue 21.4: the pipeline's Parquet archive replayed by the simulator (and `csp simulator
--replay FOLDER|GLOB`). The archive is written by the real sink code (SinkCore + ArchiveStore)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cryptostream.archive import layout
from cryptostream.cli import _resolve_replay_args
from cryptostream.core.trades import Trade
from marketsim.model import Order
from marketsim.replay import ReplaySource, replay_factory
from marketsim.server import Simulator
from tests.archive.helpers import DAY, T0, sink_all, trades, values

from .conftest import cfg, connect, drain


def _files(root: Path) -> list[Path]:
    return sorted(root.glob("date=*/symbol=*/*.parquet"))


def _resolved(*args: str) -> list[Path]:
    out = _resolve_replay_args(list(args))
    assert out[::2] == ["--replay"] * (len(out) // 2)
    return [Path(p) for p in out[1::2]]


def _want(ts: list[Trade]) -> list[tuple[str, int, str, str, int, bool]]:
    rows = sorted(ts, key=lambda t: (t.trade_time, t.symbol, t.trade_id))
    return [
        (t.symbol, t.trade_id, t.price, t.quantity, t.trade_time, t.buyer_is_maker) for t in rows
    ]


async def _replayed(
    files: list[Path], symbols: list[str]
) -> list[tuple[str, int, str, str, int, bool]]:
    config = cfg(fast=True, wait_for_subscribers=1, source_factory=replay_factory(files))
    streams = "/".join(f"{s.lower()}@trade" for s in symbols)
    url = f"/stream?streams={streams}"
    async with Simulator(config) as sim, connect(sim.ws_url + url) as ws:
        frames = [json.loads(m) for m in await drain(ws, idle=0.5)]
    data = [f["data"] for f in frames if f["stream"].endswith("@trade")]
    return [(d["s"], d["t"], d["p"], d["q"], d["T"], d["m"]) for d in data]


async def test_an_archive_folder_replays_every_archived_trade_in_time_order(
    tmp_path: Path,
) -> None:
    ts = trades(["BTCUSDT", "ETHUSDT"], 3000, span_ms=2 * DAY)
    sink_all(tmp_path, values(ts), flush_rows=700)
    files = _resolved("--replay", str(tmp_path))
    assert files == _files(tmp_path) and len(files) > 4
    got = await _replayed(files, ["BTCUSDT", "ETHUSDT"])
    assert got == _want(ts)  # ids, exact 8-decimal prices/quantities, times, maker flags
    times = [g[4] for g in got]
    assert times == sorted(times) and {g[0] for g in got} == {"BTCUSDT", "ETHUSDT"}


def test_days_symbols_and_globs_narrow_the_replay(tmp_path: Path) -> None:
    ts = trades(["BTCUSDT", "ETHUSDT"], 2000, span_ms=2 * DAY)
    sink_all(tmp_path, values(ts), flush_rows=700)
    day2 = layout.parse_date_dir(_files(tmp_path)[-1].parent.parent.name)
    assert day2 is not None
    only = _resolved(
        "--replay", str(tmp_path), "--replay-from", day2, "--replay-symbols", "ethusdt"
    )
    assert only and all(f"date={day2}" in str(f) and "symbol=ETHUSDT" in str(f) for f in only)
    globbed = _resolved("--replay", str(tmp_path / "date=*" / "symbol=ETHUSDT"))
    assert globbed == [f for f in _files(tmp_path) if "symbol=ETHUSDT" in str(f)]
    # an unquoted glob the shell expanded: several folders after one --replay
    days = sorted({str(f.parent.parent) for f in _files(tmp_path)})
    expanded = _resolve_replay_args(["--replay", *days, "--fast"])
    assert expanded[-1] == "--fast" and expanded[1:-1:2] == [str(f) for f in _files(tmp_path)]
    source = ReplaySource(only)
    n = 0
    while source.next_item() is not None:
        n += 1
    assert n == sum(1 for t in ts if t.symbol == "ETHUSDT" and t.trade_time >= T0 + DAY)


async def test_a_source_beside_its_compacted_file_is_not_replayed_twice(tmp_path: Path) -> None:
    ts = trades(["BTCUSDT"], 2000, span_ms=DAY // 2)
    sink_all(tmp_path, values(ts), flush_rows=1000)
    files = _files(tmp_path)
    ranges = [r for f in files if (r := layout.parse_name(f.name)) is not None]
    assert len(ranges) == 2
    merged = layout.data_name(
        "raw.trades", ranges[0].partition, min(r.first for r in ranges), max(r.last for r in ranges)
    )
    table = pa.concat_tables([pq.read_table(f) for f in files])
    pq.write_table(table, files[0].parent / merged)  # a compaction that crashed before deleting
    resolved = _resolved("--replay", str(tmp_path))
    assert [f.name for f in resolved] == [merged]
    # a glob naming the covered sources themselves still does not replay them
    assert [f.name for f in _resolved("--replay", str(files[0].parent / "*.parquet"))] == [merged]
    assert await _replayed(resolved, ["BTCUSDT"]) == _want(ts)


def test_a_truncated_file_is_reported_and_skipped_and_refused_when_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`csp simulator --replay FOLDER` names a truncated file on stderr and replays the rest;
    the simulator given that file itself refuses it at start (one clear error)."""
    ts = trades(["BTCUSDT"], 3000, span_ms=DAY // 2)
    sink_all(tmp_path, values(ts), flush_rows=1000)
    files = _files(tmp_path)
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])  # a crash mid-write: no footer
    resolved = _resolved("--replay", str(tmp_path))
    assert resolved == files[1:]
    err = capsys.readouterr().err
    assert f"skipped {files[0]}" in err and "Parquet" in err
    with pytest.raises(ValueError, match="unreadable Parquet") as exc:
        replay_factory([files[0]])
    assert str(files[0]) in str(exc.value)
    with pytest.raises(ValueError, match="is a folder"):
        ReplaySource([tmp_path])


def test_a_damaged_page_ends_that_file_counted_and_the_replay_goes_on(tmp_path: Path) -> None:
    ts = trades(["BTCUSDT"], 3000, span_ms=DAY // 2)
    sink_all(tmp_path, values(ts), flush_rows=1000)
    files = _files(tmp_path)
    data = bytearray(files[0].read_bytes())
    for i in range(8, min(len(data) - 200, 600)):  # behind an intact footer
        data[i] ^= 0xFF
    files[0].write_bytes(bytes(data))
    source = ReplaySource(files)
    n = 0
    while source.next_item() is not None:
        n += 1
    assert n >= 2000 and source.stats.skipped_reasons.get("unreadable Parquet") == 1


def _csp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cryptostream", "simulator", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def test_csp_simulator_refuses_an_empty_or_unreadable_archive_at_start(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _csp("--replay", str(empty))
    assert proc.returncode == 2, proc.stderr
    assert "no archive trade files to replay" in proc.stderr and "Traceback" not in proc.stderr
    proc = _csp("--replay", str(tmp_path / "nothing-*"))
    assert proc.returncode == 2 and "no such file or folder" in proc.stderr
    bad = tmp_path / "bad"
    sink_all(bad, values(trades(["BTCUSDT"], 100)), flush_rows=1000)
    for f in _files(bad):
        f.write_bytes(f.read_bytes()[:100])
    proc = _csp("--replay", str(bad))
    assert proc.returncode == 2 and "damaged file(s) skipped" in proc.stderr
    assert "warning: skipped" in proc.stderr and "Traceback" not in proc.stderr
    proc = _csp("--replay", str(bad), "--replay-from", "yesterday")
    assert proc.returncode == 2 and "expected a day, YYYY-MM-DD" in proc.stderr


@pytest.mark.parametrize("scale", [2, 8, 10])
def test_any_archive_scale_renders_8_decimals_and_never_rounds(tmp_path: Path, scale: int) -> None:
    from decimal import Decimal

    from marketsim.units import fmt8

    folder = tmp_path / "date=2024-06-10" / "symbol=BTCUSDT"
    folder.mkdir(parents=True)
    dec = pa.decimal128(38, scale)
    prices = [Decimal("66398.85"), Decimal("0.0000000123") if scale >= 10 else Decimal("1.5")]
    tiny = Decimal("0.00000001") if scale >= 8 else Decimal("0.01")  # pyarrow's str(): 1E-8
    table = pa.table(
        {
            "trade_id": pa.array([1, 2], pa.int64()),
            "price": pa.array(prices, dec),
            "quantity": pa.array([tiny, Decimal("2")], dec),
            "trade_time": pa.array([T0, T0 + 1], pa.int64()),
            "buyer_is_maker": pa.array([True, False]),
        }
    )
    path = folder / layout.data_name("raw.trades", 0, 0, 1)
    pq.write_table(table, path)
    source = ReplaySource([path])
    got = []
    while (item := source.next_item()) is not None:
        assert isinstance(item, Order)
        got.append(item)
    assert fmt8(got[0].price) == "66398.85000000"
    assert fmt8(got[0].qtys[0]) == f"{tiny:.8f}"
    if scale >= 10:  # 9 significant fractional digits: skipped and counted, not rounded
        assert len(got) == 1 and source.stats.skipped_reasons == {"null or more than 8 decimals": 1}
    else:
        assert len(got) == 2 and not source.stats.skipped
