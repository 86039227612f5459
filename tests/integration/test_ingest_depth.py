"""``csp ingest`` with depth on, against the real broker and a local exchange that replays the
genuine BTCUSDT recording (../shared/data): ``btcusdt@depth@100ms`` frames over a WebSocket, and
``GET /api/v3/depth`` answered with the exchange's book at that moment (the recorded snapshot plus
every diff since, kept with plain Decimals: an oracle independent of the code under test).

The exchange misbehaves on purpose: the first snapshot request is rate limited (429 with
Retry-After), one frame is malformed, one diff never arrives (a gap), and the connection drops
once (a reconnect, while five diffs go by). What reaches ``raw.depth`` must still obey the topic
contract exactly, and rebuild the exchange's final book; every break is on the gap topic.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from cryptostream.config import Settings
from cryptostream.core.depth import TopicBook, decode_depth
from cryptostream.ingest.gaps import DepthBreakRecord, decode_depth_break
from cryptostream.stack.pipeline import Pipeline, wait_for
from cryptostream.stack.supervisor import free_port
from cryptostream_lab.reliability.gaps import summarize
from tests.conftest import Env
from tests.kafka_helpers import read_all
from tests.unit.test_ingest_depth import SHARED, read_recording
from tests.ws_server import ScriptedWsServer

pytestmark = pytest.mark.integration

RECORDING = SHARED / "hftbacktest_spot_btcusdt_20240808.gz"
MALFORMED_AT, DROP_AT, DISCONNECT_AT, MISSED = 1000, 1500, 2500, 5
BAD_FRAME = (
    b'{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT",'
    b'"U":7,"u":8,"b":[["NaN","1"]],"a":[]}}'
)


class ReplayExchange(ScriptedWsServer):
    def __init__(self, pace_s: float = 0.002) -> None:
        super().__init__()
        self.pace_s = pace_s
        self.diffs: list[tuple[bytes, dict[str, object]]] = []
        snapshot: dict[str, list[list[str]]] | None = None
        for _us, kind, raw in read_recording(RECORDING):
            if kind == "diff":
                self.diffs.append((raw, orjson.loads(raw)["data"]))
            elif kind == "snapshot":
                snapshot = orjson.loads(raw)
                self.snapshot_after = len(self.diffs)  # the diffs received before it
        assert snapshot is not None
        self.book = {
            side: {Decimal(p): Decimal(q) for p, q in snapshot[side]} for side in ("bids", "asks")
        }
        self.book_id: int = snapshot["lastUpdateId"]  # type: ignore[assignment]
        self.next = 0
        self.dropped_connection = False
        self.rest_requests: list[dict[str, list[str]]] = []
        self.rest_answers: list[int] = []  # lastUpdateId of each snapshot served
        self.serve_options = {"process_request": self._rest}  # type: ignore[misc]

    def _advance(self) -> None:
        """The exchange's own book moves on by diff ``self.next`` (sent or not)."""
        data = self.diffs[self.next][1]
        if data["u"] > self.book_id:  # type: ignore[operator]
            for side, key in (("bids", "b"), ("asks", "a")):
                for p, q in data[key]:  # type: ignore[attr-defined]
                    if Decimal(q) == 0:
                        self.book[side].pop(Decimal(p), None)
                    else:
                        self.book[side][Decimal(p)] = Decimal(q)
            self.book_id = data["u"]  # type: ignore[assignment]
        self.next += 1

    def _rest(self, conn: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if parts.path != "/api/v3/depth":
            return None  # a WebSocket upgrade
        query = parse_qs(parts.query)
        self.rest_requests.append(query)
        if len(self.rest_requests) == 1:
            body = b'{"code":-1003,"msg":"Too many requests"}'
            return Response(429, "Too Many Requests", Headers({"Retry-After": "1"}), body)
        limit = int(query["limit"][0])
        doc = {
            "lastUpdateId": self.book_id,
            "bids": [
                [f"{p:f}", f"{q:f}"]
                for p, q in sorted(self.book["bids"].items(), reverse=True)[:limit]
            ],
            "asks": [[f"{p:f}", f"{q:f}"] for p, q in sorted(self.book["asks"].items())[:limit]],
        }
        self.rest_answers.append(self.book_id)
        return Response(
            HTTPStatus.OK, "OK", Headers({"Content-Type": "application/json"}), orjson.dumps(doc)
        )

    async def handler(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else ""
        if "@depth" not in path:
            await self.stopped()  # the trade connection: a quiet market
            return
        while self.next < len(self.diffs):
            if self.next == DISCONNECT_AT and not self.dropped_connection:
                self.dropped_connection = True
                for _ in range(MISSED):  # go by while nobody listens
                    self._advance()
                await ws.close()
                return
            if self.next == MALFORMED_AT:
                await ws.send(BAD_FRAME.decode())
            if self.next != DROP_AT:  # this one is lost on the way
                await ws.send(self.diffs[self.next][0].decode())
            self._advance()
            await asyncio.sleep(self.pace_s)
        await self.stopped()

    @property
    def last_id(self) -> int:
        return self.diffs[-1][1]["u"]  # type: ignore[return-value]


@pytest.fixture
def depth_env(isolated: Env) -> Iterator[tuple[Env, Settings, Pipeline]]:
    """The test's own topics (a depth topic among them) and a pipeline that uses them."""
    settings = isolated.settings
    assert settings.depth_topic.startswith("raw.depth.")  # isolated, like the others
    pipeline = Pipeline(
        isolated.workdir,
        settings.kafka_bootstrap,
        settings.redis_url,
        ["BTCUSDT"],
        extra_env=isolated.env,
    )
    try:
        yield isolated, settings, pipeline
    finally:
        pipeline.stop()


def _levels(book: TopicBook) -> dict[str, dict[Decimal, Decimal]]:
    return {
        side: {Decimal(p): Decimal(q) for p, q in levels.values()}
        for side, levels in (("bids", book.book.bids), ("asks", book.book.asks))
    }


@pytest.mark.skipif(not RECORDING.exists(), reason="the genuine recording is not present")
def test_depth_from_a_replayed_exchange_reaches_the_topic_exactly(
    depth_env: tuple[Env, Settings, Pipeline],
) -> None:
    _env, settings, pipeline = depth_env
    exchange = ReplayExchange()
    port = free_port()
    with exchange.running():
        ingest = pipeline.start_ingest(
            exchange.url,
            CSP_DEPTH_SYMBOLS="*",
            CSP_DEPTH_SNAPSHOT_LIMIT="5000",
            CSP_INGEST_TAIL_CHECK_S="0",
            CSP_INGEST_METRICS_PORT=str(port),
        )
        seen: list[tuple[TopicBook, list[str]]] = []

        def caught_up() -> bool:
            """Read the whole topic back as a consumer does."""
            book, outcomes = TopicBook(), []
            for value in read_all(settings, settings.depth_topic):
                outcomes.append(book.apply(decode_depth(value)))
            seen[:] = [(book, outcomes)]
            return book.book.last_update_id == exchange.last_id

        wait_for(caught_up, timeout=90, what="the last diff on the depth topic", interval=1.0)
        ((book, outcomes),) = seen
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert ingest.alive(), ingest.log_tail()
        dlq = [orjson.loads(v) for v in read_all(settings, settings.dlq_topic)]
        gaps = read_all(settings, settings.gap_topic)

    # the topic contract held throughout: three snapshots (start, after the gap, after the
    # reconnect), every diff continuing the chain, and the book is the exchange's own
    assert outcomes[0] == "snapshot" and outcomes.count("snapshot") == 3
    assert set(outcomes) == {"snapshot", "applied"}, Counter(outcomes)
    assert book.breaks == 0 and not book.book.crossed()
    assert _levels(book) == exchange.book and book.book.last_update_id == exchange.book_id

    breaks = [decode_depth_break(v) for v in gaps]
    assert Counter(b.cause for b in breaks) == {"depth_gap": 1, "depth_reconnect": 1}
    (gap,) = [b for b in breaks if b.cause == "depth_gap"]
    assert gap == DepthBreakRecord(
        "BTCUSDT",
        "depth_gap",
        exchange.diffs[DROP_AT][1]["U"],  # type: ignore[arg-type]
        exchange.diffs[DROP_AT + 1][1]["U"],
        "update-id gap",  # type: ignore[arg-type]
        gap.detected_at_us,
        gap.reported_at_us,
    )
    audit = summarize(gaps)  # the trade-gap audit sees no lost trade and nothing invalid
    assert audit.invalid == 0 and audit.unrecoverable_count == 0 and audit.detected == 0

    (dead,) = dlq
    assert dead["stage"] == "ingest" and "invalid depthUpdate" in dead["reason"]
    assert "price" in dead["reason"] and "@depth@100ms" in dead["source"]

    # REST: the 429 was waited out, every request asked for the configured limit
    assert len(exchange.rest_requests) == 4 and len(exchange.rest_answers) == 3
    assert all(q == {"symbol": ["BTCUSDT"], "limit": ["5000"]} for q in exchange.rest_requests)

    def metric(name: str) -> float:
        found = re.search(rf"^csp_ingest_{re.escape(name)} (\S+)$", metrics, flags=re.M)
        assert found, name
        return float(found.group(1))

    assert metric('depth_breaks_total{cause="depth_gap"}') == 1
    assert metric('depth_breaks_total{cause="depth_reconnect"}') == 1
    assert metric("depth_snapshots_total") == 3 and metric("depth_malformed_total") == 1
    assert metric("depth_diffs_published_total") == outcomes.count("applied")
    assert metric("depth_symbols_live") == 1


def test_with_depth_on_a_missing_depth_topic_stops_the_start(
    depth_env: tuple[Env, Settings, Pipeline],
) -> None:
    """Checked at start only when depth is on: the same settings without it start fine."""
    _env, settings, pipeline = depth_env
    missing = f"{settings.depth_topic}.missing"
    ingest = pipeline.start_ingest(
        "ws://127.0.0.1:9", CSP_DEPTH_SYMBOLS="BTCUSDT", CSP_DEPTH_TOPIC=missing
    )
    assert ingest.wait(30) == 2, ingest.log_tail()
    assert f"topic '{missing}' does not exist" in ingest.log_tail()
    assert "csp topics create" in ingest.log_tail()
    without = pipeline.start_ingest("ws://127.0.0.1:9", CSP_DEPTH_TOPIC=missing)
    assert without.wait(3) is None and without.alive(), without.log_tail()
