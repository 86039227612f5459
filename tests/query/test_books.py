"""Order books over HTTP and live push, on a real Redis written in the processor's layout
(core/keys.py: the ``book:{S}`` hash, one lexicographic sorted set per side, ``updates:book``)."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from websockets.sync.client import ClientConnection, connect

from cryptostream.config import Settings
from cryptostream.core.keys import (
    BOOK_CHANNEL,
    book_key,
    book_side_key,
    level_member,
)
from cryptostream.query.books import MalformedBook, book_answer, tops_answer
from cryptostream.stack.redis_server import RedisServer
from cryptostream.stack.supervisor import free_port
from tests.conftest import both_topologies
from tests.query.conftest import (
    N,
    RunningService,
    publish,
    start_service,
    stop_service,
    trade_update,
    wait_for,
)

DEADLINE_S = 5.0
Levels = list[tuple[str, str]]


def put_book(
    r: redis.Redis,
    symbol: str,
    bids: Levels,
    asks: Levels,
    *,
    last_update_id: int = 1,
    status: str = "synced",
    reason: str = "",
    update_time: int | None = None,
) -> None:
    """Replace the whole book in one MULTI/EXEC, as the processor applies it (best prices in
    the hash from the levels: bids highest, asks lowest)."""
    now = update_time if update_time is not None else int(time.time() * 1000)
    best_bid = max(bids, key=lambda level: float(level[0]), default=("", ""))
    best_ask = min(asks, key=lambda level: float(level[0]), default=("", ""))
    pipe = r.pipeline(transaction=True)
    pipe.delete(book_side_key(symbol, "bids", N), book_side_key(symbol, "asks", N))
    if bids:
        pipe.zadd(book_side_key(symbol, "bids", N), {level_member(p, q): 0 for p, q in bids})
    if asks:
        pipe.zadd(book_side_key(symbol, "asks", N), {level_member(p, q): 0 for p, q in asks})
    pipe.hset(
        book_key(symbol, N),
        mapping={
            "last_update_id": str(last_update_id),
            "status": status,
            "reason": reason,
            "best_bid": best_bid[0],
            "best_bid_qty": best_bid[1],
            "best_ask": best_ask[0],
            "best_ask_qty": best_ask[1],
            "event_time": str(now - 7),
            "ingest_time_us": str((now - 5) * 1000),
            "update_time": str(now),
        },
    )
    pipe.execute()


def book_update(symbol: str, bid: str, ask: str, last_update_id: int) -> dict[str, object]:
    """One element of an ``updates:book`` message (the shape documented in query/books.py:
    the symbol and the book hash's fields)."""
    now = int(time.time() * 1000)
    return {
        "symbol": symbol,
        "last_update_id": last_update_id,
        "status": "synced",
        "reason": None,
        "best_bid": bid,
        "best_bid_qty": "1.5",
        "best_ask": ask,
        "best_ask_qty": "2.5",
        "event_time": now - 3,
        "ingest_time_us": (now - 2) * 1000,
        "update_time": now,
    }


def publish_books(r: redis.Redis, updates: list[dict[str, object]]) -> int:
    return int(r.publish(BOOK_CHANNEL, orjson.dumps(updates)))


# --- GET /book/{symbol} ------------------------------------------------------------------------


@both_topologies
def test_levels_are_in_exact_price_order(http: httpx.Client, r: redis.Redis) -> None:
    # As strings "9.99" > "10.0" > "100.00000001"; as floats 100.00000001 would also tie with
    # nearby prices: the order must be the exact decimal order.
    bids = [
        ("9.99", "1"),
        ("100.00000001", "0.5"),
        ("10.0", "2"),
        ("0.00000001", "3"),
        ("100", "4"),
    ]
    asks = [("100.00000002", "1"), ("1000", "2"), ("100.000000015", "3"), ("99999.9", "4")]
    put_book(r, "BTCUSDT", bids, asks, last_update_id=42)
    resp = http.get("/book/btcusdt")
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["symbol"] == "BTCUSDT" and doc["lastUpdateId"] == 42
    assert doc["bids"] == [
        ["100.00000001", "0.5"],
        ["100", "4"],
        ["10.0", "2"],
        ["9.99", "1"],
        ["0.00000001", "3"],
    ]
    assert doc["asks"] == [
        ["100.000000015", "3"],
        ["100.00000002", "1"],
        ["1000", "2"],
        ["99999.9", "4"],
    ]
    stored = r.hgetall(book_key("BTCUSDT", N))
    assert doc["update_time"] == int(stored["update_time"])
    assert doc["event_time"] == int(stored["event_time"])
    assert doc["ingest_time_us"] == int(stored["ingest_time_us"])
    assert 0 <= doc["age_ms"] < 10_000


def test_depth_limits_each_side_to_the_best_levels(http: httpx.Client, r: redis.Redis) -> None:
    bids = [(f"{100 - i}.5", str(i + 1)) for i in range(30)]
    asks = [(f"{101 + i}.25", str(i + 1)) for i in range(30)]
    put_book(r, "ETHUSDT", bids, asks)
    default = http.get("/book/ETHUSDT").json()
    assert len(default["bids"]) == 20 and len(default["asks"]) == 20
    two = http.get("/book/ETHUSDT", params={"depth": 2}).json()
    assert two["bids"] == [["100.5", "1"], ["99.5", "2"]]
    assert two["asks"] == [["101.25", "1"], ["102.25", "2"]]
    everything = http.get("/book/ETHUSDT", params={"depth": 1000}).json()
    assert len(everything["bids"]) == 30 and len(everything["asks"]) == 30


def test_depth_bound_comes_from_the_settings(
    redis_server: RedisServer, tmp_path: Path, r: redis.Redis
) -> None:
    settings = Settings(
        redis_url=redis_server.url,
        query_port=free_port(),
        run_dir=tmp_path,
        query_max_book_depth=3,
        query_max_symbols=2,
    )
    put_book(r, "BTCUSDT", [(f"{i}.5", "1") for i in range(1, 6)], [("9", "1")])
    running = start_service(settings)
    try:
        with httpx.Client(base_url=running.url, timeout=10) as client:
            assert len(client.get("/book/BTCUSDT").json()["bids"]) == 3  # default: the bound
            assert len(client.get("/book/BTCUSDT?depth=3").json()["bids"]) == 3
            assert client.get("/book/BTCUSDT?depth=4").status_code == 400
            assert client.get("/books/top?symbols=AAA,BBB").status_code == 200
            assert client.get("/books/top?symbols=AAA,BBB,CCC").status_code == 400
    finally:
        stop_service(running)


def test_an_empty_side_is_an_empty_list(http: httpx.Client, r: redis.Redis) -> None:
    put_book(r, "SOLUSDT", [("150.1", "3")], [])
    doc = http.get("/book/SOLUSDT").json()
    assert doc["bids"] == [["150.1", "3"]] and doc["asks"] == []


@pytest.mark.parametrize("depth", ["0", "-1", "1001", "abc", "1.5", ""])
def test_invalid_depth_is_a_json_400(http: httpx.Client, r: redis.Redis, depth: str) -> None:
    put_book(r, "BTCUSDT", [("1", "1")], [("2", "1")])
    resp = http.get(f"/book/BTCUSDT?depth={depth}")
    assert resp.status_code == 400, resp.text
    assert "depth" in resp.json()["error"]


def test_absent_book_is_404_and_bad_symbol_400(http: httpx.Client, r: redis.Redis) -> None:
    resp = http.get("/book/BTCUSDT")
    assert resp.status_code == 404
    assert resp.json() == {"error": "book not available"}
    for bad in [
        "BTC-USDT",
        "A",
        "X" * 21,
        "%00",
        "..%2F..%2Fsymbols",
        "BTC%0D%0AX",
        "B" * 4000,
        "BTC%20USDT",
        "%F0%9F%92%A9",
    ]:
        resp = http.get(f"/book/{bad}")
        # 400 from the symbol check; an encoded "/" makes another path, which no route has: 404
        assert resp.status_code == (404 if "%2F" in bad else 400), (bad, resp.text)
        assert "error" in resp.json()


@both_topologies
def test_unsynced_book_is_never_served(http: httpx.Client, r: redis.Redis) -> None:
    put_book(
        r,
        "BTCUSDT",
        [("1", "1")],
        [("2", "1")],
        status="unsynced",
        reason="gap in update ids: expected 101, got 105",
    )
    resp = http.get("/book/BTCUSDT")
    assert resp.status_code == 503
    assert resp.json() == {
        "error": "book resyncing",
        "reason": "gap in update ids: expected 101, got 105",
    }
    put_book(r, "BTCUSDT", [("1", "1")], [("2", "1")], last_update_id=106)  # resynced
    assert http.get("/book/BTCUSDT").json()["lastUpdateId"] == 106


def test_a_concurrent_atomic_writer_never_yields_a_mixed_book(
    http: httpx.Client, r: redis.Redis, redis_server: RedisServer
) -> None:
    """Version k of the book has 1 + k % 9 levels per side, every quantity k: a reply mixing
    the hash of one version with a side of another shows as a wrong count or quantity."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def levels(k: int) -> tuple[Levels, Levels]:
        n = 1 + k % 9
        return (
            [(f"{1000 - i}.{k % 97}", str(k)) for i in range(n)],
            [(f"{1001 + i}.{k % 89}", str(k)) for i in range(n)],
        )

    def write() -> None:
        writer = redis.Redis.from_url(redis_server.url, decode_responses=True)
        k = 0
        try:
            while not stop.is_set():
                k += 1
                bids, asks = levels(k)
                put_book(writer, "BTCUSDT", bids, asks, last_update_id=k)
        except BaseException as exc:  # reported by the test
            errors.append(exc)
        finally:
            writer.close()

    put_book(r, "BTCUSDT", *levels(0), last_update_id=0)
    thread = threading.Thread(target=write, name="book-writer", daemon=True)
    thread.start()
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline or len(seen) < 20:
            assert time.monotonic() < deadline + 10, "the writer made no progress"
            doc = http.get("/book/BTCUSDT", params={"depth": 50}).json()
            k = doc["lastUpdateId"]
            bids, asks = levels(k)
            assert doc["bids"] == [[p, q] for p, q in bids], doc
            assert doc["asks"] == [[p, q] for p, q in asks], doc
            seen.add(k)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not errors, errors
    assert len(seen) >= 20  # reads really overlapped many writes


def test_book_routes_answer_503_while_redis_is_down(
    service: RunningService, http: httpx.Client, r: redis.Redis, redis_server: RedisServer
) -> None:
    put_book(r, "BTCUSDT", [("1", "1")], [("2", "1")])
    assert http.get("/book/BTCUSDT").status_code == 200
    assert redis_server.process is not None
    redis_server.process.stop(timeout=10)
    try:
        for path in ["/book/BTCUSDT", "/books/top?symbols=BTCUSDT"]:
            resp = http.get(path)
            assert resp.status_code == 503, path
            assert resp.json() == {"error": "redis unavailable"}
        assert http.get("/book/BTCUSDT?depth=0").status_code == 400  # input is checked first
    finally:
        redis_server.process.start()
        redis_server.process.wait_until(redis_server.ping, timeout=20, what="a PING reply")
    wait_for(lambda: http.get("/ready").status_code == 200, timeout=10)
    assert http.get("/book/BTCUSDT").status_code == 404  # an empty Redis until rebuilt
    _wait_subscribed(r)  # the push hub re-subscribed by itself: book updates flow again
    with connect(service.ws_url + "/ws/prices?books=BTCUSDT") as ws:
        _recv(ws), _recv(ws)  # the two acknowledgements
        update = book_update("BTCUSDT", "1.5", "1.6", 2)
        publish_books(r, [update])
        assert _recv(ws) == {"type": "books", "updates": [update]}


def test_malformed_stored_levels_are_detected() -> None:
    fields = {b"status": b"synced", b"last_update_id": b"7"}
    with pytest.raises(MalformedBook):
        book_answer("BTCUSDT", fields, [b"not a level"], [], 0)
    with pytest.raises(MalformedBook):
        book_answer("BTCUSDT", {b"status": b"synced"}, [], [], 0)  # no last_update_id
    status, body = book_answer("BTCUSDT", {b"status": b"unsynced"}, [], [], 0)
    assert (status, orjson.loads(body)) == (503, {"error": "book resyncing", "reason": None})


# --- GET /books/top ----------------------------------------------------------------------------


@both_topologies
def test_books_top_batch(http: httpx.Client, r: redis.Redis) -> None:
    put_book(
        r,
        "BTCUSDT",
        [("66398.84", "1.2"), ("66398.1", "3")],
        [("66398.85", "0.5")],
        last_update_id=9,
    )
    put_book(r, "ETHUSDT", [("1", "1")], [("2", "1")], status="unsynced", reason="snapshot")
    put_book(r, "SOLUSDT", [], [("150.5", "2")], last_update_id=3)
    resp = http.get("/books/top", params={"symbols": "btcusdt,ETHUSDT,XYZUSDT,SOLUSDT,BTCUSDT"})
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["missing"] == ["XYZUSDT"]
    assert doc["resyncing"] == {"ETHUSDT": "snapshot"}
    assert set(doc["books"]) == {"BTCUSDT", "SOLUSDT"}
    btc = doc["books"]["BTCUSDT"]
    assert (btc["best_bid"], btc["best_bid_qty"], btc["best_ask"], btc["best_ask_qty"]) == (
        "66398.84",
        "1.2",
        "66398.85",
        "0.5",
    )
    assert btc["lastUpdateId"] == 9 and 0 <= btc["age_ms"] < 10_000
    sol = doc["books"]["SOLUSDT"]
    assert sol["best_bid"] is None and sol["best_bid_qty"] is None and sol["best_ask"] == "150.5"


def test_books_top_input_is_bounded_and_validated(http: httpx.Client, r: redis.Redis) -> None:
    for params in [
        {"symbols": ""},
        {"symbols": "BTC-USDT"},
        {},
        {"symbols": ",".join(f"S{i:03d}" for i in range(101))},
    ]:
        resp = http.get("/books/top", params=params)
        assert resp.status_code == 400, (params, resp.text)
        assert "error" in resp.json()
    many = ",".join(f"S{i:03d}" for i in range(100))
    assert len(http.get("/books/top", params={"symbols": many}).json()["missing"]) == 100


def test_tops_answer_pure() -> None:
    rows: list[list[bytes | None]] = [[None] * 9, [b"unsynced", None, *[None] * 7]]
    doc = tops_answer(["AAA", "BBB"], rows, 0)
    assert doc == {"books": {}, "missing": ["AAA"], "resyncing": {"BBB": None}}


# --- live push ---------------------------------------------------------------------------------


def _wait_subscribed(r: redis.Redis) -> None:
    wait_for(lambda: dict(r.pubsub_numsub(BOOK_CHANNEL)).get(BOOK_CHANNEL, 0) >= 1)


def _recv(ws: ClientConnection, timeout: float = DEADLINE_S) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(ws.recv(timeout=timeout))
    return doc


def test_sse_stream_of_books(service: RunningService, r: redis.Redis, http: httpx.Client) -> None:
    _wait_subscribed(r)
    update = book_update("BTCUSDT", "66398.84", "66398.85", 11)
    with http.stream("GET", "/stream/books", params={"symbols": "btcusdt"}) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        lines = resp.iter_lines()
        assert next(lines) == ": subscribed"
        publish(r, [trade_update("BTCUSDT", "1", trade_id=1)])  # a price: not on this stream
        publish_books(r, [book_update("ETHUSDT", "1", "2", 1), update])
        data = next(line for line in lines if line.startswith("data: "))
        assert orjson.loads(data[len("data: ") :]) == [update]
    assert http.get("/stream/books?symbols=A").status_code == 400


def test_sse_stream_of_every_book(
    service: RunningService, r: redis.Redis, http: httpx.Client
) -> None:
    _wait_subscribed(r)
    with http.stream("GET", "/stream/books") as resp:
        lines = resp.iter_lines()
        assert next(lines) == ": subscribed"
        update = book_update("SOLUSDT", "150.1", "150.2", 5)
        publish_books(r, [update])
        data = next(line for line in lines if line.startswith("data: "))
        assert orjson.loads(data[len("data: ") :]) == [update]


def test_websocket_book_channel(service: RunningService, r: redis.Redis) -> None:
    _wait_subscribed(r)
    with connect(service.ws_url + "/ws/prices?symbols=BTCUSDT") as ws:
        assert _recv(ws) == {"type": "subscribed", "symbols": ["BTCUSDT"]}
        ws.send(
            orjson.dumps(
                {"op": "subscribe", "channel": "book", "symbols": ["btcusdt", "ETHUSDT"]}
            ).decode()
        )
        assert _recv(ws) == {
            "type": "subscribed",
            "channel": "book",
            "symbols": ["BTCUSDT", "ETHUSDT"],
        }
        update = book_update("ETHUSDT", "3120.5", "3120.51", 77)
        publish_books(r, [update, book_update("SOLUSDT", "1", "2", 1)])
        assert _recv(ws) == {"type": "books", "updates": [update]}
        price = trade_update("BTCUSDT", "66398.85", trade_id=5)
        publish(r, [price])
        assert _recv(ws) == {"type": "prices", "updates": [price]}  # both on one connection
        ws.send(
            orjson.dumps({"op": "unsubscribe", "channel": "book", "symbols": ["ETHUSDT"]}).decode()
        )
        assert _recv(ws) == {"type": "subscribed", "channel": "book", "symbols": ["BTCUSDT"]}
        for bad in [
            '{"op": "subscribe", "channel": "trades", "symbols": ["BTCUSDT"]}',
            '{"op": "subscribe", "channel": ["book"], "symbols": ["BTCUSDT"]}',
            '{"op": "subscribe", "channel": "book", "symbols": ["B-C"]}',
        ]:
            ws.send(bad)
            assert _recv(ws)["type"] == "error"
        publish_books(r, [book_update("ETHUSDT", "1", "2", 78)])  # unsubscribed: not sent
        btc = book_update("BTCUSDT", "66398.84", "66398.85", 79)
        publish_books(r, [btc])
        assert _recv(ws) == {"type": "books", "updates": [btc]}


def test_websocket_books_on_connect(service: RunningService, r: redis.Redis) -> None:
    _wait_subscribed(r)
    with connect(service.ws_url + "/ws/prices?books=solusdt") as ws:
        assert _recv(ws) == {"type": "subscribed", "symbols": []}
        assert _recv(ws) == {"type": "subscribed", "channel": "book", "symbols": ["SOLUSDT"]}
        first = book_update("SOLUSDT", "150.1", "150.2", 1)
        publish_books(r, [first])
        assert _recv(ws) == {"type": "books", "updates": [first]}
    with connect(service.ws_url + "/ws/prices?books=S-X") as ws:
        assert _recv(ws)["type"] == "error"
        with pytest.raises(Exception):  # noqa: B017 - closed by the server (1008)
            ws.recv(timeout=DEADLINE_S)
        assert ws.close_code == 1008


def test_book_updates_coalesce_per_symbol_for_a_client_that_has_not_taken_them() -> None:
    from cryptostream.query.metrics import QueryMetrics
    from cryptostream.query.push import ClientFeed, PushHub

    metrics = QueryMetrics()
    hub = PushHub("redis://127.0.0.1:1/0", metrics)
    feed = ClientFeed(metrics)
    hub.books.register(feed, ["BTCUSDT"])
    for k in range(1, 4):
        hub.dispatch(BOOK_CHANNEL.encode(), orjson.dumps([book_update("BTCUSDT", "1", "2", k)]))
    hub.dispatch(b"updates:price", orjson.dumps([trade_update("BTCUSDT", "1")]))  # other topic
    assert [u["last_update_id"] for u in feed.pending.values()] == [3]
    assert feed.coalesced == 2
    hub.books.unregister(feed)
    assert hub.books.by_symbol == {} and hub.pending_total() == 0


# --- documentation and metrics -----------------------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _book_example(description: str) -> str:
    blocks = [b for b in _python_blocks(description) if '"channel": "book"' in b]
    assert len(blocks) == 1, "no single book example in the OpenAPI description"
    return blocks[0]


def test_openapi_documents_the_book_routes(http: httpx.Client) -> None:
    schema = http.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    for path in ["/book/{symbol}", "/books/top", "/stream/books"]:
        responses = schema["paths"][path]["get"]["responses"]
        assert "422" not in responses and "400" in responses, path
        content = next(iter(responses["200"]["content"].values()))
        ref = content.get("schema", {}).get("$ref", "")
        model = components.get(ref.rsplit("/", 1)[-1], {}) if ref else {}
        assert "example" in content or "examples" in model, path
    book = schema["paths"]["/book/{symbol}"]["get"]
    assert {"404", "503"} <= set(book["responses"])
    depth = next(p for p in book["parameters"] if p["name"] == "depth")
    assert depth["schema"]["maximum"] == 1000 and depth["schema"]["default"] == 20
    description = schema["info"]["description"]
    for needed in ["/stream/books", '"channel": "book"', '{"type": "books"', "unsynced"]:
        assert needed in description, needed
    assert _book_example(description) in README.read_text()  # the README shows the same


def test_the_documented_book_example_runs(
    service: RunningService, http: httpx.Client, r: redis.Redis
) -> None:
    _wait_subscribed(r)
    code = _book_example(http.get("/openapi.json").json()["info"]["description"])
    code = code.replace("ws://127.0.0.1:3000", service.ws_url)
    proc = subprocess.Popen([sys.executable, "-u", "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert orjson.loads(proc.stdout.readline()) == {"type": "subscribed", "symbols": []}
        ack = orjson.loads(proc.stdout.readline())
        assert ack == {"type": "subscribed", "channel": "book", "symbols": ["BTCUSDT"]}
        update = book_update("BTCUSDT", "66398.84", "66398.85", 5)
        publish_books(r, [update])
        started = time.monotonic()
        assert orjson.loads(proc.stdout.readline()) == {"type": "books", "updates": [update]}
        assert time.monotonic() - started < 10
    finally:
        proc.kill()
        proc.wait()


def test_book_requests_are_counted(http: httpx.Client, r: redis.Redis) -> None:
    put_book(r, "BTCUSDT", [("1", "1")], [("2", "1")])
    http.get("/book/BTCUSDT")
    http.get("/book/NOPEUSDT")
    http.get("/books/top?symbols=BTCUSDT")
    text = http.get("/metrics").text
    assert 'csp_query_requests_total{route="/book/{symbol}",status="200"}' in text
    assert 'csp_query_requests_total{route="/book/{symbol}",status="404"}' in text
    assert 'csp_query_requests_total{route="/books/top",status="200"}' in text
    assert "csp_query_stream_book_updates_received_total" in text
