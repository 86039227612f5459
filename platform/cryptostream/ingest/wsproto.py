"""The client side of RFC 6455, just what a market-data reader needs (sans-I/O).

Why not a general WebSocket library on the hot path: at tens of thousands of frames per second,
per-frame futures and objects dominate. :class:`FrameParser` turns received bytes into a list of
text payloads in one loop, and keeps control frames (ping, close) aside; :class:`ClientProtocol`
adds the upgrade and queues the answers (pongs, the close reply) for the I/O shell to write.
Fragmented messages are reassembled; frames larger than ``max_size`` are a protocol error.
"""

from __future__ import annotations

import base64
import hashlib
import os
from urllib.parse import urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


class ProtocolError(Exception):
    """The peer broke the protocol (or sent a frame above the size limit)."""


class HandshakeError(Exception):
    """The server did not upgrade the connection; the message has its status line."""


def handshake_request(url: str, key: str | None = None) -> tuple[bytes, str]:
    """The HTTP upgrade request for ``ws[s]://host[:port]/path?query`` and its key."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"not a WebSocket URL: {url!r}")
    key = key or base64.b64encode(os.urandom(16)).decode()
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "User-Agent: cryptostream-ingest\r\n\r\n"
    )
    return request.encode(), key


def check_handshake(head: bytes, key: str) -> None:
    """Validate the server's response head (up to the blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0]
    parts = status.split(" ", 2)
    if len(parts) < 2 or parts[1] != "101":
        raise HandshakeError(f"server refused the upgrade: {status[:200]}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    expected = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
    if headers.get("sec-websocket-accept") != expected:
        raise HandshakeError("bad Sec-WebSocket-Accept in the server's response")


def client_frame(opcode: int, payload: bytes = b"", mask: bytes | None = None) -> bytes:
    """A final, masked client frame."""
    mask = mask or os.urandom(4)
    n = len(payload)
    if n < 126:
        header = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        header = bytes([0x80 | opcode, 0xFE]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0xFF]) + n.to_bytes(8, "big")
    return header + mask + _apply_mask(payload, mask)


def _apply_mask(payload: bytes, mask: bytes) -> bytes:
    if not payload:
        return b""
    n = len(payload)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


def close_payload(code: int, reason: str = "") -> bytes:
    return code.to_bytes(2, "big") + reason.encode()[:120]


class FrameParser:
    """Feed received bytes; get complete data messages. Control frames land in ``pings`` and
    ``close`` (``(code, reason)``) for the caller to answer."""

    __slots__ = ("_buf", "_frag", "_frag_size", "close", "max_size", "pings")

    def __init__(self, max_size: int = 1 << 20) -> None:
        self._buf = b""
        self._frag: list[bytes] | None = None
        self._frag_size = 0
        self.max_size = max_size
        self.pings: list[bytes] = []
        self.close: tuple[int, str] | None = None

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        i, size = 0, len(buf)
        max_size = self.max_size
        while size - i >= 2:
            b0 = buf[i]
            b1 = buf[i + 1]
            ln = b1 & 0x7F
            h = 2
            if ln == 126:
                if size - i < 4:
                    break
                ln = int.from_bytes(buf[i + 2 : i + 4], "big")
                h = 4
            elif ln == 127:
                if size - i < 10:
                    break
                ln = int.from_bytes(buf[i + 2 : i + 10], "big")
                h = 10
            if ln > max_size:
                raise ProtocolError(f"frame of {ln} bytes exceeds the {max_size}-byte limit")
            masked = b1 & 0x80
            if masked:
                h += 4
            end = i + h + ln
            if end > size:
                break
            payload = buf[i + h : end]
            if masked:
                payload = _apply_mask(payload, buf[i + h - 4 : i + h])
            i = end
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode in (OP_TEXT, OP_BINARY):
                if self._frag is not None:
                    raise ProtocolError("new data frame inside a fragmented message")
                if fin:
                    out.append(payload)
                else:
                    self._frag, self._frag_size = [payload], ln
            elif opcode == OP_CONT:
                if self._frag is None:
                    raise ProtocolError("continuation frame without a message")
                self._frag.append(payload)
                self._frag_size += ln
                if self._frag_size > max_size:
                    raise ProtocolError(f"message exceeds the {max_size}-byte limit")
                if fin:
                    out.append(b"".join(self._frag))
                    self._frag = None
            elif opcode == OP_PING:
                self.pings.append(payload)
            elif opcode == OP_PONG:
                pass  # (we never ping: a pong is unsolicited and needs no answer)
            elif opcode == OP_CLOSE:
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self.close = (code, payload[2:].decode(errors="replace"))
                self._buf = b""
                return out
            else:
                raise ProtocolError(f"unknown opcode {opcode:#x}")
        self._buf = buf[i:] if i < size else b""
        return out


MAX_HEAD = 65536


class ClientProtocol:
    """One client connection's protocol state: the upgrade, then frames (sans-I/O).

    Feed it every received byte (:meth:`receive_data`); it buffers the handshake response,
    returns complete data messages, and queues what must be sent back — the upgrade request,
    pongs echoing pings, the reply to a close — for the shell to write (:meth:`data_to_send`).
    """

    __slots__ = ("_head", "close_received", "key", "outgoing", "parser", "upgraded")

    def __init__(self, url: str, max_size: int = 1 << 20, key: str | None = None) -> None:
        request, self.key = handshake_request(url, key)
        self.outgoing: list[bytes] = [request]
        self._head = b""
        self.upgraded = False
        self.parser = FrameParser(max_size)
        self.close_received: tuple[int, str] | None = None  # (code, reason) from the server

    def receive_data(self, data: bytes) -> list[bytes]:
        """Complete data messages in ``data``; raises :class:`HandshakeError` (refused upgrade,
        oversized response head) or :class:`ProtocolError`."""
        if not self.upgraded:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > MAX_HEAD:
                    raise HandshakeError("handshake response too large")
                return []
            check_handshake(self._head[:end], self.key)
            data, self._head, self.upgraded = self._head[end + 4 :], b"", True
            if not data:
                return []
        parser = self.parser
        frames = parser.feed(data)
        if parser.pings:
            self.outgoing.extend(client_frame(OP_PONG, payload) for payload in parser.pings)
            parser.pings.clear()
        if parser.close is not None and self.close_received is None:
            self.close_received = parser.close
            code = parser.close[0]
            self.send_close(code if code not in (1005, 1006) else 1000)
        return frames

    def send_text(self, payload: bytes) -> None:
        self.outgoing.append(client_frame(OP_TEXT, payload))

    def send_close(self, code: int = 1000, reason: str = "") -> None:
        self.outgoing.append(client_frame(OP_CLOSE, close_payload(code, reason)))

    def data_to_send(self) -> bytes:
        """Everything queued to write, once."""
        if not self.outgoing:
            return b""
        out = b"".join(self.outgoing)
        self.outgoing.clear()
        return out
