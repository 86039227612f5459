"""Conformance: the official Binance SDK (binance-sdk-spot) against the simulator."""

from __future__ import annotations

import asyncio
from typing import Any

import binance_common.configuration as common_cfg  # a declared dev dependency: never skipped
import binance_sdk_spot.spot as spot_mod
import pytest

from marketsim.server import Simulator

from .conftest import cfg


async def _sdk_receive(stream_url: str, use_handle: bool) -> list[Any]:
    client = spot_mod.Spot(
        config_ws_streams=common_cfg.ConfigurationWebSocketStreams(stream_url=stream_url)
    )
    got: list[Any] = []
    done = asyncio.Event()

    def on_msg(msg: Any) -> None:
        got.append(msg)
        if len(got) >= 20:
            done.set()

    connection = await client.websocket_streams.create_connection()
    try:
        if use_handle:  # the SDK's typed stream API: SUBSCRIBE on /stream
            handle = await connection.trade(symbol="btcusdt")
            handle.on("message", on_msg)
        else:  # the generic subscribe + on()
            await connection.subscribe(["btcusdt@trade"])
            connection.on("message", on_msg, "btcusdt@trade")
        await asyncio.wait_for(done.wait(), 10)
        subs = await connection.list_subscribe()
        assert "btcusdt@trade" in str(subs)
    finally:
        await connection.close_connection(close_session=True)
    return got


@pytest.mark.parametrize("use_handle", [True, False])
async def test_sdk_receives_trades_via_live_subscribe(use_handle: bool) -> None:
    async with Simulator(cfg(rate=2000.0, msg_rate_limit=5)) as sim:
        got = await _sdk_receive(sim.ws_url, use_handle)
        assert sim.stats()["connections_total"] >= 1
    ids = [(m.t if hasattr(m, "t") else m["data"]["t"]) for m in got[:20]]
    assert ids == list(range(ids[0], ids[0] + 20))
    first = got[0]
    if hasattr(first, "s"):
        assert first.s == "BTCUSDT" and first.e == "trade"


async def test_sdk_receives_trades_via_combined_path() -> None:
    """The SDK appends ``/stream`` itself; a ``?streams=`` URL still works (pre-subscribed)."""
    async with Simulator(cfg(rate=2000.0)) as sim:
        client = spot_mod.Spot(
            config_ws_streams=common_cfg.ConfigurationWebSocketStreams(
                stream_url=sim.ws_url + "/stream?streams=btcusdt@trade"
            )
        )
        got: list[Any] = []
        done = asyncio.Event()
        connection = await client.websocket_streams.create_connection()
        try:

            def on_msg(msg: Any) -> None:
                got.append(msg)
                if len(got) >= 10:
                    done.set()

            # The SDK only knows streams it SUBSCRIBEd itself; the URL pre-subscribed this one,
            # so attach the callback to the connection's routing table directly.
            for c in connection.connections:
                c.stream_callback_map.setdefault("btcusdt@trade", []).append(on_msg)
            await asyncio.wait_for(done.wait(), 10)
        finally:
            await connection.close_connection(close_session=True)
    assert len(got) >= 10
    ids = [m["data"]["t"] for m in got[:10]]  # no typed model without SUBSCRIBE: raw dicts
    assert ids == list(range(ids[0], ids[0] + 10))


async def test_sdk_rest_ping_time_exchange_info() -> None:
    async with Simulator(cfg(rate=500.0)) as sim:
        client = spot_mod.Spot(
            config_rest_api=common_cfg.ConfigurationRestAPI(base_path=sim.rest_url)
        )

        def calls() -> tuple[Any, Any, Any]:
            api = client.rest_api
            return api.ping(), api.time(), api.exchange_info(symbol="BTCUSDT")

        ping, t, info = await asyncio.to_thread(calls)
        assert t.data().server_time > 0
        symbols = info.data().symbols
        assert [s.symbol for s in symbols] == ["BTCUSDT"]
        assert ping is not None


async def test_sdk_reconnects_after_each_server_shutdown() -> None:
    """A 5 s connection lifetime: the SDK must reconnect on each notice and keep receiving
    (it stopped for good after the first notice when the notice had no top-level ``event``)."""
    async with Simulator(cfg(rate=400.0, lifetime=5.0)) as sim:
        client = spot_mod.Spot(
            config_ws_streams=common_cfg.ConfigurationWebSocketStreams(stream_url=sim.ws_url)
        )
        times: list[float] = []
        ids: list[int] = []

        third = asyncio.Event()

        def on_msg(msg: Any) -> None:
            times.append(asyncio.get_running_loop().time())
            ids.append(msg.t if hasattr(msg, "t") else msg["t"])
            if sim.connections_total >= 3 and times[-1] > start + 12:
                third.set()  # trades on a third connection, past the second notice

        connection = await client.websocket_streams.create_connection()
        start = asyncio.get_running_loop().time()
        try:
            handle = await connection.trade(symbol="btcusdt")
            handle.on("message", on_msg)
            await asyncio.wait_for(third.wait(), 40)
            late = [t for t in times if t > start + 12]
        finally:
            await connection.close_connection(close_session=True)
        assert sim.connections_total >= 3
    assert late, "no trades after the second connection's shutdown"
    assert ids == sorted(ids)
