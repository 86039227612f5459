"""A small HTTP/1.1 request parser and response writer for the REST side. Pure, no I/O.

The port serves WebSocket upgrades and plain HTTP. The server shell feeds the bytes of a
connection to :class:`RequestParser` until a request head is complete; an upgrade goes to the
WebSocket library, anything else is answered here: every method (``HEAD`` like ``GET`` without a
body, others refused with 405 and ``Allow``), request bodies read (``Content-Length`` or chunked)
and discarded, and HTTP/1.1 keep-alive with pipelining (HTTP/1.0: close unless asked).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.utils import formatdate

MAX_HEAD = 16 * 1024
MAX_BODY = 1 << 20
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class HttpError(Exception):
    """A request that cannot be read: answer ``status`` and close the connection."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass(slots=True)
class HttpRequest:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str, default: str = "") -> str:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.header("connection").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    @property
    def is_upgrade(self) -> bool:
        """A WebSocket opening handshake (left to the WebSocket library)."""
        tokens = {t.strip().lower() for t in self.header("connection").split(",")}
        return (
            self.method == "GET"
            and "upgrade" in tokens
            and self.header("upgrade").strip().lower() == "websocket"
        )


def parse_head(head: bytes) -> HttpRequest:
    """Request line and headers (without the final blank line); HttpError if malformed."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover (latin-1 decodes anything)
        raise HttpError(400, "bad request") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0] or not set(parts[0].encode()) <= _TOKEN:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise HttpError(505, "HTTP version not supported")
    if not target.startswith("/") and target != "*":
        raise HttpError(400, "malformed request target")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or not set(name.encode()) <= _TOKEN:
            raise HttpError(400, "malformed header line")
        headers.append((name.lower(), value.strip()))
    return HttpRequest(method, target, version, headers)


@dataclass(slots=True)
class RequestParser:
    """Incremental: ``feed`` bytes, then take complete requests with ``next_request``."""

    buf: bytearray = field(default_factory=bytearray)
    raw_head: bytes = b""  # the bytes of the last head read (to hand an upgrade on verbatim)
    _head: HttpRequest | None = None

    def feed(self, data: bytes) -> None:
        self.buf += data

    def peek_head(self) -> HttpRequest | None:
        """The head of the next request once complete (to tell an upgrade), else None."""
        if self._head is None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    raise HttpError(431, "request header fields too large")
                return None
            if end > MAX_HEAD:
                raise HttpError(431, "request header fields too large")
            self.raw_head = bytes(self.buf[: end + 4])
            self._head = parse_head(self.raw_head[:end])
            del self.buf[: end + 4]
        return self._head

    def next_request(self) -> HttpRequest | None:
        """The next complete request (body included), or None until more bytes arrive."""
        req = self.peek_head()
        if req is None:
            return None
        te = req.header("transfer-encoding").lower()
        if te:
            if te != "chunked":
                raise HttpError(501, "unsupported transfer encoding")
            body = self._chunked()
            if body is None:
                return None
            req.body = body
        else:
            cl = req.header("content-length")
            n = 0
            if cl:
                if not cl.isdigit():
                    raise HttpError(400, "bad content-length")
                n = int(cl)
                if n > MAX_BODY:
                    raise HttpError(413, "request body too large")
            if len(self.buf) < n:
                return None
            req.body = bytes(self.buf[:n])
            del self.buf[:n]
        self._head = None
        return req

    def _chunked(self) -> bytes | None:
        """Decode a complete chunked body from the buffer (consumed only when complete)."""
        pos = 0
        out = bytearray()
        buf = self.buf
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                if len(buf) - pos > 1024:
                    raise HttpError(400, "bad chunk size")
                return None
            size_text = bytes(buf[pos:eol]).split(b";")[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise HttpError(400, "bad chunk size") from None
            if size < 0 or len(out) + size > MAX_BODY:
                raise HttpError(413, "request body too large")
            start = eol + 2
            if size == 0:
                end = buf.find(b"\r\n\r\n", eol)  # (optional trailers) then a blank line
                if end < 0:
                    return None
                del buf[: end + 4]
                return bytes(out)
            if len(buf) < start + size + 2:
                return None
            out += buf[start : start + size]
            pos = start + size + 2


def response_bytes(
    status: int,
    reason: str,
    body: bytes,
    keep_alive: bool,
    headers: list[tuple[str, str]] | None = None,
    head_only: bool = False,
) -> bytes:
    """One HTTP/1.1 response; ``head_only`` (a HEAD request) keeps the length, drops the body."""
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json;charset=UTF-8",
        f"Content-Length: {len(body)}",
        f"Date: {formatdate(usegmt=True)}",
        "Server: marketsim",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    for k, v in headers or ():
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)
