"""Plain HTTP on the simulator's port: methods, request bodies, keep-alive (real sockets)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from marketsim.http1 import HttpError, RequestParser
from marketsim.server import Simulator


async def _exchange(sim: Simulator, raw: bytes, responses: int = 1) -> tuple[list[bytes], bool]:
    """Send raw bytes; read ``responses`` responses; return them and whether the server closed."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    writer.write(raw)
    await writer.drain()
    out = []
    try:
        async with asyncio.timeout(5):
            for _ in range(responses):
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                body = b"" if raw.startswith(b"HEAD") else await reader.readexactly(length)
                out.append(head + body)
        try:
            closed = await asyncio.wait_for(reader.read(1), 0.5) == b""
        except TimeoutError:
            closed = False
    finally:
        writer.close()
    return out, closed


async def test_keep_alive_serves_several_requests_on_one_connection(sim: Simulator) -> None:
    async with httpx.AsyncClient(base_url=sim.rest_url) as http:
        r1 = await http.get("/api/v3/ping")
        r2 = await http.get("/api/v3/time")
        r3 = await http.get("/api/v3/exchangeInfo")
    assert r1.headers["connection"] == "keep-alive" and r1.json() == {}
    assert r2.status_code == 200 and r3.status_code == 200
    assert sim.stats()["connections_total"] == 0  # no WebSocket connection was made


async def test_pipelined_requests_and_connection_close(sim: Simulator) -> None:
    get = b"GET /api/v3/ping HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /api/v3/time HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    out, closed = await _exchange(sim, get + get + last, responses=3)
    assert [r.split(b"\r\n")[0] for r in out] == [b"HTTP/1.1 200 OK"] * 3
    assert b"Connection: keep-alive" in out[0] and b"Connection: close" in out[2]
    assert b"serverTime" in out[2] and closed


async def test_request_with_a_body_is_answered(sim: Simulator) -> None:
    body = b'{"x": 1}'
    raw = (
        b"POST /api/v3/ping HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    chunked = (
        b"PUT /api/v3/time HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nab=c\r\n0\r\n\r\n"
    )
    then = b"GET /api/v3/ping HTTP/1.1\r\nHost: x\r\n\r\n"
    out, _ = await _exchange(sim, raw + chunked + then, responses=3)
    assert out[0].startswith(b"HTTP/1.1 405 ") and b"Allow: GET, HEAD, OPTIONS" in out[0]
    assert out[1].startswith(b"HTTP/1.1 405 ")
    assert out[2].startswith(b"HTTP/1.1 200 ")  # the bodies were consumed, not parsed as requests


@pytest.mark.parametrize("method", ["POST", "DELETE", "PUT", "PATCH"])
async def test_other_methods_are_not_answered_as_get(sim: Simulator, method: str) -> None:
    async with httpx.AsyncClient(base_url=sim.rest_url) as http:
        r = await http.request(method, "/api/v3/ping")
        head = await http.head("/api/v3/time")
    assert r.status_code == 405 and r.json()["code"] == -1000
    assert (
        head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
    )


async def test_http_1_0_closes_and_malformed_requests_get_400(sim: Simulator) -> None:
    out, closed = await _exchange(sim, b"GET /api/v3/ping HTTP/1.0\r\n\r\n")
    assert out[0].startswith(b"HTTP/1.1 200 ") and closed
    out, closed = await _exchange(sim, b"GET /api/v3/ping\r\n\r\n")
    assert out[0].startswith(b"HTTP/1.1 400 ") and closed
    out, _ = await _exchange(sim, b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out[0].startswith(b"HTTP/1.1 426 ")


def test_parser_waits_for_the_whole_body() -> None:
    p = RequestParser()
    p.feed(b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nab")
    assert p.next_request() is None
    p.feed(b"cdeGET /b HTTP/1.1\r\n\r\n")
    req = p.next_request()
    assert req is not None and req.body == b"abcde" and req.method == "POST"
    nxt = p.next_request()
    assert nxt is not None and nxt.target == "/b"
    p.feed(b"GET /c HTTP/1.1\r\nContent-Length: x\r\n\r\n")
    with pytest.raises(HttpError):
        p.next_request()


async def test_websocket_upgrade_on_a_kept_alive_connection(sim: Simulator) -> None:
    """aiohttp (ccxt) reuses its REST connection for the stream's opening handshake."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    try:
        writer.write(b"GET /api/v3/ping HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 ") and b"keep-alive" in head
        await reader.readexactly(2)  # {}
        writer.write(
            b"GET /ws/btcusdt@trade HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101 ")
        first = await asyncio.wait_for(reader.read(2), 5)
        assert first[0] == 0x81  # a text frame: trades flow on the upgraded connection
    finally:
        writer.close()
