"""The query API's history routes on a real uvicorn server, a real Redis and a real archive."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import orjson
import pytest
import redis

from cryptostream.archive.objects import ObjectRoot
from cryptostream.archive.store import archive_root
from cryptostream.config import Settings
from cryptostream.core.keys import candle_member, candles_1m_key
from cryptostream.core.trades import Trade
from cryptostream.core.views import compute_views
from cryptostream.query import candles as candle_math
from cryptostream.stack.redis_server import RedisServer
from cryptostream.stack.supervisor import free_port
from tests.archive.conftest import S3Server
from tests.archive.helpers import (
    DAY,
    T0,
    archive_depth,
    depth_stream,
    reference_book,
    sink_all,
    trades,
    values,
)
from tests.query.conftest import redis_server, start_service, stop_service

__all__ = ["redis_server"]

MIN = 60_000
CUTOFF = T0 + 3 * DAY // 2 + 7 * MIN  # Redis holds the minutes from here on (its "day")
LAG = T0 + 2 * DAY - 2 * 3_600_000  # the archive holds the trades before this (flush lag)


World = tuple[httpx.Client, list[Trade], Path | ObjectRoot]
# depth records over the first day (ingest time); the book at a time answers from them
DEPTH = depth_stream("BTCUSDT", 400, 7, T0 * 1000, DAY * 1000)


@pytest.fixture(params=["local", "s3"])
def world(
    redis_server: RedisServer, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[World]:
    """The same archive in a local folder, or on the S3 server (tests/archive/conftest.py)."""
    ts = trades(["BTCUSDT", "ETHUSDT"], 20_000)
    settings = Settings(redis_url=redis_server.url, query_port=free_port(), run_dir=tmp_path)
    archive: Path | ObjectRoot
    if request.param == "s3":
        s3: S3Server = request.getfixturevalue("s3_server")
        url = request.getfixturevalue("s3_url")
        settings = s3.settings(
            url, redis_url=redis_server.url, query_port=settings.query_port, run_dir=tmp_path
        )
        archive = archive_root(settings)
    else:
        archive = tmp_path / "archive"
        settings = settings.model_copy(update={"archive_dir": archive})
    sink_all(archive, values([t for t in ts if t.trade_time < LAG]), flush_rows=3000)
    archive_depth(archive, list(DEPTH), flush_rows=150)
    r = redis.Redis.from_url(redis_server.url)
    r.flushall()
    for sym, view in compute_views(ts).items():  # the processor's candles, trimmed to a "day"
        members = {
            orjson.dumps(candle_member(c)): c.open_time
            for c in view.candles.values()
            if c.open_time >= CUTOFF
        }
        r.zadd(candles_1m_key(sym, settings.partitions), members)
    service = start_service(settings)
    try:
        with httpx.Client(base_url=service.url, timeout=30) as client:
            yield client, ts, archive
    finally:
        stop_service(service)
        r.close()


def expected(
    ts: list[Trade], sym: str, start: int, end: int, minutes: int
) -> list[dict[str, object]]:
    """Buckets opening in [start, end), whole, from the views math over every trade."""
    width = minutes * MIN
    start, end = -(-start // width) * width, -(-end // width) * width
    view = compute_views(t for t in ts if t.symbol == sym)[sym]
    ones = [
        candle_math.parse_candle(orjson.dumps(candle_member(c)))
        for t, c in sorted(view.candles.items())
        if start <= t < end
    ]
    return [candle_math.candle_json(c, minutes) for c in candle_math.aggregate(ones, minutes)]


def test_ranged_candles_join_the_archive_and_redis_exactly(
    world: World,
) -> None:
    http, ts, _ = world
    for interval, minutes, start, end in [
        ("1m", 1, CUTOFF - 90 * MIN, CUTOFF + 90 * MIN),  # across the Redis boundary
        ("1h", 60, T0, T0 + 2 * DAY),  # both days; the boundary inside an hour
        ("5m", 5, T0 + 10 * MIN, T0 + DAY),  # only the archive
        ("15m", 15, CUTOFF, T0 + 2 * DAY),  # only Redis (the archive lags)
        ("1h", 60, T0 + 7 * MIN, T0 + DAY + 7 * MIN),  # unaligned: whole buckets opening in it
    ]:
        body = http.get(
            "/candles/BTCUSDT", params={"interval": interval, "from": start, "to": end}
        ).json()
        want = expected(ts, "BTCUSDT", start, end, minutes)
        assert body["candles"] == want, interval
        assert len(want) > 2
    # ISO-8601 times work too, and agree with the ms ones
    iso = http.get(
        "/candles/ETHUSDT",
        params={"interval": "1h", "from": "2024-06-10", "to": "2024-06-10T06:00:00Z"},
    ).json()
    start = 1717977600000
    assert iso["candles"] == expected(ts, "ETHUSDT", start, start + 6 * 3_600_000, 60)


def test_the_current_candles_behaviour_is_unchanged(
    world: World,
) -> None:
    http, ts, _ = world
    body = http.get("/candles/BTCUSDT", params={"limit": 3}).json()
    newest = max(t.trade_time for t in ts if t.symbol == "BTCUSDT")
    last_minute = newest - newest % MIN
    assert [c["open_time"] for c in body["candles"]][-1] == last_minute
    assert len(body["candles"]) == 3
    assert http.get("/candles/NOSUCH").status_code == 404  # still 404 without a range


def test_empty_and_bad_ranges(world: World) -> None:
    http, ts, _ = world
    empty = http.get("/candles/BTCUSDT", params={"from": T0 - 3 * DAY, "to": T0 - 2 * DAY})
    assert empty.status_code == 200 and empty.json()["candles"] == []
    assert http.get("/candles/NOSUCH", params={"from": T0, "to": T0 + DAY}).json()["candles"] == []
    assert http.get("/candles/BTCUSDT", params={"from": T0 + DAY, "to": T0}).json()["candles"] == []
    page = http.get("/history/trades/BTCUSDT", params={"from": T0 - 3 * DAY, "to": T0 - 2 * DAY})
    assert page.status_code == 200 and page.json()["trades"] == [] and page.json()["next"] is None
    for params in [{"from": "yesterday"}, {"to": "2024-13-01"}]:
        resp = http.get("/candles/BTCUSDT", params=params)
        assert resp.status_code == 400 and "error" in resp.json(), params
    # more candles than one answer holds: the first CSP_HISTORY_MAX_CANDLES, then `next`
    got, url, pages = [], f"/candles/BTCUSDT?interval=1m&from={T0}&to={T0 + 4 * DAY}", 0
    while url:
        body = http.get(url).json()
        got += body["candles"]
        url = body.get("next")
        pages += 1
    assert pages == 2 and got == expected(ts, "BTCUSDT", T0, T0 + 4 * DAY, 1)
    assert http.get("/history/trades/BTCUSDT", params={"to": "12:xx"}).status_code == 400
    assert http.get("/history/trades/B!").status_code == 400
    assert http.get("/history/trades/BTCUSDT", params={"limit": 10**9}).status_code == 400


def test_history_trades_pages_cover_the_range_once(
    world: World,
) -> None:
    http, ts, _ = world
    start, end = T0 + DAY // 3, T0 + DAY
    url: str | None = f"/history/trades/ETHUSDT?from={start}&to={end}&limit=700"
    got: list[dict[str, object]] = []
    pages = 0
    while url:
        body = http.get(url).json()
        got += body["trades"]
        url = body["next"]
        pages += 1
    want = [t for t in ts if t.symbol == "ETHUSDT" and start <= t.trade_time < end]
    assert pages > 2
    assert [g["trade_id"] for g in got] == [t.trade_id for t in want]
    assert all(Decimal(str(g["price"])) == Decimal(t.price) for g, t in zip(got, want, strict=True))
    assert all(
        Decimal(str(g["quantity"])) == Decimal(t.quantity) for g, t in zip(got, want, strict=True)
    )


def test_a_truncated_file_is_named_and_skipped_not_served(
    world: World,
) -> None:
    http, _, archive = world
    if isinstance(archive, ObjectRoot):
        names = [archive.rel(i.path) for i in archive.files()]
        key = sorted(n for n in names if "symbol=BTCUSDT/" in n and n.endswith(".parquet"))[0]
        data = archive.get(key)
        archive.put(key, data[: len(data) // 3])  # an upload gone wrong
        victim = archive.url(archive.key(key))
    else:
        path = sorted(archive.glob("date=*/symbol=BTCUSDT/*.parquet"))[0]
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
        victim = str(path)
    body = http.get("/candles/BTCUSDT", params={"interval": "1h", "from": T0, "to": T0 + DAY})
    assert body.status_code == 200
    assert body.json()["skipped_files"] == [victim]
    page = http.get("/history/trades/BTCUSDT", params={"from": T0, "to": T0 + DAY, "limit": 10})
    assert page.status_code == 200 and page.json()["skipped_files"] == [victim]
    assert len(page.json()["trades"]) == 10


def test_history_book_at_a_time_equals_the_topic_book(world: World) -> None:
    """GET /history/book rebuilds the book from the archived snapshot + diffs; it equals
    core/depth.py's TopicBook over the same records from the first one."""
    http, _, _ = world
    compared = 0
    for at in range(T0 + DAY // 40, T0 + DAY, DAY // 9):
        ref = reference_book(DEPTH, at)
        resp = http.get("/history/book/btcusdt", params={"at": at, "depth": 1000})
        if ref is None or not ref.synced:
            assert resp.status_code == 404 and "book not available" in resp.json()["error"]
            continue
        assert resp.status_code == 200, resp.text
        body = resp.json()
        bids, asks = ref.book.top(1000)
        assert body["last_update_id"] == ref.book.last_update_id
        for side, want in (("bids", bids), ("asks", asks)):
            assert [(Decimal(p), Decimal(q)) for p, q in body[side]] == [
                (Decimal(p), Decimal(q)) for p, q in want
            ]
        compared += 1
    assert compared >= 4
    top = http.get("/history/book/BTCUSDT", params={"at": T0 + DAY - 1, "depth": 3}).json()
    assert len(top["bids"]) == len(top["asks"]) == 3
    before = http.get("/history/book/BTCUSDT", params={"at": T0 - 1})
    assert before.status_code == 404
    assert http.get("/history/book/ETHUSDT", params={"at": T0 + DAY}).status_code == 404
    assert http.get("/history/book/BTCUSDT", params={"at": "soon"}).status_code == 400
    assert http.get("/history/book/BTCUSDT", params={"depth": 0}).status_code == 400
