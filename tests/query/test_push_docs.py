"""The WebSocket protocol is documented in the OpenAPI description and the README, and the
example there runs as printed against a real server."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import redis

from tests.query.conftest import RunningService, publish, trade_update
from tests.query.test_push import _wait_subscribed

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_block(text: str) -> str:
    match = re.search(r"```python\n(.*?)```", text, flags=re.S)
    assert match, "no python example"
    return match.group(1)


def test_openapi_description_documents_the_websocket_protocol(http: httpx.Client) -> None:
    description = http.get("/openapi.json").json()["info"]["description"]
    for needed in [
        "/ws/prices",
        '{"op": "subscribe"',
        '{"op": "unsubscribe"',
        '{"type": "subscribed"',
        '{"type": "prices"',
        '{"type": "error"',
        "1008",
    ]:
        assert needed in description, needed
    assert _python_block(description) in README.read_text()  # the README shows the same


def test_the_documented_example_runs(
    service: RunningService, http: httpx.Client, r: redis.Redis
) -> None:
    _wait_subscribed(r)
    code = _python_block(http.get("/openapi.json").json()["info"]["description"])
    code = code.replace("ws://127.0.0.1:3000", service.ws_url)
    proc = subprocess.Popen([sys.executable, "-u", "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = orjson.loads(proc.stdout.readline())
        assert first == {"type": "subscribed", "symbols": ["BTCUSDT"]}
        second = orjson.loads(proc.stdout.readline())  # the subscribe op's acknowledgement
        assert second == {"type": "subscribed", "symbols": ["BTCUSDT", "ETHUSDT"]}
        publish(r, [trade_update("ETHUSDT", "2.5", trade_id=1)])
        started = time.monotonic()
        frame = orjson.loads(proc.stdout.readline())
        assert frame["type"] == "prices" and frame["updates"][0]["symbol"] == "ETHUSDT"
        assert time.monotonic() - started < 10
    finally:
        proc.kill()
        proc.wait()
