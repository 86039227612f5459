"""The archive on a real S3-compatible server (moto, 127.0.0.1; tests/archive/conftest.py): the
sink's store round trip, a flush killed at every step before and after its commit point, the
history queries, and truncated or damaged objects."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from cryptostream.archive import layout
from cryptostream.archive.core import SinkCore, day_of
from cryptostream.archive.objects import ObjectRoot, ObjectStore
from cryptostream.archive.store import ArchiveStore, archive_root
from cryptostream.config import Settings
from cryptostream.core.codec import encode_trade
from cryptostream.core.keys import candle_member
from cryptostream.core.views import compute_views
from cryptostream.history.queries import History, export_day
from tests.archive.conftest import S3Server
from tests.archive.helpers import DAY, T0, sink_all, trades, values


class Killed(BaseException):
    """The process dies here (a BaseException: nothing in the code under test catches it)."""


class Dying(ObjectRoot):
    """An ObjectRoot whose ``budget`` mutating requests succeed; the next one kills the process
    before it reaches the server (a PUT is atomic: it happened or it did not)."""

    def __init__(self, root: ObjectRoot, budget: int) -> None:
        super().__init__(root.fs, root.root, root.scheme)
        object.__setattr__(self, "budget", [budget])
        object.__setattr__(self, "done", [])

    def _spend(self, what: str) -> None:
        left: list[int] = self.budget  # type: ignore[attr-defined]
        if left[0] <= 0:
            raise Killed(what)
        left[0] -= 1
        self.done.append(what)  # type: ignore[attr-defined]

    def put(self, rel: str, data: bytes) -> None:
        self._spend(f"put {rel}")
        super().put(rel, data)

    def write_parquet(self, rel: str, table: object, row_group_rows: int) -> None:
        self._spend(f"put {rel}")
        super().write_parquet(rel, table, row_group_rows)

    def delete(self, rel: str) -> None:
        self._spend(f"delete {rel}")
        super().delete(rel)


def _objects(root: ObjectRoot, rel: str = "") -> list[str]:
    return [root.rel(i.path) for i in root.files(rel)]


def _count(root: ObjectRoot | Path) -> int:
    return int(History(root).sql("SELECT count(*) FROM trades").rows[0][0])


def test_settings_choose_the_store_and_refuse_a_url_as_a_folder(s3_server: S3Server) -> None:
    assert isinstance(archive_root(Settings(archive_dir=Path("x"))), Path)
    root = archive_root(s3_server.settings("s3://bucket/some/prefix/"))
    assert isinstance(root, ObjectRoot) and root.root == "bucket/some/prefix"
    assert root.bucket == "bucket" and root.url() == "s3://bucket/some/prefix"
    settings = s3_server.settings("s3://bucket")
    assert "testing-secret" not in repr(settings) and "testing-secret" not in str(settings)
    for bad in ("http://bucket/x", "s3://", "bucket/x", "s3://b/x?y=1"):
        with pytest.raises(ValidationError, match="s3://bucket"):
            Settings(archive_url=bad)
    with pytest.raises(ValidationError, match="CSP_ARCHIVE_URL"):
        Settings(archive_dir=Path("s3://bucket/x"))
    with pytest.raises(ValidationError, match="http"):
        Settings(archive_s3_endpoint="127.0.0.1:9000")


def test_round_trip_on_s3_equals_the_views_math_and_a_local_archive(
    s3_root: ObjectRoot, tmp_path: Path
) -> None:
    ts = trades(["BTCUSDT", "ETHUSDT", "SOLUSDT"], 3000)
    sink_all(s3_root, values(ts), flush_rows=700)
    sink_all(tmp_path, values(ts), flush_rows=700)
    names = _objects(s3_root)
    assert not [n for n in names if n.endswith(".intent.json")], "intents are deleted"
    used = {p for p, _ in values(ts)}
    assert len([n for n in names if n.endswith(".json")]) == len(used)  # a marker per partition
    history, local = History(s3_root), History(tmp_path)
    for sym, view in compute_views(ts).items():
        candles, bad = history.candles(sym, T0, T0 + 2 * DAY)
        assert not bad
        expected = sorted(view.candles.values(), key=lambda c: c.open_time)
        assert [candle_member(c) for c in candles] == [candle_member(c) for c in expected]
        seen: list[int] = []
        after = -1
        while True:
            page = history.trades(sym, T0, T0 + 2 * DAY, after, 333)
            seen += [t["trade_id"] for t in page.trades]
            if page.next_after is None:
                break
            after = page.next_after
        assert seen == sorted(t.trade_id for t in ts if t.symbol == sym)
    query = (
        "SELECT date, symbol, count(*), sum(quantity), arg_max(price, trade_id) FROM trades "
        "GROUP BY 1, 2 ORDER BY 1, 2"
    )
    rows = history.sql(query).rows
    assert rows == local.sql(query).rows and isinstance(rows[0][0], dt.date)
    day = day_of(T0 + DAY)
    out_s3, out_local = tmp_path / "s3.csv", tmp_path / "local.csv"
    assert export_day(history, "BTCUSDT", day, out_s3)[0] > 0
    export_day(local, "BTCUSDT", day, out_local)
    assert out_s3.read_bytes() == out_local.read_bytes()


def test_empty_prefix_answers_empty(s3_root: ObjectRoot) -> None:
    history = History(s3_root)
    assert history.candles("BTCUSDT", T0, T0 + DAY) == ([], [])
    assert history.trades("BTCUSDT", T0, T0 + DAY, -1, 10).trades == []
    assert history.sql("SELECT count(*) FROM trades").rows == [(0,)]
    assert ObjectStore(s3_root, "raw.trades", 8, 1024).resume(0) is None


def _feed(core: SinkCore, recs: list[bytes | None], start: int, stop: int) -> None:
    for offset in range(start, stop):
        core.add(0, offset, recs[offset], 0.0)


def test_a_flush_killed_at_every_step_loses_and_duplicates_nothing(
    s3_server: S3Server, s3_url: str
) -> None:
    """Flush 1 (offsets 0..199) is committed; flush 2 (200..599, three days: three data objects)
    is killed after each of its requests in turn. Until a restart the readers see exactly the
    committed ranges although the listing shows more; the restarted sink resumes where the
    marker says, deletes what was not committed, and re-reads the rest in flushes of another
    size (other ranges, other names): every trade once."""
    ts = trades(["BTCUSDT"], 1000, span_ms=3 * DAY)
    recs: list[bytes | None] = [encode_trade(t, t.trade_time * 1000) for t in ts]
    recs[250] = b"{not json"  # an undecodable record inside the killed flush: covered, skipped
    want = sorted(t.trade_id for i, t in enumerate(ts) if i != 250)
    steps = None
    budget = 0
    while steps is None or budget <= steps:
        url = f"{s3_url}-{budget}"
        root = archive_root(s3_server.settings(url))
        assert isinstance(root, ObjectRoot)
        core = SinkCore(10**9, 3600.0)
        _feed(core, recs, 0, 200)
        ObjectStore(root, "raw.trades", 8, 1024).commit(core.take(0))
        _feed(core, recs, 200, 600)
        dying = Dying(root, budget)
        try:
            ObjectStore(dying, "raw.trades", 8, 1024).commit(core.take(0))
            assert steps is None or budget == steps
            steps = budget  # the flush's request count: this run was not killed
        except Killed:
            pass
        done: list[str] = dying.done  # type: ignore[attr-defined]
        committed = any(d.endswith(layout.marker_name(599)) for d in done)
        visible = 600 - 1 if committed else 200  # (one undecodable record in 200..599)
        assert _count(root) == visible, (budget, done)
        data_objects = [n for n in _objects(root) if n.endswith(".parquet")]
        if not committed and any(".parquet" in d for d in done):
            assert len(data_objects) > 1, "leftovers are listed, yet not read"
        # the restart: resume, then the rest of the topic in flushes of 170
        store = ObjectStore(root, "raw.trades", 8, 1024)
        start = store.resume(0)
        assert start == (600 if committed else 200), (budget, done)
        assert not [n for n in _objects(root) if ".intent." in n]
        assert len([n for n in _objects(root) if n.endswith(".json")]) == 1
        core.start(0, start)
        for lo in range(start, 1000, 170):
            _feed(core, recs, lo, min(lo + 170, 1000))
            store.commit(core.take(0))
        history = History(root)
        rows = history.sql("SELECT trade_id FROM trades ORDER BY 1").rows
        assert [r for (r,) in rows] == want, (budget, done)
        candles, bad = history.candles("BTCUSDT", T0, T0 + 3 * DAY)
        assert sum(c.trades for c in candles) == len(want) and not bad
        budget += 1
    assert steps is not None and steps >= 6  # intent, 3 data objects, marker, deletes


def test_leftovers_of_an_unresumed_partition_are_never_read(s3_root: ObjectRoot) -> None:
    """A crashed flush whose partition nobody resumes yet, and a later committed flush of
    another partition: the leftovers stay invisible, whatever the listing says."""
    ts = trades(["BTCUSDT", "ETHUSDT"], 400)
    st = ObjectStore(s3_root, "raw.trades", 8, 1024)
    core = SinkCore(10**9, 3600.0)
    for i, t in enumerate(ts):
        core.add(0, i, encode_trade(t, t.trade_time * 1000), 0.0)
    dying = Dying(s3_root, 3)  # the intent and two data objects, no marker
    with pytest.raises(Killed):
        ObjectStore(dying, "raw.trades", 8, 1024).commit(core.take(0))
    assert len([n for n in _objects(s3_root) if n.endswith(".parquet")]) == 2
    for i, t in enumerate(ts[:50]):
        core.add(1, i, encode_trade(t, t.trade_time * 1000), 0.0)
    st.commit(core.take(1))
    assert _count(s3_root) == 50
    assert History(s3_root).candles("BTCUSDT", T0, T0 + 2 * DAY)[1] == []


def test_truncated_and_damaged_objects_are_reported_and_skipped(
    s3_root: ObjectRoot, tmp_path: Path
) -> None:
    ts = trades(["BTCUSDT"], 3000, span_ms=DAY // 2)
    sink_all(s3_root, values(ts), flush_rows=1000)
    files = sorted(n for n in _objects(s3_root) if n.endswith(".parquet"))
    assert len(files) == 3
    sink_all(tmp_path, values(ts), flush_rows=1000)
    import pyarrow.parquet as pq

    rows = [pq.read_metadata(s3_root.key(f), filesystem=s3_root.fs).num_rows for f in files]
    data = s3_root.get(files[0])
    s3_root.put(files[0], data[: len(data) // 2])  # a truncated upload: no footer
    damaged = bytearray(s3_root.get(files[1]))
    for i in range(8, min(len(damaged) - 200, 600)):
        damaged[i] ^= 0xFF
    s3_root.put(files[1], bytes(damaged))  # a damaged page behind an intact footer
    urls = sorted(s3_root.url(s3_root.key(f)) for f in files[:2])
    history = History(s3_root)
    candles, bad = history.candles("BTCUSDT", T0, T0 + DAY)
    assert sorted(p for p, _ in bad) == urls
    assert sum(c.trades for c in candles) == rows[2]
    page = history.trades("BTCUSDT", T0, T0 + DAY, -1, 10_000)
    assert len(page.trades) == rows[2] and sorted(p for p, _ in page.skipped) == urls
    result = history.sql("SELECT count(*) FROM trades")
    assert result.rows == [(rows[2],)] and sorted(p for p, _ in result.skipped) == urls


def test_csp_history_sql_reads_the_object_store(s3_server: S3Server, s3_url: str) -> None:
    import subprocess
    import sys

    root = archive_root(s3_server.settings(s3_url))
    assert isinstance(root, ObjectRoot)
    sink_all(root, values(trades(["BTCUSDT", "ETHUSDT"], 1000)), flush_rows=100)
    env = {**os.environ, **s3_server.env(s3_url)}
    out = subprocess.run(
        [sys.executable, "-m", "cryptostream", "history", "sql", "SELECT count(*) FROM trades"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[1] == "1000"
    compact = subprocess.run(
        [sys.executable, "-m", "cryptostream", "archive", "compact", "--min-files", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert compact.returncode == 0, compact.stderr
    assert len([n for n in _objects(root) if n.endswith(".parquet")]) == 4  # a day and symbol
    out = subprocess.run(
        [sys.executable, "-m", "cryptostream", "history", "sql", "SELECT count(*) FROM trades"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.splitlines()[1] == "1000", out.stderr


def test_local_store_is_unchanged_by_the_interface(tmp_path: Path) -> None:
    st = ArchiveStore(tmp_path, "raw.trades", 8, 1024)
    core = SinkCore(10**9, 3600.0)
    for i, t in enumerate(trades(["BTCUSDT"], 10)):
        core.add(0, i, encode_trade(t, t.trade_time * 1000), 0.0)
    paths = st.commit(core.take(0))
    assert all(isinstance(p, Path) and p.exists() for p in paths)
    assert st.resume(0) == 10 and _count(tmp_path) == 10


def test_the_sink_refuses_to_start_on_a_missing_bucket_or_an_unreachable_store(
    s3_server: S3Server, s3_root: ObjectRoot, tmp_path: Path
) -> None:
    from cryptostream.archive.service import prepare_root
    from cryptostream.stack.supervisor import free_port

    assert prepare_root(s3_root) is None
    missing = archive_root(s3_server.settings("s3://no-such-bucket/x"))
    assert isinstance(missing, ObjectRoot)
    assert prepare_root(missing) == "the archive's bucket does not exist: s3://no-such-bucket"
    closed = s3_server.settings(s3_root.url()).model_copy(
        update={"archive_s3_endpoint": f"http://127.0.0.1:{free_port()}"}  # nothing listens
    )
    dead = archive_root(closed)
    assert isinstance(dead, ObjectRoot)
    problem = prepare_root(dead)
    assert problem is not None and problem.startswith("cannot reach the archive s3://")
    assert prepare_root(tmp_path / "new" / "folder") is None
    assert (tmp_path / "new" / "folder").is_dir()


def test_compaction_on_s3_merges_committed_objects_and_a_crash_midway_never_duplicates(
    s3_root: ObjectRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptostream.archive import maintain

    ts = trades(["BTCUSDT", "ETHUSDT"], 3000, span_ms=DAY // 2)
    sink_all(s3_root, values(ts), flush_rows=400)
    query = "SELECT symbol, count(*), sum(quantity), sum(price) FROM trades GROUP BY 1 ORDER BY 1"
    before = History(s3_root).sql(query).rows
    # a flush of partition 0 killed before its commit point: its objects must stay untouched
    core = SinkCore(10**9, 3600.0)
    partition = values(ts[:1])[0][0]
    nxt = ObjectStore(s3_root, "raw.trades", 8, 1024).resume(partition)
    assert nxt is not None
    late = [
        t for t in trades(["BTCUSDT", "ETHUSDT"], 200, seed=9) if values([t])[0][0] == partition
    ]
    for i, t in enumerate(late):
        core.add(partition, nxt + i, encode_trade(t, t.trade_time * 1000), 0.0)
    with pytest.raises(Killed):
        ObjectStore(Dying(s3_root, 2), "raw.trades", 8, 1024).commit(core.take(partition))
    leftovers = {n for n in _objects(s3_root) if n.endswith(".parquet")}
    n_files = len(leftovers)

    def killed(self: ObjectRoot, rel: str) -> None:
        raise Killed("after the merged object, before deleting its sources")

    monkeypatch.setattr(ObjectRoot, "delete", killed)
    with pytest.raises(Killed):
        maintain.compact(s3_root, 2, 1024)
    monkeypatch.undo()
    assert len([n for n in _objects(s3_root) if n.endswith(".parquet")]) == n_files + 1
    assert History(s3_root).sql(query).rows == before
    report = maintain.compact(s3_root, 2, 1024)
    assert report.removed_covered > 0 and not report.bad
    assert History(s3_root).sql(query).rows == before
    after = {n for n in _objects(s3_root) if n.endswith(".parquet")}
    uncommitted = {n for n in leftovers if f"-{nxt:020d}-" in n}
    assert uncommitted and uncommitted <= after  # left to the sink's resume
    assert len(after - uncommitted) == 2  # one object per symbol folder
    ObjectStore(s3_root, "raw.trades", 8, 1024).resume(partition)
    assert not uncommitted & {n for n in _objects(s3_root) if n.endswith(".parquet")}
    assert History(s3_root).sql(query).rows == before


def test_compaction_on_s3_leaves_a_folder_with_a_corrupt_object_alone(s3_root: ObjectRoot) -> None:
    from cryptostream.archive import maintain

    sink_all(s3_root, values(trades(["BTCUSDT"], 3000, span_ms=DAY // 2)), flush_rows=1000)
    files = sorted(n for n in _objects(s3_root) if n.endswith(".parquet"))
    s3_root.put(files[1], s3_root.get(files[1])[:100])
    report = maintain.compact(s3_root, 2, 1024)
    assert report.written == 0 and [p for p, _ in report.bad] == [
        s3_root.url(s3_root.key(files[1]))
    ]
    assert sorted(n for n in _objects(s3_root) if n.endswith(".parquet")) == files


def test_retention_on_s3_removes_whole_old_days(s3_root: ObjectRoot) -> None:
    from cryptostream.archive import maintain

    sink_all(s3_root, values(trades(["BTCUSDT"], 3000, span_ms=3 * DAY)))
    days = sorted({n.split("/")[0] for n in _objects(s3_root) if n.startswith("date=")})
    assert len(days) == 3
    last = dt.date.fromisoformat(days[-1].removeprefix("date="))
    assert maintain.retain(s3_root, 0, today=last) == []
    removed = maintain.retain(s3_root, 2, today=last)
    assert removed == [s3_root.url(s3_root.key(days[0]))]
    left = sorted({n.split("/")[0] for n in _objects(s3_root) if n.startswith("date=")})
    assert left == days[1:]
    assert _count(s3_root) == len(
        [
            t
            for t in trades(["BTCUSDT"], 3000, span_ms=3 * DAY)
            if day_of(t.trade_time) >= str(last - dt.timedelta(days=1))
        ]
    )
