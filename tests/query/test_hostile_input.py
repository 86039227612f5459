"""Symbols built to attack, arbitrary path segments, and every write method: always a 4xx with a
JSON error body, never a 5xx, and Redis is never changed (the API has no write path)."""

from __future__ import annotations

import socket
from urllib.parse import quote, urlsplit

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.query.conftest import RunningService, put_candle, put_price, put_stats

ATTACKS = [
    "*",
    "?",
    "[A-Z]*",
    "BTC*",
    "..",
    "../",
    "../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f",
    "BTC\r\nSet-Cookie: pwned=1",
    "BTC\nUSDT",
    "BTC\rUSDT",
    "BTC\x00USDT",
    "\x00",
    "A" * 21,
    "A" * 10_000,
    "BTCÜSDT",
    "比特币",
    "🚀🚀",
    "BTCUSDT ",
    " BTCUSDT",
    " ",
    "\t",
    "price:BTCUSDT",
    "BTCUSDT;FLUSHALL",
    "BTCUSDT\r\nFLUSHALL",
    '{"$ne":1}',
    "' OR 1=1 --",
    "<script>alert(1)</script>",
    "%",
    "%%",
    "%ZZ",
    "BTC%USDT",
    "B",
    "-1",
    "BTC-USDT",
    "BTC_USDT",
]
SYMBOL_ROUTES = ["/price/{}", "/trades/latest/{}", "/candles/{}", "/stats/{}"]
QUERY_ROUTES = ["/prices?symbols={}", "/candles/BTCUSDT?interval={}", "/candles/BTCUSDT?limit={}"]
WRITE_METHODS = ["POST", "PUT", "DELETE", "PATCH"]


@pytest.fixture
def seeded(r: redis.Redis) -> redis.Redis:
    put_price(r, "BTCUSDT", "66398.85000000", trade_id=7)
    put_stats(r, "BTCUSDT", 3, "1.5", "99597.275")
    put_candle(r, "BTCUSDT", 1_718_000_040_000, "1", "2", "0.5", "1.5", "3", "4.5", 3)
    return r


def _snapshot(r: redis.Redis) -> dict[str, object]:
    out: dict[str, object] = {}
    for key in sorted(r.scan_iter("*")):
        kind = r.type(key)
        out[key] = {
            "hash": r.hgetall,
            "set": r.smembers,
            "zset": lambda k: r.zrange(k, 0, -1, withscores=True),
        }[kind](key)
    return out


def _assert_client_error(reply: httpx.Response, what: str) -> None:
    assert 400 <= reply.status_code < 500, (what, reply.status_code, reply.text[:200])
    assert reply.headers["content-type"].startswith("application/json"), (what, reply.headers)
    assert isinstance(reply.json().get("error"), str), (what, reply.text[:200])
    assert "set-cookie" not in reply.headers and "pwned" not in str(reply.headers)


@pytest.mark.parametrize("route", SYMBOL_ROUTES + QUERY_ROUTES)
def test_attack_symbols_get_a_json_4xx_and_change_nothing(
    http: httpx.Client, seeded: redis.Redis, route: str
) -> None:
    before = _snapshot(seeded)
    for attack in ATTACKS:
        path = route.format(quote(attack, safe=""))  # percent-encoded: one path segment
        reply = http.get(path)
        if reply.status_code == 200:  # only lenient forms of a real symbol may succeed
            assert attack.strip().upper() in ("BTCUSDT",), (path, reply.text)
            continue
        if reply.status_code == 404 and reply.json() == {"error": "price not available"}:
            assert attack.strip().isalnum(), (path, reply.text)  # a well-formed unknown symbol
            continue
        _assert_client_error(reply, path)
    assert _snapshot(seeded) == before


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.text(min_size=1, max_size=64))
def test_any_symbol_text_is_never_a_server_error(service: RunningService, symbol: str) -> None:
    with httpx.Client(base_url=service.url, timeout=10) as client:
        for route in ("/price/{}", "/stats/{}"):
            reply = client.get(route.format(quote(symbol, safe="")))
            assert reply.status_code < 500, (symbol, reply.status_code, reply.text[:200])
            assert "error" in reply.json() or reply.status_code == 200


def test_raw_crlf_in_the_request_line_is_refused(service: RunningService) -> None:
    """Bytes no HTTP client would send: the server's parser refuses them with a 4xx."""
    netloc = urlsplit(service.url)
    with socket.create_connection((netloc.hostname, netloc.port), timeout=5) as sock:
        sock.sendall(b"GET /price/BTC\r\nSet-Cookie: x HTTP/1.1\r\nHost: x\r\n\r\n")
        head = sock.recv(4096).split(b"\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 4"), head


def test_no_write_path(http: httpx.Client, seeded: redis.Redis) -> None:
    """The OpenAPI schema documents only reads, and every write method on every route is
    refused (405, or 404 for paths that do not exist) without touching Redis."""
    schema = http.get("/openapi.json").json()
    methods = {m.upper() for ops in schema["paths"].values() for m in ops}
    assert methods == {"GET"}, methods
    before = _snapshot(seeded)
    paths = [p.replace("{symbol}", "BTCUSDT") for p in schema["paths"]]
    for path in [*paths, "/", "/price", "/price/BTCUSDT/x", "/admin", "/flush"]:
        for method in WRITE_METHODS:
            reply = http.request(
                method,
                path,
                content=b'{"price": "1"}',
                headers={"content-type": "application/json"},
            )
            assert reply.status_code in (404, 405), (method, path, reply.status_code)
            assert "error" in reply.json(), (method, path, reply.text)
    assert _snapshot(seeded) == before
