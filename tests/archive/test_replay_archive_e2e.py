"""Issue 21.4 end to end: an archive (written by the real sink code) replayed by the simulator
through ingest -> Kafka -> processor -> Redis: `GET /price/<symbol>` ends equal to each
symbol's last archived trade."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from cryptostream.cli import _resolve_replay_args
from cryptostream.stack.pipeline import Pipeline, wait_for
from tests.archive.helpers import DAY, sink_all, trades, values
from tests.conftest import Env

pytestmark = pytest.mark.e2e


def test_an_archive_replayed_through_the_pipeline_ends_with_its_last_prices(
    isolated: Env, tmp_path: Path
) -> None:
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    ts = trades(symbols, 900, seed=3, span_ms=2 * DAY)
    root = tmp_path / "archive"
    sink_all(root, values(ts), flush_rows=200)
    last = {s: max((t for t in ts if t.symbol == s), key=lambda t: t.trade_id) for s in symbols}
    expected = {s: float(t.price) for s, t in last.items()}
    args = _resolve_replay_args(["--replay", str(root)])
    assert len(args) > 2 * len(symbols)
    pipeline = Pipeline(
        isolated.workdir,
        isolated.settings.kafka_bootstrap,
        isolated.settings.redis_url,
        symbols,
        extra_env=isolated.env,
    )
    try:
        sim = pipeline.start_simulator(["--fast", "--wait-for-subscribers", "1", *args])
        pipeline.start_processor()
        query = pipeline.start_query()
        pipeline.start_ingest(sim.ws_url)

        def answers() -> dict[str, object]:
            pipeline.check_alive()
            return {
                s: httpx.get(f"{query.base_url}/price/{s}", timeout=5).json().get("price")
                for s in symbols
            }

        wait_for(lambda: answers() == expected, 90, "the archive's last prices")
    finally:
        pipeline.stop()
