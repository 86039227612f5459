"""Ingest's WebSocket client against the in-process simulator (no Kafka): TLS, keepalive,
paced SUBSCRIBE for streams beyond the URL, the error envelope."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from pathlib import Path

import pytest

from cryptostream.binance.frames import ControlReply, parse_frame
from cryptostream.config import Settings
from cryptostream.ingest.service import Ingest
from cryptostream.ingest.streams import Backoff, plan_connections
from cryptostream.ingest.wsclient import WsConnection, open_connection
from marketsim.server import SimConfig, Simulator
from marketsim.tls import self_signed_cert


def sim_config(**kw: object) -> SimConfig:
    base: dict[str, object] = {
        "port": 0,
        "symbols": ("BTCUSDT", "ETHUSDT", "SOLUSDT"),
        "rate": 2000.0,
    }
    base.update(kw)
    return SimConfig(**base)  # type: ignore[arg-type]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
async def test_wss_and_keepalive(tmp_path: Path) -> None:
    """wss:// with SNI and certificate checks; pings answered, so the server keeps us."""
    cert, key = self_signed_cert(tmp_path)
    config = sim_config(tls_cert=cert, tls_key=key, ping_interval=0.3, pong_timeout=0.5)
    async with Simulator(config) as sim:
        got: list[bytes] = []
        conn = await open_connection(
            f"{sim.ws_url}/stream?streams=btcusdt@trade",
            lambda f, _t, _c: got.extend(f),
            max_size=1 << 20,
            name="t",
            ssl_context=ssl.create_default_context(cafile=str(cert)),
        )
        await asyncio.sleep(1.5)  # several ping intervals: the pong timeout would close us
        assert not conn.closed.done() and len(got) > 100
        conn.close()
        assert "server closed" not in await asyncio.wait_for(conn.closed, 5)


async def test_refused_handshake_is_an_error() -> None:
    async with Simulator(sim_config()) as sim:
        with pytest.raises(ConnectionError, match="refused the upgrade"):
            await open_connection(
                f"{sim.ws_url}/stream?streams=" + "/".join(f"s{i}@trade" for i in range(1100)),
                lambda *_: None,
                max_size=1 << 20,
                name="t",
            )


async def test_streams_beyond_the_url_are_subscribed_paced() -> None:
    async with Simulator(sim_config()) as sim:
        settings = Settings(kafka_bootstrap="127.0.0.1:1", binance_ws_url=sim.ws_url)
        ingest = Ingest(settings, ["BTCUSDT", "ETHUSDT", "SOLUSDT"], sim.rest_url)
        (plan,) = plan_connections(sim.ws_url, ingest.symbols, url_streams=1, per_subscribe=1)
        assert len(plan.subscribe_batches) == 2
        conn = await ingest._connect(plan, Backoff(), reconnect=False)
        assert conn is not None
        try:
            for _ in range(200):
                if all(t.last is not None for t in ingest.trackers.values()):
                    break
                await asyncio.sleep(0.05)
            assert all(t.last is not None for t in ingest.trackers.values())
            assert ingest.stats.trades > 0 and ingest.stats.dead_letters == 0
            assert set(ingest.stats.errors) <= {"kafka"}  # no broker in this test
        finally:
            conn.close()
            ingest.producer.purge()


async def test_error_envelope_reply() -> None:
    async with Simulator(sim_config()) as sim:
        replies: list[bytes] = []
        got_reply = asyncio.Event()

        def on_frames(frames: list[bytes], _t: int, _c: WsConnection) -> None:
            replies.extend(f for f in frames if b'"e":' not in f)
            if replies:
                got_reply.set()

        conn = await open_connection(f"{sim.ws_url}/stream", on_frames, max_size=1 << 20, name="t")
        conn.send_text(b'{"method":"SUBSCRIBE","params":["not a stream"],"id":9}')
        await asyncio.wait_for(got_reply.wait(), 5)
        reply = parse_frame(replies[0])
        assert isinstance(reply, ControlReply) and reply.id == 9 and reply.error is not None
        conn.close()
