"""uvicorn's httptools protocol with what it lacks against hostile clients: a cap on the size of
a request head and a deadline for receiving it.

Why: httptools keeps a header value in memory until its end arrives, so one client could make a
worker hold a 64 MB header; and uvicorn arms its keep-alive timer only after a response, so a
connection that never completes a request head (silent, or a slowloris trickling a line every
few seconds) stayed open for ever.

- **Size**: bytes received while a head is incomplete are counted; a head that does not end
  within ``max_head_bytes`` answers 431 (JSON ``{"error": ...}``) and the connection is closed.
  The parser is fed only up to the limit, so a connection costs a worker at most about twice
  the limit (the part of a pipelined head that shares a read with the previous request is
  not counted).
- **Head deadline**: from the connection's start, or from the first byte of a later request, the
  whole head must arrive within ``head_timeout_s`` (one deadline per head, not reset by each
  line). Then the connection is closed, with a 408 if part of a head had arrived.
- **Idle**: uvicorn's keep-alive timer, set to ``idle_timeout_s``, closes a connection that sends
  nothing after a response.

Once a head is complete no timer runs: long responses (SSE) and upgraded WebSockets live on.
The per-request cost is a few attribute updates; a timer is armed only for a head that arrives
in more than one read (and once per connection, at its start).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from cryptostream.logs import RateLimitedLog
from cryptostream.query.responses import error_body

# Key of the lifespan state under which the app hands the protocol its refusal counter.
REFUSED_STATE_KEY = "csp.connections_refused"
HEAD_TOO_LARGE = "header_too_large"
HEAD_TIMEOUT = "header_timeout"

log = RateLimitedLog(logging.getLogger("cryptostream.query"))


@dataclass(frozen=True)
class ConnectionLimits:
    max_head_bytes: int = 16384
    head_timeout_s: float = 10.0
    idle_timeout_s: float = 5.0


class QueryServerConfig(uvicorn.Config):
    """uvicorn's Config carrying the :class:`ConnectionLimits`, so they reach every worker
    process with it (uvicorn pickles the config into spawned workers)."""

    def __init__(self, app: Any, *, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.connection_limits = limits


def refusal_response(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 answer that announces the close (sent before any request is read)."""
    body = error_body(message)
    reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


TOO_LARGE_RESPONSE = refusal_response(431, "request header fields too large")
TIMEOUT_RESPONSE = refusal_response(408, "request header not received in time")


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """See the module docstring. State: ``_in_head`` is true from the connection's start and
    from the end of each request message until the next head is complete; ``_head_bytes``
    counts what arrived in that span."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = getattr(config, "connection_limits", None)
        if not isinstance(limits, ConnectionLimits):
            limits = ConnectionLimits()
        self.max_head_bytes = limits.max_head_bytes
        self.head_timeout_s = limits.head_timeout_s
        # uvicorn types it int, but call_later takes any number of seconds.
        self.timeout_keep_alive = limits.idle_timeout_s  # type: ignore[assignment]
        refused = app_state.get(REFUSED_STATE_KEY)
        self._refused: Callable[[str], None] | None = refused if callable(refused) else None
        self._in_head = True
        self._head_bytes = 0
        self._heads_done = 0
        self._head_timer: asyncio.TimerHandle | None = None

    # --- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_head:  # a request body, or bytes after a head while its answer runs
            super().data_received(data)
            return
        room = self.max_head_bytes - self._head_bytes
        if len(data) > room:
            self._received_past_limit(data, room)
            return
        self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes and self._head_timer is None:
            self._start_head_deadline()  # part of a head is in the parser: it spans reads

    def _received_past_limit(self, data: bytes, room: int) -> None:
        """Rare path: feed the parser only up to the limit. If a head ended within it, what
        follows (a body or the next request) is fed on as a new read; else 431."""
        if self.transport.is_closing():
            return  # refused already: nothing more reaches the parser
        heads_before = self._heads_done
        if room > 0:
            self._head_bytes += room
            HttpToolsProtocol.data_received(self, data[:room])
            if self.transport.is_closing() or self.transport.get_protocol() is not self:
                return  # the parser refused it (400), or the connection became a WebSocket
        if self._heads_done == heads_before:
            self._refuse(HEAD_TOO_LARGE, TOO_LARGE_RESPONSE)
            return
        self.data_received(data[room:])  # shorter each time: a new head has a full limit

    # --- parser callbacks --------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads_done += 1
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        super().on_message_complete()

    # --- refusals ----------------------------------------------------------------------------

    def _start_head_deadline(self) -> None:
        if not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        if self.transport.get_protocol() is not self:
            return
        if self._head_bytes:
            self._refuse(HEAD_TIMEOUT, TIMEOUT_RESPONSE)
        else:  # never sent a byte: close quietly (browsers open spare connections)
            self._count(HEAD_TIMEOUT)
            self.transport.close()

    def _refuse(self, reason: str, response: bytes) -> None:
        self._count(reason)
        client = f"{self.client[0]}:{self.client[1]}" if self.client else ""
        log.warning(
            reason,
            "connection refused: " + reason.replace("_", " "),
            **{"client.address": client, "bytes_received": self._head_bytes},
        )
        self._cancel_head_timer()
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(response)  # not in the middle of another answer's bytes
        self.transport.close()

    def _count(self, reason: str) -> None:
        if self._refused is not None:
            self._refused(reason)
