"""Hostile connections against a real ``csp query`` process (its own pid, so its memory can be
read): oversized request heads, silent connections, slowloris, and that everyone else, long-lived
streams included, is still served. Small limits are configured through the environment."""

from __future__ import annotations

import base64
import os
import re
import select
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import psutil
import pytest
import redis

from cryptostream.stack.redis_server import RedisServer
from cryptostream.stack.supervisor import ManagedProcess, free_port
from tests.query.conftest import publish, put_price, trade_update

MAX_HEAD = 8192
HEAD_TIMEOUT_S = 2.0
IDLE_TIMEOUT_S = 1.0
SLACK_S = 2.0  # scheduling delay allowed on a loaded machine, well below the 5 s keep-alive


@dataclass
class QueryProcess:
    process: ManagedProcess
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def connect(self) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=10)


def _start(redis_server: RedisServer, run_dir: Path, workers: int) -> QueryProcess:
    port = free_port()
    env = {
        **os.environ,
        "CSP_REDIS_URL": redis_server.url,
        "CSP_QUERY_HOST": "127.0.0.1",
        "CSP_QUERY_PORT": str(port),
        "CSP_RUN_DIR": str(run_dir),
        "CSP_QUERY_MAX_HEADER_BYTES": str(MAX_HEAD),
        "CSP_QUERY_HEADER_TIMEOUT_S": str(HEAD_TIMEOUT_S),
        "CSP_QUERY_IDLE_TIMEOUT_S": str(IDLE_TIMEOUT_S),
    }
    argv = [sys.executable, "-m", "cryptostream", "query", "--workers", str(workers)]
    process = ManagedProcess("query", argv, log_path=run_dir / "query.log", env=env).start()
    server = QueryProcess(process, "127.0.0.1", port)

    def ready() -> bool:
        try:
            return httpx.get(f"{server.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        process.wait_until(ready, timeout=30, what="GET /health")
    except BaseException:
        process.stop()
        raise
    return server


@pytest.fixture(scope="module")
def server(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[QueryProcess]:
    running = _start(redis_server, tmp_path_factory.mktemp("query-limits"), workers=1)
    try:
        yield running
    finally:
        running.process.stop()


# --- raw-socket helpers ------------------------------------------------------------------------


def _wait_closed(sock: socket.socket, deadline: float) -> tuple[float | None, bytes]:
    """Read until the server closes (EOF or reset) or the deadline passes.

    Returns the monotonic time of the close (None if still open at the deadline) and the bytes
    received before it."""
    received = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None, received
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return None, received
        except ConnectionResetError:
            return time.monotonic(), received
        if not chunk:
            return time.monotonic(), received
        received += chunk


def _readable(socks: set[socket.socket], timeout: float) -> list[socket.socket]:
    """poll, not select: no limit on descriptor numbers with hundreds of sockets open."""
    poller = select.poll()
    by_fd = {sock.fileno(): sock for sock in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(timeout * 1000)]


def _get(path: str, extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n"


def _read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[bytes, bytes]:
    """One response with a content-length body: (status line, body)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    headers = dict(line.split(b": ", 1) for line in lines[1:])
    length = int(headers[b"content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed in the middle of a body"
        body += chunk
    return lines[0], body


def _refused(server: QueryProcess, reason: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=5).text
    pattern = rf'^csp_query_connections_refused_total\{{reason="{reason}"\}} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _rss(server: QueryProcess) -> int:
    assert server.process.pid is not None
    return int(psutil.Process(server.process.pid).memory_info().rss)


# --- size -----------------------------------------------------------------------------------


def test_an_oversized_header_is_refused_early_and_not_buffered(server: QueryProcess) -> None:
    """32 MB of one header value: a 431 with a JSON error and a close, after a small part was
    sent, and the server's memory does not grow by anything like the header."""
    total = 32 * 2**20
    chunk = b"a" * 65536
    rss_before = peak = _rss(server)
    sent = 0
    reply = b""
    with server.connect() as sock:
        sock.sendall(b"GET /price/BTCUSDT HTTP/1.1\r\nHost: x\r\nX-Big: ")
        while sent < total:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            if sent % (16 * len(chunk)) == 0:
                peak = max(peak, _rss(server))
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                reply += data
                break  # answered: a client stops sending
        closed_at, rest = _wait_closed(sock, time.monotonic() + 10)
        reply += rest
    peak = max(peak, _rss(server))
    assert closed_at is not None or sent < total, "the server read the whole header"
    assert sent < total // 8, f"{sent} of {total} bytes went out before the server closed"
    assert peak - rss_before < total // 4, f"server RSS grew by {peak - rss_before} bytes"
    if reply:  # the 431 usually arrives; a reset may beat it to a client still sending
        status, _, body = reply.partition(b"\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 431"), reply[:200]
        assert orjson.loads(body) == {"error": "request header fields too large"}


def test_the_limit_is_on_the_head_not_on_requests_below_it(
    server: QueryProcess, r: redis.Redis
) -> None:
    """A head just below the limit is served; one just above answers 431 and is closed; a
    connection may carry many small requests whose heads add up to far more than the limit."""
    put_price(r, "BTCUSDT", "66398.85000000")
    refused_before = _refused(server, "header_too_large")
    below = _get("/price/BTCUSDT")
    cookie = b"cookie: " + b"c" * (MAX_HEAD - len(below) - len(b"cookie: \r\n")) + b"\r\n"
    assert len(_get("/price/BTCUSDT", cookie)) == MAX_HEAD
    with server.connect() as sock:
        sock.sendall(_get("/price/BTCUSDT", cookie))
        status, body = _read_response(sock)
        assert status == b"HTTP/1.1 200 OK", (status, body)
        for _ in range(3 * MAX_HEAD // len(below) + 1):  # one keep-alive connection
            sock.sendall(below)
            assert _read_response(sock)[0] == b"HTTP/1.1 200 OK"
        # Pipelined in one write: a head of exactly the limit, then another request.
        sock.sendall(_get("/price/BTCUSDT", cookie) + below)
        assert _read_response(sock)[0] == b"HTTP/1.1 200 OK"
        assert _read_response(sock)[0] == b"HTTP/1.1 200 OK"
    with server.connect() as sock:
        sock.sendall(_get("/price/BTCUSDT", cookie + b"x: y\r\n"))
        closed_at, reply = _wait_closed(sock, time.monotonic() + 10)
    assert closed_at is not None
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:200]
    assert b"connection: close" in reply.lower()
    assert orjson.loads(reply.partition(b"\r\n\r\n")[2]) == {
        "error": "request header fields too large"
    }
    assert _refused(server, "header_too_large") == refused_before + 1


# --- time -----------------------------------------------------------------------------------


def test_a_connection_that_sends_nothing_is_closed_at_the_header_timeout(
    server: QueryProcess,
) -> None:
    refused_before = _refused(server, "header_timeout")
    with server.connect() as sock:
        opened = time.monotonic()
        closed_at, reply = _wait_closed(sock, opened + HEAD_TIMEOUT_S + SLACK_S)
    assert closed_at is not None, "still open after the header timeout"
    assert closed_at - opened >= HEAD_TIMEOUT_S - 0.1, closed_at - opened
    assert reply == b""  # nothing was asked: closed without an answer
    assert _refused(server, "header_timeout") == refused_before + 1


def test_slowloris_is_closed_at_the_header_deadline_although_it_keeps_sending(
    server: QueryProcess,
) -> None:
    """A header line every quarter of the timeout: the deadline is for the whole head."""
    with server.connect() as sock:
        opened = time.monotonic()
        sock.sendall(b"GET /price/BTCUSDT HTTP/1.1\r\nHost: x\r\n")
        lines = 0
        closed_at: float | None = None
        reply = b""
        give_up = opened + HEAD_TIMEOUT_S + SLACK_S
        while closed_at is None and time.monotonic() < give_up:
            closed_at, got = _wait_closed(sock, time.monotonic() + HEAD_TIMEOUT_S / 4)
            reply += got
            if closed_at is None:
                try:
                    sock.sendall(b"X-Slow-%d: 1\r\n" % lines)
                except (BrokenPipeError, ConnectionResetError):
                    closed_at = time.monotonic()
                lines += 1
    assert closed_at is not None, f"still open after {lines} lines"
    assert closed_at - opened >= HEAD_TIMEOUT_S - 0.1, closed_at - opened
    assert lines >= 3, lines  # it kept sending well within every per-line timeout
    if reply:
        assert reply.startswith(b"HTTP/1.1 408 "), reply[:200]
        assert orjson.loads(reply.partition(b"\r\n\r\n")[2])["error"]


def test_many_stalled_connections_do_not_stop_others_and_are_all_closed(
    server: QueryProcess, r: redis.Redis
) -> None:
    """100 silent and 100 slowloris connections: meanwhile fresh clients are answered at once,
    and every stalled connection is gone by the header deadline."""
    put_price(r, "BTCUSDT", "66398.85000000")
    stalled = [server.connect() for _ in range(200)]
    opened = time.monotonic()
    try:
        for sock in stalled[100:]:
            sock.sendall(b"GET /price/BTCUSDT HTTP/1.1\r\n")
        open_socks = set(stalled)
        served = 0
        with httpx.Client(base_url=server.url, timeout=HEAD_TIMEOUT_S) as client:
            while open_socks and time.monotonic() < opened + HEAD_TIMEOUT_S + SLACK_S:
                started = time.monotonic()
                reply = client.get("/price/BTCUSDT")
                assert reply.status_code == 200, reply.text
                assert client.get("/price/NOPEUSDT").status_code == 404
                assert time.monotonic() - started < 1.5, "a normal request waited"
                served += 1
                for sock in list(open_socks)[:50]:
                    if sock in stalled[100:]:
                        try:
                            sock.send(b"X-Slow: 1\r\n")  # keep trickling
                        except OSError:
                            open_socks.discard(sock)
                            continue
                for sock in _readable(open_socks, 0.1):
                    try:
                        data = sock.recv(65536)
                    except ConnectionResetError:
                        data = b""
                    if not data or b"\r\n\r\n" in data:
                        open_socks.discard(sock)
        assert served >= 3
        assert not open_socks, f"{len(open_socks)} stalled connections still open"
        assert time.monotonic() - opened >= HEAD_TIMEOUT_S - 0.1
    finally:
        for sock in stalled:
            sock.close()


def test_keep_alive_survives_many_heads_and_idle_closes_it(
    server: QueryProcess, r: redis.Redis
) -> None:
    """Requests on one connection for longer than the header timeout (each head is timed on
    its own), then the idle timeout closes the quiet connection."""
    put_price(r, "BTCUSDT", "66398.85000000")
    with server.connect() as sock:
        started = time.monotonic()
        count = 0
        while time.monotonic() - started < HEAD_TIMEOUT_S * 1.5:
            sock.sendall(_get("/price/BTCUSDT"))
            status, body = _read_response(sock)
            assert status == b"HTTP/1.1 200 OK", (count, status)
            assert orjson.loads(body)["symbol"] == "BTCUSDT"
            count += 1
            time.sleep(IDLE_TIMEOUT_S / 2)  # a quiet gap shorter than the idle timeout
        # A head in two reads, with a pause shorter than the header timeout, is served too.
        sock.sendall(b"GET /price/BTCUSDT HTTP/1.1\r\n")
        time.sleep(HEAD_TIMEOUT_S / 4)
        sock.sendall(b"Host: x\r\n\r\n")
        assert _read_response(sock)[0] == b"HTTP/1.1 200 OK"
        answered = time.monotonic()
        closed_at, extra = _wait_closed(sock, answered + IDLE_TIMEOUT_S + SLACK_S)
    assert count >= 3, count
    assert closed_at is not None, "a quiet keep-alive connection was not closed"
    assert closed_at - answered >= IDLE_TIMEOUT_S - 0.1, closed_at - answered
    assert extra == b""


# --- long-lived streams ----------------------------------------------------------------------


def _ws_frame_payload(sock: socket.socket, deadline: float) -> bytes | None:
    """The payload of the next (unmasked, unfragmented) server frame, None at the deadline."""
    buffer = b""

    def read(n: int) -> bytes | None:
        nonlocal buffer
        while len(buffer) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return None
            assert chunk, "the WebSocket was closed"
            buffer += chunk
        out, buffer = buffer[:n], buffer[n:]
        return out

    head = read(2)
    if head is None:
        return None
    length = head[1] & 0x7F
    if length == 126:
        ext = read(2)
        assert ext is not None
        length = int.from_bytes(ext, "big")
    elif length == 127:
        ext = read(8)
        assert ext is not None
        length = int.from_bytes(ext, "big")
    return read(length)


def test_sse_and_websocket_outlive_the_header_and_idle_timeouts(
    server: QueryProcess, r: redis.Redis
) -> None:
    """Streams past both timeouts still receive published updates: no timer runs once a
    request head is complete."""
    sse = server.connect()
    ws = server.connect()
    try:
        sse.sendall(_get("/stream/prices?symbols=BTCUSDT"))
        key = base64.b64encode(os.urandom(16))
        ws.sendall(
            _get(
                "/ws/prices?symbols=BTCUSDT",
                b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
                + key
                + b"\r\nSec-WebSocket-Version: 13\r\n",
            )
        )
        sse_seen = b""
        ws.settimeout(10)
        ws_head = b""
        while b"\r\n\r\n" not in ws_head:
            chunk = ws.recv(1)
            assert chunk, "WebSocket upgrade refused"
            ws_head += chunk
        assert ws_head.startswith(b"HTTP/1.1 101"), ws_head
        subscribed = _ws_frame_payload(ws, time.monotonic() + 10)
        assert subscribed is not None and orjson.loads(subscribed)["type"] == "subscribed"

        time.sleep(HEAD_TIMEOUT_S + IDLE_TIMEOUT_S + 0.5)  # past every connection timer

        update = trade_update("BTCUSDT", "66398.85", trade_id=11)
        deadline = time.monotonic() + 10
        ws_doc = None
        while time.monotonic() < deadline and (ws_doc is None or b"data: " not in sse_seen):
            publish(r, [update])
            if ws_doc is None:
                payload = _ws_frame_payload(ws, time.monotonic() + 0.3)
                if payload is not None:
                    ws_doc = orjson.loads(payload)
            readable, _, _ = select.select([sse], [], [], 0.3)
            if readable:
                chunk = sse.recv(65536)
                assert chunk, "the SSE stream was closed"
                sse_seen += chunk
        assert ws_doc == {"type": "prices", "updates": [update]}, ws_doc
        assert sse_seen.startswith(b"HTTP/1.1 200 OK"), sse_seen[:200]
        assert b"data: " in sse_seen, sse_seen[-300:]
    finally:
        sse.close()
        ws.close()


# --- several workers ----------------------------------------------------------------------------


def test_limits_apply_in_every_worker_process(redis_server: RedisServer, tmp_path: Path) -> None:
    """``--workers 2`` spawns the workers from a pickled config: the limits must travel too.
    Enough connections that the kernel hands some to each worker."""
    multi = _start(redis_server, tmp_path, workers=2)
    try:
        silent = [multi.connect() for _ in range(20)]
        opened = time.monotonic()
        oversized = []
        for _ in range(20):
            sock = multi.connect()
            sock.sendall(_get("/health", b"x-big: " + b"b" * MAX_HEAD + b"\r\n"))
            oversized.append(sock)
        for sock in oversized:
            closed_at, reply = _wait_closed(sock, time.monotonic() + 10)
            assert closed_at is not None and reply.startswith(b"HTTP/1.1 431 "), reply[:100]
            sock.close()
        for sock in silent:
            closed_at, _ = _wait_closed(sock, opened + HEAD_TIMEOUT_S + SLACK_S)
            assert closed_at is not None, "a silent connection outlived the header timeout"
            sock.close()
        assert httpx.get(f"{multi.url}/health", timeout=5).status_code == 200
    finally:
        multi.process.stop()
