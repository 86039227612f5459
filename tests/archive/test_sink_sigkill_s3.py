"""`csp archive` processes on the real broker writing to a real S3-compatible server (moto on
127.0.0.1), SIGKILLed while trades flow, some of them mid-flush (an intent listed: data objects
being PUT, the marker not yet): `csp archive check` finds every symbol's count, volume and last
trade in the archive equal to the topic's, and no uncommitted object is left."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from pydantic import SecretStr

from cryptostream.archive import layout
from cryptostream.archive.check import check
from cryptostream.archive.objects import ObjectRoot
from cryptostream.archive.store import archive_root
from cryptostream.core.trades import Trade
from cryptostream.stack.supervisor import ManagedProcess, ProcessGroup
from tests.archive.conftest import S3Server
from tests.conftest import Env
from tests.kafka_helpers import produce, synthetic_trades

pytestmark = [pytest.mark.integration]


def _sink(env: dict[str, str], isolated: Env, n: int) -> ManagedProcess:
    argv = [sys.executable, "-m", "cryptostream", "archive"]
    log = isolated.workdir / f"archive-{n}.log"
    return ManagedProcess(f"archive-{n}", argv, log_path=log, env=env)


def _sink_objects(root: ObjectRoot) -> tuple[set[str], set[str]]:
    """The markers and the intents under ``_sink/``."""
    names = [root.rel(i.path) for i in root.files(layout.SINK_DIR)]
    intents = {n for n in names if n.endswith(".intent.json")}
    return {n for n in names if n.endswith(".json")} - intents, intents


@pytest.mark.slow  # ~37 s; on every run: the local-store SIGKILL test and S3's kill-at-every-step
def test_sigkilled_sinks_archive_every_record_exactly_once_on_s3(
    isolated: Env, s3_server: S3Server, s3_url: str
) -> None:
    group_id = f"archive-{uuid.uuid4().hex[:8]}"
    settings = isolated.settings.model_copy(
        update={
            "archive_url": s3_url,
            "archive_s3_endpoint": s3_server.endpoint,
            "archive_s3_access_key_id": "testing",
            "archive_s3_secret_access_key": SecretStr("testing-secret"),
            "archive_group_id": group_id,
        }
    )
    root = archive_root(settings)
    assert isinstance(root, ObjectRoot)
    env = {
        **os.environ,
        **isolated.env,
        **s3_server.env(s3_url),
        "CSP_ARCHIVE_GROUP_ID": group_id,
        "CSP_ARCHIVE_FLUSH_ROWS": "700",  # many flushes: a kill often lands inside one
        "CSP_ARCHIVE_FLUSH_S": "0.2",
        "PYTHONUNBUFFERED": "1",
    }
    trades = synthetic_trades(["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"], 24_000)
    bad = [(b"BTCUSDT", b"{not json"), (b"ETHUSDT", b'{"v": 2}')]
    chunks = [trades[i : i + 8_000] for i in range(0, len(trades), 8_000)]

    def producer(chunk: list[Trade], raw: list[tuple[bytes, bytes]]) -> None:
        # Trades keep arriving through the kill, for ~4 s: flushes still start after a round's
        # first commit, so the mid-flush rounds find one under way (at 0.1 s apart the whole
        # chunk was once flushed before the test looked, and no kill landed mid-flush).
        for i in range(0, len(chunk), 1000):
            produce(settings, chunk[i : i + 1000], raw if i == 0 else ())
            time.sleep(0.5)

    rng = random.Random(21)
    kills = mid_flush = 0
    progress = []
    with ProcessGroup() as group:
        for round_no in range(3):
            feeder = threading.Thread(
                target=producer, args=(chunks[round_no], bad if round_no == 1 else []), daemon=True
            )
            feeder.start()
            sinks = [
                group.add(_sink(env, isolated, round_no * 2 + k).start())
                for k in range(1 + round_no % 2)
            ]
            before, _ = _sink_objects(root)
            deadline = time.monotonic() + 60
            while _sink_objects(root)[0] == before and time.monotonic() < deadline:
                time.sleep(0.05)  # wait until this round has committed something
            if round_no % 2 == 0:  # the moment a flush is under way: its intent is listed
                until = time.monotonic() + 10
                while not _sink_objects(root)[1] and time.monotonic() < until:
                    time.sleep(0.002)
                mid_flush += bool(_sink_objects(root)[1])
            else:
                time.sleep(rng.uniform(0.05, 1.0))
            for sink in sinks:
                assert sink.alive(), sink.log_tail()
                sink.signal(signal.SIGKILL)
                sink.wait(10)
                kills += 1
            progress.append(len(_sink_objects(root)[0] - before) > 0)
            feeder.join(120)
        final = group.add(_sink(env, isolated, 99).start())
        deadline = time.monotonic() + 90
        report = check(settings)
        while not report.ok and time.monotonic() < deadline:
            time.sleep(1)
            report = check(settings)
        final.stop()  # SIGTERM: it flushes what it holds and exits
    assert all(progress) and kills == 4 and mid_flush >= 1, (progress, mid_flush)
    assert report.records == len(trades) + len(bad)
    assert report.undecodable == len(bad)
    assert report.ok, report.summary()
    assert report.lost == 0 and report.duplicated == 0
    # every partition was resumed by the final sink: nothing uncommitted is left behind
    _, intents = _sink_objects(root)
    assert not intents, intents
    data = [root.rel(i.path).rsplit("/", 1)[1] for i in root.files() if i.path.endswith(".parquet")]
    assert data and layout.committed(data, root.committed()) == data
    out = subprocess.run(
        [sys.executable, "-m", "cryptostream", "archive", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert " 0 lost, 0 duplicated, 0 problems" in out.stdout, out.stdout
