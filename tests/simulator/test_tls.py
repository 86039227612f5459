"""Optional TLS: wss:// and https:// with a generated self-signed certificate."""

from __future__ import annotations

import json
import shutil
import ssl
from pathlib import Path

import httpx
import pytest

from marketsim.server import Simulator
from marketsim.tls import self_signed_cert

from .conftest import cfg, connect

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


async def test_wss_and_https(tmp_path: Path) -> None:
    cert, key = self_signed_cert(tmp_path)
    async with Simulator(cfg(rate=2000.0, tls_cert=cert, tls_key=key)) as sim:
        assert sim.ws_url.startswith("wss://") and sim.rest_url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(cert))
        async with connect(sim.ws_url + "/ws/btcusdt@trade", ssl=ctx) as ws:
            assert json.loads(await ws.recv())["e"] == "trade"
        async with httpx.AsyncClient(verify=ctx) as http:
            assert (await http.get(sim.rest_url + "/api/v3/ping")).json() == {}
