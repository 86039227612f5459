"""`csp archive` as real processes on the real broker, SIGKILLed while trades and depth records
flow: the checker finds every symbol's count, volume and last trade, and its depth record
counts and last update id, in the archive equal to the topics'."""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest

from cryptostream.archive.check import check
from cryptostream.core.trades import Trade
from cryptostream.kafka_clients import make_producer
from cryptostream.stack.supervisor import ManagedProcess, ProcessGroup
from tests.archive.helpers import T0, depth_stream
from tests.conftest import Env
from tests.kafka_helpers import produce, synthetic_trades

pytestmark = [pytest.mark.integration]


def _sink(env: dict[str, str], logs: Path, n: int) -> ManagedProcess:
    argv = [sys.executable, "-m", "cryptostream", "archive"]
    return ManagedProcess(f"archive-{n}", argv, log_path=logs / f"archive-{n}.log", env=env)


def _markers(root: Path) -> set[str]:
    return {str(p) for p in root.glob("_sink/*/p*/*.json")}


def _staged(root: Path) -> bool:
    return any(root.glob("_sink/*/p*/staging/*"))


def test_sigkilled_sinks_archive_every_record_exactly_once(isolated: Env) -> None:
    archive = isolated.workdir / "archive"
    settings = isolated.settings.model_copy(
        update={
            "archive_dir": archive,
            "archive_group_id": f"archive-{uuid.uuid4().hex[:8]}",
            "archive_depth": True,
        }
    )
    env = {
        **os.environ,
        **isolated.env,
        "CSP_ARCHIVE_DIR": str(archive),
        "CSP_ARCHIVE_GROUP_ID": settings.archive_group_id,
        "CSP_ARCHIVE_FLUSH_ROWS": "700",  # many flushes: a kill often lands inside one
        "CSP_ARCHIVE_FLUSH_S": "0.2",
        "CSP_ARCHIVE_DEPTH": "true",
        "PYTHONUNBUFFERED": "1",
    }
    trades = synthetic_trades(["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"], 40_000)
    bad = [(b"BTCUSDT", b"{not json"), (b"ETHUSDT", b'{"v": 2}')]

    chunks = [trades[i : i + 10_000] for i in range(0, len(trades), 10_000)]

    # depth records of three symbols, interleaved as ingest would publish them
    depth = sorted(
        record
        for n, sym in enumerate(["BTCUSDT", "ETHUSDT", "SOLUSDT"])
        for record in depth_stream(sym, 1600, 30 + n, T0 * 1000, 3_600_000_000)
    )
    size = -(-len(depth) // 4)
    depth_chunks = [depth[i : i + size] for i in range(0, len(depth), size)]
    depth_bad = [b"{not json", b'{"v": 1, "kind": "diff"}']
    depth_producer = make_producer(settings)

    def producer(
        chunk: list[Trade], raw: list[tuple[bytes, bytes]], records: list[tuple[int, bytes]]
    ) -> None:
        for n, i in enumerate(range(0, len(chunk), 1000)):  # records keep arriving
            produce(settings, chunk[i : i + 1000], raw if i == 0 else ())
            step = -(-len(records) // 10)
            for _, value in records[n * step : (n + 1) * step]:
                key = orjson.loads(value)["symbol"].encode()
                depth_producer.produce(settings.depth_topic, value, key)
            if raw and i == 0:
                for value in depth_bad:
                    depth_producer.produce(settings.depth_topic, value, b"BTCUSDT")
            assert depth_producer.flush(30) == 0
            time.sleep(0.1)

    rng = random.Random(21)
    kills = mid_flush = 0
    progress = []
    with ProcessGroup() as group:
        for round_no in range(4):
            feeder = threading.Thread(
                target=producer,
                args=(chunks[round_no], bad if round_no == 2 else [], depth_chunks[round_no]),
                daemon=True,
            )
            feeder.start()
            sinks = [
                group.add(_sink(env, isolated.workdir, round_no * 2 + k).start())
                for k in range(1 + round_no % 2)
            ]
            before = _markers(archive)
            deadline = time.monotonic() + 60
            while _markers(archive) == before and time.monotonic() < deadline:
                time.sleep(0.05)  # wait until this round has committed something
            if round_no % 2 == 0:  # the moment a flush is under way: staged, not yet placed
                until = time.monotonic() + 10
                while not _staged(archive) and time.monotonic() < until:
                    time.sleep(0.0005)
                mid_flush += bool(_staged(archive))
            else:
                time.sleep(rng.uniform(0.05, 1.0))
            for sink in sinks:
                assert sink.alive(), sink.log_tail()
                sink.signal(signal.SIGKILL)
                sink.wait(10)
                kills += 1
            progress.append(len(_markers(archive) - before) > 0)
            feeder.join(120)
        final = group.add(_sink(env, isolated.workdir, 99).start())
        deadline = time.monotonic() + 90
        report = check(settings)
        while not report.ok and time.monotonic() < deadline:
            time.sleep(1)
            report = check(settings)
        final.stop()
    assert all(progress) and kills == 6 and mid_flush >= 1, (progress, mid_flush)
    assert report.records == len(trades) + len(bad)
    assert report.undecodable == len(bad)
    assert report.depth_records == len(depth) + len(depth_bad)
    assert report.depth_undecodable == len(depth_bad)
    assert list(archive.glob("depth/date=*/symbol=*/raw.depth*.parquet"))
    assert report.ok, report.summary()
    assert report.lost == 0 and report.duplicated == 0
    assert not list(archive.glob("_sink/*/p*/staging/*")), "uncommitted files left behind"
