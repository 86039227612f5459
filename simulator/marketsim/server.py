"""The asyncio server shell: WebSocket streams, REST, the market clock, fan-out.

One port serves everything: WebSocket upgrades on ``/ws...`` and ``/stream...``, plain HTTP GETs
on ``/api/v3/...`` and ``/sim/stats`` (through websockets' ``process_request`` hook).

Hot path: payloads are encoded once per event and time unit, framed once (server frames are
unmasked, compression is disabled), appended to each subscriber's buffer, and each buffer is
written with one ``transport.write`` per batch. websockets still owns the handshake, incoming
frames, keepalive pings and the closing handshake.

Order books (:mod:`marketsim.book`): the served book of a symbol takes each order's journaled
book events when the order is sent (so REST depth never shows a book ahead of the trades sent),
or a replayed recording's depth frames; the depth streams tick every 100 ms of market time
(:meth:`Simulator._depth_tick`, driven by the items and, when paced, by the market clock): the
changes since the previous tick go out as one diff per update speed, the partial books as the
book's top then.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import os
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

from marketsim import book as bk
from marketsim import market as mk
from marketsim import payloads as pl
from marketsim.faults import FaultConfig, FaultInjector
from marketsim.generator import DEFAULT_START_TIME_US, SyntheticConfig, SyntheticSource
from marketsim.http1 import MAX_HEAD, HttpError, HttpRequest, RequestParser, response_bytes
from marketsim.model import DepthInfo, Item, Order, RawFrame
from marketsim.protocol import (
    PathError,
    PathRequest,
    RateLimiter,
    Session,
    handle_control,
    parse_path,
)
from marketsim.ratelimit import RestLimiter, request_weight
from marketsim.rest import RestApi
from marketsim.symbols import SymbolSpec, spec_for
from marketsim.truth import Truth

log = logging.getLogger("marketsim")

_HDR: list[bytes] = [
    bytes([0x81, n]) if n < 126 else b"\x81\x7e" + n.to_bytes(2, "big") for n in range(65536)
]


def frame(payload: bytes) -> bytes:
    """An unmasked, final WebSocket text frame."""
    n = len(payload)
    if n < 65536:
        return _HDR[n] + payload
    return b"\x81\x7f" + n.to_bytes(8, "big") + payload


class Source(Protocol):
    """Where market events come from (synthetic generator or replay)."""

    def next_item(self) -> Item | None: ...

    def initial_specs(self) -> list[SymbolSpec]: ...


class SyntheticItems:
    """The synthetic generator as a source, on one of three clocks.

    ``fixed``: the generator's own times from the fixed start time (reproducible bytes).
    ``now``: the generator's times shifted to the wall clock at the moment the market clock
    starts (the first order), so paced event times follow the wall clock (ahead of it by the
    factor ``--speed`` when that is above 1). ``wall``: every order stamped with the wall clock
    when it is generated (never decreasing): an as-fast-as-possible run can then not run ahead
    of real time (the pipeline refuses trades from the future).
    """

    def __init__(self, config: SyntheticConfig, clock: str = "fixed") -> None:
        self.gen = SyntheticSource(config)
        self._clock = clock
        self._offset: int | None = None
        self._last = 0

    def next_item(self) -> Item | None:
        o = self.gen.next_order()
        if o is None or self._clock == "fixed":
            return o
        if self._clock == "wall":
            t = time.time_ns() // 1000
            self._last = o.time_us = t if t > self._last else self._last
            return o
        if self._offset is None:
            self._offset = time.time_ns() // 1000 - self.gen.config.start_time_us
        o.time_us += self._offset
        return o

    def initial_specs(self) -> list[SymbolSpec]:
        return self.gen.specs

    def initial_books(self) -> list[bk.L2Book]:
        return self.gen.initial_books()


@dataclass(slots=True)
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT")
    rate: float = 100.0  # simulated trades/s (synthetic)
    fast: bool = False  # as fast as possible (no pacing)
    speed: float = 1.0  # simulated seconds per wall second when paced
    seed: int = 1
    max_trades: int | None = None
    # None (default): event times follow the wall clock; a fixed start makes runs reproducible
    # and then every clock of the simulator (REST serverTime, serverShutdown) follows the market's
    start_time_us: int | None = None
    zipf_s: float = 1.0
    burst_prob: float = 0.0
    burst_mult: float = 10.0
    wait_for_subscribers: int = 0
    ping_interval: float | None = 20.0
    pong_timeout: float | None = 60.0
    max_streams: int = 1024
    msg_rate_limit: int = 5
    lifetime: float | None = 24 * 3600.0
    # the serverShutdown notice goes out this long before the lifetime ends (at most half of it),
    # so a client can open its replacement first (the official SDK waits 5 s before it does)
    shutdown_notice: float = 10.0
    # Binance: 300 connection attempts per 5 minutes per IP (0 = unlimited).
    max_connection_attempts: int = 300
    connection_attempt_window: float = 300.0
    history_orders: int = 10_000
    # REST limits per IP (Binance's): request weight per minute (0 = every limit off, e.g. for
    # benchmarks), raw requests per 5 minutes
    rest_weight_limit: int = 6000
    rest_raw_limit: int = 61_000
    kline_update_ms: int = 2000
    # synthetic order book: levels a side the makers keep (0: no book, trades only, faster)
    book_levels: int = bk.DEFAULT_LEVELS
    batch_orders: int = 256
    write_high_water: int = 1 << 20
    slow_client_timeout: float = 60.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    faults: FaultConfig = field(default_factory=FaultConfig)
    source_factory: Callable[[SimConfig], Source] | None = None  # default: synthetic


HTTP_IDLE_S = 60.0  # an idle keep-alive connection (or an unfinished request head) is closed


class SimConnection(ServerConnection):
    """websockets' connection plus the simulator's per-connection state.

    The first bytes decide what the connection is: a WebSocket opening handshake goes on to
    websockets; any other request is plain HTTP, answered here with keep-alive (websockets'
    own handshake task then just waits for the connection to end).
    """

    client: Client | None = None
    path_request: PathRequest | None = None
    sim: Simulator | None = None
    _mode = 0  # 0: first request head not complete yet, 1: WebSocket, 2: plain HTTP
    _parser: RequestParser | None = None
    _idle: asyncio.TimerHandle | None = None
    _closing_http = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._parser = RequestParser()
        self._arm_idle()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = self.loop.call_later(HTTP_IDLE_S, self._close_idle)

    def _close_idle(self) -> None:
        if self._mode != 1:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        if self.sim is not None:
            self.sim.http_conns.discard(self)
        super().connection_lost(exc)

    def eof_received(self) -> None:
        if self._mode == 1:
            return super().eof_received()
        self.transport.close()
        return None

    def data_received(self, data: bytes) -> None:
        if self._mode == 1:
            super().data_received(data)
            return
        parser = self._parser
        assert parser is not None
        if self._closing_http:
            return
        parser.feed(data)
        try:
            while (head := parser.peek_head()) is not None:
                if head.is_upgrade:  # first request, or after plain ones on a kept-alive socket
                    self._mode = 1
                    if self._idle is not None:
                        self._idle.cancel()
                    if self.sim is not None:
                        self.sim.http_conns.discard(self)
                    raw = parser.raw_head + bytes(parser.buf)
                    self._parser = None
                    super().data_received(raw)
                    return
                if self._mode == 0:
                    self._mode = 2
                    if self.sim is not None:
                        self.sim.http_conns.add(self)
                req = parser.next_request()
                if req is None:
                    return  # the body is still on its way
                self._arm_idle()
                keep = req.keep_alive and self.sim is not None and self.sim.is_serving()
                peer = self.remote_address[0] if self.remote_address else "?"
                assert self.sim is not None
                status, body, headers = self.sim.http_request(req, peer)
                self.transport.write(
                    response_bytes(
                        status,
                        http.HTTPStatus(status).phrase,
                        body,
                        keep,
                        headers,
                        head_only=req.method == "HEAD",
                    )
                )
                if not keep:
                    self._closing_http = True
                    self.transport.close()
                    return
            if len(parser.buf) > MAX_HEAD and self._mode != 1:
                raise HttpError(431, "request header fields too large")
        except HttpError as exc:
            body = orjson.dumps({"code": -1000 if exc.status != 413 else -1101, "msg": exc.text})
            self.transport.write(
                response_bytes(exc.status, http.HTTPStatus(exc.status).phrase, body, False)
            )
            self._closing_http = True
            self.transport.close()

    def process_event(self, event: Any) -> None:
        super().process_event(event)
        c = self.client
        if (
            c is not None
            and isinstance(event, Frame)
            and event.opcode in (Opcode.PING, Opcode.PONG)
        ):
            c.on_incoming()


class Client:
    __slots__ = (
        "dead",
        "faults",
        "frames_sent",
        "index",
        "limiter",
        "micro",
        "out",
        "server",
        "session",
        "started",
        "timers",
        "transport",
        "variant",
        "ws",
    )

    def __init__(self, server: Simulator, ws: SimConnection, pr: PathRequest, index: int) -> None:
        cfg = server.config
        self.server = server
        self.ws = ws
        self.index = index
        self.session = Session(combined=pr.combined, max_streams=cfg.max_streams)
        self.micro = pr.micro
        self.variant = (2 if pr.micro else 0) + (1 if pr.combined else 0)
        self.out: list[bytes] = []
        self.transport = ws.transport
        self.limiter = RateLimiter(cfg.msg_rate_limit, 1.0)
        self.started = time.monotonic()
        self.frames_sent = 0
        self.timers: list[asyncio.TimerHandle] = []
        self.faults: FaultInjector | None = None
        self.dead = False
        if cfg.faults.applies_to(index):
            self.faults = FaultInjector(cfg.faults, cfg.faults.seed * 1_000_003 + index)

    @property
    def open(self) -> bool:
        return self.ws.protocol.state is State.OPEN

    def set_combined(self, combined: bool) -> None:
        self.session.combined = combined
        self.variant = (2 if self.micro else 0) + (1 if combined else 0)

    def on_incoming(self) -> None:
        if not self.limiter.hit(time.monotonic()):
            self.server.spawn(self.ws.close(1008, "Too many requests"))

    def push_payloads(
        self, stream: str, payloads: list[bytes], is_trade: bool, is_diff: bool = False
    ) -> None:
        """Slow path (fault injection): decide per payload, then frame."""
        assert self.faults is not None
        if self.dead:
            return
        now = time.monotonic() - self.started
        combined = self.session.combined
        for p in payloads:
            decision = self.faults.process(p, is_trade, now, is_diff)
            if decision is None:
                self.drop()
                return
            for q in decision:
                self.out.append(frame(pl.wrap_combined(stream, q) if combined else q))

    def flush(self) -> None:
        out = self.out
        if not out:
            return
        if self.open and not self.transport.is_closing():
            self.frames_sent += len(out)
            self.transport.write(b"".join(out))
        out.clear()

    def send_now(self, payload: bytes) -> None:
        """A reply or event outside the market batches (kept in order with pending frames)."""
        self.out.append(frame(payload))
        self.flush()

    def drop(self) -> None:
        """Fault: drop the connection without a WebSocket closing handshake (frames already
        decided are still delivered first), or close it with 1011 in ``close`` mode."""
        if self.dead:
            return
        self.dead = True
        if self.server.config.faults.drop_mode == "abort":
            self.flush()
            if self.transport.get_write_buffer_size() == 0:
                self.transport.abort()
            else:
                self.transport.close()  # sends what is buffered, then FIN: no close frame
        else:
            self.flush()
            self.server.spawn(self.ws.close(1011, "fault injection: drop"))

    def start_stall(self) -> None:
        if self.faults is not None:
            self.faults.start_stall(time.monotonic() - self.started)


class _Variants:
    """Lazily built payloads/frames of one event, per (micro, combined) variant."""

    __slots__ = ("frames", "payloads")

    def __init__(self) -> None:
        self.payloads: list[list[bytes] | None] = [None, None]
        self.frames: list[list[bytes] | None] = [None, None, None, None]


class Simulator:
    """The simulator server, in-process: ``async with Simulator(SimConfig(port=0)) as sim:``."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.truth = Truth(config.history_orders)
        self.specs: dict[str, SymbolSpec] = {}
        self.subs: dict[str, list[Client]] = {}
        self.clients: list[Client] = []
        self.connections_total = 0
        self.attempts_by_ip: dict[str, RateLimiter] = {}
        self.connections_refused = 0
        self.market = mk.MarketData(config.kline_update_ms)
        self.klines = self.market.klines
        # kline streams other than the always-on kline_1m, per symbol: stream name -> state
        self.stream_klines: dict[str, dict[str, mk.Kline]] = {}
        # subscribed streams emitted once per second (tickers, avgPrice), and whether a
        # market-wide array wants the symbols that changed since the last second
        self.periodic: set[str] = set()
        self._changed: set[str] | None = None
        self._recorded_streams: set[str] = set()
        self._periodic_task: asyncio.Task[None] | None = None
        self._names: dict[str, tuple[str, str, str, str]] = {}
        self._server: Server | None = None
        self._market: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._clock_started = asyncio.Event()
        self._done = asyncio.Event()
        # the market clock: live (wall clock) unless a fixed start time or a replay sets it
        self.live_clock = config.start_time_us is None and config.source_factory is None
        self._start_us: int | None = config.start_time_us
        self._pace: tuple[float, int] | None = None  # (loop time, market time) once paced
        self._due_us: int | None = None  # paced: the time of the next event not sent yet
        self._skipped_logged = 0
        self.source_error: str | None = None
        self._skipped_log_at = 0.0
        self.sim_time_us = 0
        self.port = 0
        self.http_conns: set[SimConnection] = set()
        self.rest_limiter = RestLimiter(config.rest_weight_limit, config.rest_raw_limit)
        self.started_at = time.time()
        self.source: Source = (config.source_factory or _synthetic_factory)(config)
        for spec in self.source.initial_specs():
            self.specs[spec.symbol] = spec
        # the served order books (buffers: 0 = the 100 ms diffs, 1 = the 1000 ms diffs)
        self.books: dict[str, bk.L2Book] = {}
        initial_books = getattr(self.source, "initial_books", None)
        for b in initial_books() if initial_books is not None else ():
            self.books[b.symbol] = b.copy(buffers=2)
            self._depth_buffers(b.symbol)
        self.replay_depth = bk.ReplayDepth(buffers=2)
        self._recorded_depth: set[str] = set()  # depth streams a replay serves verbatim
        self._depth_due: int | None = None  # market time of the next 100 ms depth tick
        self._depth_names: dict[str, _DepthNames] = {}
        fc = config.faults
        self._stale: dict[str, deque[tuple[int, list[bk.Level], list[bk.Level]]]] = {}
        self._stale_left = fc.stale_snapshots
        self.stale_served = 0
        if fc.stale_snapshots > 0:
            for sym, b in self.books.items():
                self._stale_keep(sym, b)
        self.rest = RestApi(
            self.truth,
            lambda: list(self.specs.values()),
            self._now_us,
            self._extra_stats,
            self.market,
            (config.rest_weight_limit or 6000, config.rest_raw_limit),
            depth=self._depth_snapshot,
            book=self.books.get,
        )

    # ----- lifecycle -----

    @property
    def scheme(self) -> str:
        return "wss" if self.config.tls_cert else "ws"

    @property
    def ws_url(self) -> str:
        return f"{self.scheme}://{self.config.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        return f"{'https' if self.config.tls_cert else 'http'}://{self.config.host}:{self.port}"

    async def start(self) -> None:
        cfg = self.config
        if cfg.faults.slow_start_seconds > 0:
            await asyncio.sleep(cfg.faults.slow_start_seconds)
        ssl_ctx: ssl.SSLContext | None = None
        if cfg.tls_cert:
            ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ssl_ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)

        # websockets wants a class: one bound to this simulator
        connection: type[SimConnection] = type(
            "BoundSimConnection", (SimConnection,), {"sim": self}
        )

        self._server = await serve(
            self._handler,
            cfg.host,
            cfg.port,
            process_request=self._process_request,
            # the head of the first request is read by SimConnection (idle timeout there); a
            # plain-HTTP connection never completes websockets' handshake, which then waits
            open_timeout=None,
            ssl_handshake_timeout=10.0 if ssl_ctx is not None else None,
            compression=None,
            ping_interval=cfg.ping_interval,
            ping_timeout=cfg.pong_timeout,
            max_size=1 << 16,
            max_queue=64,
            write_limit=cfg.write_high_water,
            create_connection=connection,
            server_header="marketsim",
            ssl=ssl_ctx,
        )
        sock = next(iter(self._server.sockets))
        self.port = sock.getsockname()[1]
        if cfg.wait_for_subscribers <= 0:
            self._clock_started.set()
        self._market = asyncio.create_task(self._guarded_market(), name="marketsim-market")
        self._periodic_task = asyncio.create_task(self._run_periodic(), name="marketsim-periodic")

    async def stop(self) -> None:
        for task in (self._market, self._periodic_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._market = self._periodic_task = None
        if self._server is not None:
            for c in list(self.clients):
                c.flush()
            self._server.close(close_connections=True)
            for conn in list(self.http_conns):
                conn.transport.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
        for t in list(self._tasks):
            t.cancel()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def market_task(self) -> asyncio.Task[None] | None:
        """The task feeding trades to the clients (None before start and after stop); when its
        source fails it ends with ``source_error`` set."""
        return self._market

    async def wait_done(self, within: float | None = None) -> None:
        """Wait until the source is exhausted (max trades reached, or replay ended)."""
        async with asyncio.timeout(within):
            await self._done.wait()

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def stats(self) -> dict[str, Any]:
        return self.rest.handle("/sim/stats", {})[1]  # type: ignore[no-any-return]

    def _extra_stats(self) -> dict[str, Any]:
        return {
            "connections": len(self.clients),
            "connections_total": self.connections_total,
            "connections_refused": self.connections_refused,
            "clock_started": self._clock_started.is_set(),
            "source_error": self.source_error,
            "rest_refused": self.rest_limiter.refused,
            "rest_banned": self.rest_limiter.banned,
            "sim_time_ms": self.sim_time_us // 1000,
            "frames_sent": sum(c.frames_sent for c in self.clients),
            "faults": {str(c.index): c.faults.counts for c in self.clients if c.faults is not None},
            "books": {
                sym: {"last_update_id": b.update_id, "bids": len(b.bids), "asks": len(b.asks)}
                for sym, b in self.books.items()
            },
            "stale_snapshots_served": self.stale_served,
            "replay_book_breaks": self.replay_depth.breaks,
            **({"replay": rs.as_json()} if (rs := self._replay_stats()) is not None else {}),
        }

    def _replay_stats(self) -> Any:
        """The replay source's line counts (None for the synthetic market)."""
        return getattr(self.source, "stats", None)

    def _report_skipped(self, final: bool = False) -> None:
        """Log the replay lines skipped since the last report (count, reasons, first line)."""
        rs = self._replay_stats()
        if rs is None or (rs.skipped == self._skipped_logged and not final):
            return
        if rs.skipped != self._skipped_logged:
            log.warning(
                "replay: %d unreadable or non-market lines skipped so far (%s); first of each: %s",
                rs.skipped,
                ", ".join(f"{k}: {v}" for k, v in rs.skipped_reasons.items()),
                ", ".join(f"{k} at {v}" for k, v in rs.first_skipped.items()),
            )
            self._skipped_logged = rs.skipped
        if final:
            log.info(
                "replay: %d lines read, %d frames/orders, %d skipped",
                rs.lines,
                rs.items,
                rs.skipped,
            )

    def _now_us(self) -> int:
        """The simulator's one clock (REST ``serverTime``, ``serverShutdown``, ticker windows)."""
        if self.live_clock:
            return time.time_ns() // 1000
        pace = self._pace
        if pace is not None:
            speed = self.config.speed if self.config.speed > 0 else 1.0
            t = pace[1] + int((asyncio.get_running_loop().time() - pace[0]) * speed * 1e6)
            # never past an event that is due but not sent yet (the market loop runs late by
            # up to an iteration): a clock read between the two stays between them in the stream
            due = self._due_us
            return min(t, due) if due is not None else t
        if self.sim_time_us:
            return self.sim_time_us
        return self._start_us if self._start_us is not None else time.time_ns() // 1000

    # ----- HTTP -----

    def is_serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    def http_request(self, req: HttpRequest, peer: str) -> tuple[int, bytes, list[tuple[str, str]]]:
        """Answer one plain HTTP request: (status, JSON body, extra headers)."""
        parts = urlsplit(req.target)
        path = parts.path
        is_rest = path.startswith(("/api/", "/sim/")) or path == "/"
        if not is_rest:
            if path.startswith(("/ws", "/stream")):
                body = {"code": -1000, "msg": "WebSocket upgrade required"}
                return 426, orjson.dumps(body), [("Upgrade", "websocket")]
            return 404, orjson.dumps({"code": -1000, "msg": f"Unknown path {path}"}), []
        if req.method not in ("GET", "HEAD"):
            if req.method == "OPTIONS":
                return 204, b"", [("Allow", "GET, HEAD, OPTIONS")]
            body = {"code": -1000, "msg": f"Method {req.method} not allowed for {path}"}
            return 405, orjson.dumps(body), [("Allow", "GET, HEAD, OPTIONS")]
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        micro = req.header("x-mbx-time-unit").upper() == "MICROSECOND"
        if path.startswith("/sim/"):  # the simulator's own: never limited (harnesses poll it)
            status, body = self.rest.handle(path, query, micro)
            return status, orjson.dumps(body), []
        verdict = self.rest_limiter.check(peer, request_weight(path, query), time.time())
        headers = [
            ("X-MBX-USED-WEIGHT", str(verdict.used_weight)),
            ("X-MBX-USED-WEIGHT-1M", str(verdict.used_weight)),
        ]
        if verdict.status != 200:
            headers.append(("Retry-After", str(verdict.retry_after)))
            return verdict.status, orjson.dumps(verdict.body), headers
        status, body = self.rest.handle(path, query, micro)
        return status, orjson.dumps(body), headers

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        path = parts.path
        if path.startswith(("/api/", "/sim/")) or path == "/":
            query = dict(parse_qsl(parts.query, keep_blank_values=True))
            micro = request.headers.get("X-MBX-TIME-UNIT", "").upper() == "MICROSECOND"
            status, body = self.rest.handle(path, query, micro)
            return _json_response(status, body)
        try:
            pr = parse_path(request.path, self.config.max_streams)
        except PathError as exc:
            return _json_response(exc.status, {"code": -1100, "msg": exc.text})
        if pr is None:
            return _json_response(404, {"code": -1000, "msg": f"Unknown path {path}"})
        if not self._connection_attempt_allowed(conn):
            self.connections_refused += 1
            return _json_response(
                429, {"code": -1003, "msg": "Too many connection attempts from this IP."}
            )
        if isinstance(conn, SimConnection):
            conn.path_request = pr
        return None

    def _connection_attempt_allowed(self, conn: ServerConnection) -> bool:
        cfg = self.config
        if cfg.max_connection_attempts <= 0:
            return True
        peer = conn.remote_address[0] if conn.remote_address else "?"
        limiter = self.attempts_by_ip.get(peer)
        if limiter is None:
            limiter = RateLimiter(cfg.max_connection_attempts, cfg.connection_attempt_window)
            self.attempts_by_ip[peer] = limiter
        return limiter.hit(time.monotonic())

    # ----- WebSocket -----

    async def _handler(self, ws: ServerConnection) -> None:
        assert isinstance(ws, SimConnection) and ws.path_request is not None
        pr = ws.path_request
        client = Client(self, ws, pr, self.connections_total)
        self.connections_total += 1
        ws.client = client
        self.clients.append(client)
        cfg = self.config
        loop = asyncio.get_running_loop()
        try:
            if pr.streams:
                self._subscribe(client, pr.streams)
                for s in pr.streams:
                    client.session.subscriptions[s] = None
                self._check_clock()
            if cfg.lifetime is not None:
                notice = max(0.0, min(cfg.shutdown_notice, cfg.lifetime / 2))
                client.timers.append(
                    loop.call_later(cfg.lifetime - notice, lambda: self._notify_shutdown(client))
                )
                client.timers.append(
                    loop.call_later(cfg.lifetime, lambda: self.spawn(self._expire(client)))
                )
            fc = cfg.faults
            if client.faults is not None:
                if fc.drop_after_seconds is not None:
                    client.timers.append(loop.call_later(fc.drop_after_seconds, client.drop))
                if fc.stall_after_seconds is not None:
                    client.timers.append(
                        loop.call_later(fc.stall_after_seconds, client.start_stall)
                    )
            async for message in ws:
                if not client.limiter.hit(time.monotonic()):
                    await ws.close(1008, "Too many requests")
                    break
                res = handle_control(client.session, message)
                client.send_now(res.response)
                if res.added:
                    self._subscribe(client, res.added)
                    self._check_clock()
                if res.removed:
                    self._unsubscribe(client, res.removed)
                client.set_combined(client.session.combined)
        except ConnectionClosed:
            pass
        finally:
            for t in client.timers:
                t.cancel()
            self._unsubscribe(client, list(client.session.subscriptions))
            self.clients.remove(client)
            ws.client = None

    def _notify_shutdown(self, client: Client) -> None:
        if not client.open:
            return
        client.send_now(
            pl.server_shutdown_frame(self._now_us(), client.micro, client.session.combined)
        )

    async def _expire(self, client: Client) -> None:
        if not client.open:
            return
        await client.ws.close(1001, "connection lifetime reached")

    def _subscribe(self, client: Client, streams: Iterable[str]) -> None:
        for s in streams:
            lst = self.subs.get(s)
            if lst is None:
                lst = self.subs[s] = []
                self._stream_added(s)
            if client not in lst:
                lst.append(client)

    def _unsubscribe(self, client: Client, streams: Iterable[str]) -> None:
        for s in streams:
            lst = self.subs.get(s)
            if lst and client in lst:
                lst.remove(client)
                if not lst:
                    del self.subs[s]
                    self._stream_removed(s)

    def _stream_added(self, stream: str) -> None:
        """First subscriber of a stream: set up the state that produces it."""
        sym, _, kind = stream.partition("@")
        if kind.startswith("kline_") and kind != "kline_1m":
            interval, _, tz = kind[6:].partition("@")
            symbol = sym.upper()
            st = self.truth.symbols.get(symbol)
            kl = self.market.seed_stream_kline(
                symbol,
                interval,
                mk.parse_tz(tz) or 0,
                self.truth.history.get(symbol, ()),
                st.last_time_us if st is not None else 0,
            )
            self.stream_klines.setdefault(symbol, {})[stream] = kl
        elif kind in _PERIODIC_KINDS or stream.startswith("!"):
            self.periodic.add(stream)
            if stream.startswith("!") and self._changed is None:
                self._changed = set()
        elif kind in _DIFF_KINDS:
            self._depth_buffers(sym.upper())

    def _stream_removed(self, stream: str) -> None:
        sym, _, kind = stream.partition("@")
        if kind.startswith("kline_") and kind != "kline_1m":
            per = self.stream_klines.get(sym.upper())
            if per is not None:
                per.pop(stream, None)
                if not per:
                    del self.stream_klines[sym.upper()]
        if kind in _DIFF_KINDS:
            self._depth_buffers(sym.upper())
        self.periodic.discard(stream)
        if not any(s.startswith("!") for s in self.periodic):
            self._changed = None

    # ----- once-per-second streams -----

    async def _run_periodic(self) -> None:
        """Tickers, rolling-window tickers and average prices: one event per second (wall
        clock, as Binance's 1000 ms update speed) for each subscribed stream whose symbol has
        traded; the market-wide arrays hold only the symbols that traded since the last one."""
        while True:
            await asyncio.sleep(1.0)
            if self.periodic:
                self.emit_periodic()
                self._flush_all()

    def emit_periodic(self) -> None:
        now = self._now_us()
        changed = self._changed
        if changed is not None:
            self._changed = set()
        cache: dict[tuple[str, str], dict[str, Any]] = {}
        for stream in list(self.periodic):
            lst = self.subs.get(stream)
            if not lst or stream in self._recorded_streams:
                continue
            sym, _, kind = stream.partition("@")
            if sym.startswith("!"):
                if not changed:
                    continue
                kind = sym[1:]  # miniTicker / ticker_1h ...
                bodies = [self._periodic_body(s, kind, now, cache) for s in sorted(changed)]
                items = [b for b in bodies if b is not None]
                if not items:
                    continue
                self._fan_out_json(lst, stream, items)
                continue
            body = self._periodic_body(sym.upper(), kind, now, cache)
            if body is not None:
                self._fan_out_json(lst, stream, body)

    def _periodic_body(
        self, symbol: str, kind: str, now: int, cache: dict[tuple[str, str], dict[str, Any]]
    ) -> dict[str, Any] | None:
        key = (symbol, kind)
        if key in cache:
            return cache[key]
        st = self.truth.symbols.get(symbol)
        if st is None:
            return None
        if kind == "avgPrice":
            price = self.market.avg_price(symbol, now)
            body = mk.avg_price_payload(symbol, price, st.last_time_us, now, False)
        else:
            size = mk.TICKER_WINDOWS.get(kind.removeprefix("ticker_"), mk.DAY)
            w = self.market.window(symbol, size, now)
            hist = self.truth.history.get(symbol)
            body = mk.ticker_payload(kind, symbol, w, hist[-1] if hist else None, now, False)
        cache[key] = body
        return body

    def _fan_out_json(self, clients: list[Client], stream: str, body: Any) -> None:
        """Fan out one JSON event (ms times; µs connections get the times scaled)."""
        ms = orjson.dumps(body)
        us: bytes | None = None
        for c in clients:
            if c.micro:
                if us is None:
                    us = orjson.dumps(_to_micro(body))
                p = us
            else:
                p = ms
            c.out.append(frame(pl.wrap_combined(stream, p) if c.session.combined else p))

    def _check_clock(self) -> None:
        if self._clock_started.is_set():
            return
        n = sum(1 for c in self.clients if c.session.subscriptions)
        if n >= self.config.wait_for_subscribers:
            self._clock_started.set()

    # ----- order books -----

    def _depth_tick(self, now_us: int | None) -> None:
        """The depth streams' tick on the market clock: at each 100 ms boundary up to ``now_us``
        the 100 ms diffs and partial books, at each 1000 ms boundary the 1000 ms ones (``None``:
        a last flush of every pending diff, the market having ended). The boundaries an idle
        stretch skipped are one tick (event time: the last boundary)."""
        due = self._depth_due
        if now_us is None:
            if due is None:
                return
            boundary, one_s = due, True
        else:
            boundary = now_us - now_us % 100_000
            if due is None:  # the first event: ticks start at the next boundary
                self._depth_due = boundary + 100_000
                return
            if boundary < due:
                return
            one_s = boundary // 1_000_000 > (due - 100_000) // 1_000_000
        self._depth_due = boundary + 100_000
        subs = self.subs
        keep_stale = self.config.faults.stale_snapshots > 0 and self._stale_left > 0
        for sym, book in self.books.items():
            names = self._depth_names.get(sym)
            if names is None:
                names = self._depth_names[sym] = _DepthNames(sym.lower())
            self._send_diff(book, book.diff_buffers[0], (names.diff_100,), boundary)
            if one_s:
                self._send_diff(book, book.diff_buffers[1], names.diff_1000, boundary)
                if keep_stale:
                    self._stale_keep(sym, book)
            for levels, n100, n1000 in names.partial:
                lst100 = subs.get(n100)
                lst1000 = (subs.get(n1000[0]), subs.get(n1000[1])) if one_s else (None, None)
                if not (lst100 or lst1000[0] or lst1000[1]):
                    continue
                body = [bk.partial_depth_payload(book.update_id, *book.snapshot(levels)[1:])]
                if lst100:
                    self._fan_out(lst100, n100, body, _same(body), False)
                for name, lst in zip(n1000, lst1000, strict=True):
                    if lst:
                        self._fan_out(lst, name, body, _same(body), False)

    def _send_diff(
        self, book: bk.L2Book, buf: bk.DiffBuffer, names: tuple[str, ...], boundary: int
    ) -> None:
        diff = buf.take(book.update_id)
        if diff is None:
            return
        first, final, bids, asks = diff
        rendered: list[bytes | None] = [None, None]

        def build(micro: bool) -> list[bytes]:
            p = rendered[micro]
            if p is None:
                t = boundary if micro else boundary // 1000
                p = rendered[micro] = bk.depth_update_payload(
                    book.symbol, t, first, final, bids, asks
                )
            return [p]

        for name in names:
            lst = self.subs.get(name)
            if lst and name not in self._recorded_depth:
                self._fan_out(lst, name, None, build, False, True)

    def _replay_depth(self, f: RawFrame, d: DepthInfo) -> None:
        """A recorded depth diff or snapshot line: the replayed book follows it."""
        rd = self.replay_depth
        if d.snapshot:
            sym = rd.on_snapshot(d.first_id, d.bids, d.asks)
        else:
            self._names_for(d.symbol)  # the symbol is known to REST from now on
            self._recorded_depth.add(f.stream)
            rd.on_diff(d.symbol, d.first_id, d.final_id, d.bids, d.asks)
            sym = d.symbol
        if sym is None:
            return
        cur = rd.books.get(sym)
        if cur is not self.books.get(sym):  # synced, or dropped (a looped replay restarts)
            if cur is None:
                del self.books[sym]
                return
            self.books[sym] = cur
            self._depth_buffers(sym)
            if self.config.faults.stale_snapshots > 0:
                self._stale_keep(sym, cur)

    def _depth_buffers(self, symbol: str) -> None:
        """Collect diffs for a book's diff streams only while someone subscribes to them."""
        book = self.books.get(symbol)
        if book is None:
            return
        low = symbol.lower()
        subs = self.subs
        book.set_active(0, f"{low}@depth@100ms" in subs)
        book.set_active(1, f"{low}@depth" in subs or f"{low}@depth@1000ms" in subs)

    def _stale_keep(self, symbol: str, book: bk.L2Book) -> None:
        """Keep the book as it is now for the stale-snapshot fault (one per second)."""
        kept = self._stale.get(symbol)
        if kept is None:
            age = max(1, round(self.config.faults.stale_snapshot_age))
            kept = self._stale[symbol] = deque(maxlen=age + 1)
        kept.append(book.snapshot(bk.MAX_DEPTH_LIMIT))

    def _depth_snapshot(
        self, symbol: str, limit: int
    ) -> tuple[int, list[bk.Level], list[bk.Level]] | None:
        """REST depth: the served book to ``limit`` levels a side (a stale one while the fault
        says so); None when the symbol has no book (yet)."""
        book = self.books.get(symbol)
        if book is None:
            return None
        if self._stale_left > 0:
            kept = self._stale.get(symbol)
            if kept:
                self._stale_left -= 1
                self.stale_served += 1
                last, bids, asks = kept[0]
                return last, bids[:limit], asks[:limit]
        return book.snapshot(limit)

    # ----- market -----

    async def _guarded_market(self) -> None:
        """The market task; a source that fails is logged and reported in ``/sim/stats``
        (``source_error``), and the server keeps serving REST and the connections it has."""
        try:
            await self._run_market()
        except Exception as exc:
            self.source_error = f"{type(exc).__name__}: {exc}"
            log.exception("market source failed; no more market events")
            self.truth.done = True
            self._done.set()

    async def _run_market(self) -> None:
        cfg = self.config
        src = self.source
        item: Item | None = None
        if not self.live_clock:  # a fixed clock: known before the first subscriber
            item = src.next_item()
            if item is not None and self._start_us is None:
                self._start_us = item.time_us
        await self._clock_started.wait()
        loop = asyncio.get_running_loop()
        wall0 = loop.time()
        sim0: int | None = None
        speed = cfg.speed if cfg.speed > 0 else 1.0
        if self.live_clock:
            item = src.next_item()
        batch = max(1, cfg.batch_orders)
        while item is not None:
            if cfg.fast:
                n = 0
                while item is not None and n < batch:
                    self._emit(item)
                    n += 1
                    item = src.next_item()
            else:
                if sim0 is None:
                    sim0 = item.time_us
                    self._pace = (wall0, sim0)
                now_sim = sim0 + (loop.time() - wall0) * speed * 1e6
                n = 0
                while item is not None and item.time_us <= now_sim and n < batch * 8:
                    self._emit(item)
                    n += 1
                    item = src.next_item()
                self._due_us = item.time_us if item is not None else None
                tick = int(now_sim) if item is None else min(int(now_sim), item.time_us)
                if self._depth_due is not None and tick >= self._depth_due:
                    self._depth_tick(tick)  # depth ticks also while no order is due
            self._flush_all()
            if loop.time() - self._skipped_log_at >= 5.0:  # bad lines: at most a line per 5 s
                self._skipped_log_at = loop.time()
                self._report_skipped()
            await self._backpressure()
            if not cfg.fast and item is not None and sim0 is not None:
                due = wall0 + (item.time_us - sim0) / speed / 1e6
                delay = due - loop.time()
                await asyncio.sleep(min(max(delay, 0.0), 0.1 / speed))
            else:
                await asyncio.sleep(0)
        self.truth.done = True
        self._report_skipped(final=True)
        self._depth_tick(None)  # the last changes go out in one last diff per speed
        self._done.set()
        self._flush_all()
        log.info("source exhausted after %d trades", self.truth.trades_generated)

    def _flush_all(self) -> None:
        for c in self.clients:
            if c.out:
                c.flush()

    async def _backpressure(self) -> None:
        hw = self.config.write_high_water
        for c in list(self.clients):
            tr = c.transport
            if c.open and tr.get_write_buffer_size() >= hw:
                try:
                    await asyncio.wait_for(c.ws.drain(), self.config.slow_client_timeout)
                except TimeoutError:
                    log.warning("closing slow client %d", c.index)
                    tr.abort()
                except Exception:  # the connection died while draining
                    pass

    def _names_for(self, symbol: str) -> tuple[str, str, str, str]:
        names = self._names.get(symbol)
        if names is None:
            low = symbol.lower()
            names = (f"{low}@trade", f"{low}@aggTrade", f"{low}@bookTicker", f"{low}@kline_1m")
            self._names[symbol] = names
            if symbol not in self.specs:
                with contextlib.suppress(ValueError):
                    self.specs[symbol] = spec_for(symbol)
        return names

    def _emit(self, item: Item) -> None:
        due = self._depth_due
        if due is None or item.time_us >= due:
            self._depth_tick(item.time_us)
        if isinstance(item, Order):
            self._emit_order(item)
        else:
            self._emit_raw(item)

    def _emit_raw(self, f: RawFrame) -> None:
        self.sim_time_us = f.time_us
        d = f.depth
        if d is not None:
            self._replay_depth(f, d)
        if f.trade is not None:
            ti = f.trade
            self._names_for(ti.symbol)
            self.truth.add(
                Order(
                    ti.symbol,
                    ti.trade_id,
                    ti.trade_id,
                    ti.price,
                    [ti.qty],
                    ti.time_us,
                    ti.buyer_maker,
                    ti.price,
                    0,
                    ti.price,
                    0,
                    0,
                )
            )
            kl = self.klines.get(ti.symbol)
            if kl is None:
                kl = self.market.kline(ti.symbol)
            kl.apply(self.truth.history[ti.symbol][-1], False, False)  # state for REST only
        lst = self.subs.get(f.stream)
        if not lst:
            return
        if f.stream not in self._recorded_streams:
            self._recorded_streams.add(f.stream)
        is_diff = d is not None and not d.snapshot
        self._fan_out(
            lst, f.stream, [f.payload], lambda micro: [f.payload], f.trade is not None, is_diff
        )

    def _emit_order(self, o: Order) -> None:
        self.sim_time_us = o.time_us
        self.truth.add(o)
        if o.book is not None:
            served = self.books.get(o.symbol)
            if served is not None:
                served.apply_changes(o.book)
            o.book = None  # the history keeps the order, not its journal
        n_trade, n_agg, n_book, n_kline = self._names_for(o.symbol)
        subs = self.subs
        lst = subs.get(n_trade)
        if lst:
            self._fan_out(lst, n_trade, None, lambda micro: pl.trade_payloads(o, micro), True)
        lst = subs.get(n_agg)
        if lst:
            self._fan_out(lst, n_agg, None, lambda micro: [pl.agg_trade_payload(o, micro)], False)
        lst = subs.get(n_book)
        if lst:
            book = [pl.book_ticker_payload(o)]
            self._fan_out(lst, n_book, book, lambda micro: book, False)
        if self._changed is not None:
            self._changed.add(o.symbol)
        kl = self.klines.get(o.symbol)
        if kl is None:
            kl = self.market.kline(o.symbol)
        per = self.stream_klines.get(o.symbol)
        if per is not None:
            for name, skl in per.items():
                sl = subs.get(name)
                if sl:
                    w_us = any(c.micro for c in sl)
                    w_ms = not all(c.micro for c in sl)
                    for ms, us in skl.apply(o, w_ms, w_us):
                        self._fan_out(sl, name, None, _pick(ms, us), False)
        lst = subs.get(n_kline)
        want_ms = want_us = False
        if lst:
            for c in lst:
                if c.micro:
                    want_us = True
                else:
                    want_ms = True
        for ms, us in kl.apply(o, want_ms, want_us):
            assert lst is not None
            self._fan_out(lst, n_kline, None, _pick(ms, us), False)

    def _fan_out(
        self,
        clients: list[Client],
        stream: str,
        fixed: list[bytes] | None,
        build: Callable[[bool], list[bytes]],
        is_trade: bool,
        is_diff: bool = False,
    ) -> None:
        payloads: list[list[bytes] | None] = [fixed, fixed]
        frames: list[list[bytes] | None] = [None, None, None, None]
        for c in clients:
            v = c.variant
            if c.faults is not None:
                micro = c.micro
                p = payloads[micro]
                if p is None:
                    p = payloads[micro] = build(micro)
                c.push_payloads(stream, p, is_trade, is_diff)
                continue
            fr = frames[v]
            if fr is None:
                micro = v >= 2
                p = payloads[micro]
                if p is None:
                    p = payloads[micro] = build(micro)
                if v & 1:
                    prefix = b'{"stream":"' + stream.encode() + b'","data":'
                    fr = [frame(prefix + x + b"}") for x in p]
                else:
                    fr = [frame(x) for x in p]
                frames[v] = fr
            c.out.extend(fr)


class _DepthNames:
    """The depth stream names of one symbol."""

    __slots__ = ("diff_100", "diff_1000", "partial")

    def __init__(self, low: str) -> None:
        self.diff_100 = f"{low}@depth@100ms"
        self.diff_1000 = (f"{low}@depth", f"{low}@depth@1000ms")
        self.partial = tuple(
            (n, f"{low}@depth{n}@100ms", (f"{low}@depth{n}", f"{low}@depth{n}@1000ms"))
            for n in (5, 10, 20)
        )


_DIFF_KINDS = frozenset(("depth", "depth@100ms", "depth@1000ms"))
_PERIODIC_KINDS = frozenset(
    ("ticker", "miniTicker", "avgPrice", "ticker_1h", "ticker_4h", "ticker_1d")
)
_TIME_KEYS = frozenset(("E", "O", "C", "T"))


def _to_micro(body: Any) -> Any:
    """A ms-time event body with its time fields in µs (``timeUnit=MICROSECOND``)."""
    if isinstance(body, list):
        return [_to_micro(b) for b in body]
    return {k: v * 1000 if k in _TIME_KEYS and isinstance(v, int) else v for k, v in body.items()}


def _same(payloads: list[bytes]) -> Callable[[bool], list[bytes]]:
    return lambda micro: payloads


def _pick(ms: bytes, us: bytes) -> Callable[[bool], list[bytes]]:
    return lambda micro: [us if micro else ms]


def _synthetic_factory(cfg: SimConfig) -> Source:
    start = cfg.start_time_us if cfg.start_time_us is not None else DEFAULT_START_TIME_US
    clock = "fixed" if cfg.start_time_us is not None else ("wall" if cfg.fast else "now")
    return SyntheticItems(
        SyntheticConfig(
            symbols=cfg.symbols,
            seed=cfg.seed,
            rate=cfg.rate if cfg.rate > 0 else 1000.0,
            start_time_us=start,
            zipf_s=cfg.zipf_s,
            burst_prob=cfg.burst_prob,
            burst_mult=cfg.burst_mult,
            max_trades=cfg.max_trades,
            book_levels=cfg.book_levels,
        ),
        clock=clock,
    )


def _json_response(status: int, body: Any) -> Response:
    data = orjson.dumps(body)
    headers = Headers(
        [
            ("Content-Type", "application/json;charset=UTF-8"),
            ("Content-Length", str(len(data))),
            ("Connection", "close"),
        ]
    )
    return Response(status, http.HTTPStatus(status).phrase, headers, data)


def write_ready_file(path: Path, sim: Simulator) -> None:
    """Atomically write the ready file: ``{"ws_url", "rest_url", "pid", "port"}``."""
    data = json.dumps(
        {"ws_url": sim.ws_url, "rest_url": sim.rest_url, "pid": os.getpid(), "port": sim.port}
    )
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(data)
    os.replace(tmp, path)
