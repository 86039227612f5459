"""Fault decisions per connection. Pure: no I/O, no clock (callers pass ``now``), seeded RNG.

Faults apply to the frames a connection receives from its subscriptions (not to replies to
control messages):

* ``drop_after_messages`` / ``drop_after_seconds``: the connection is dropped — TCP abort by
  default (``drop_mode="abort"``), or a WebSocket close 1011 with ``drop_mode="close"``.
* ``stall_after_messages`` / ``stall_after_seconds``: stop sending while keeping the connection
  open (pings still answered); frames due meanwhile are discarded (a gap the client can backfill
  over REST); the stall lasts ``stall_seconds`` (None: for good).
* ``malformed_rate``: a frame is replaced by a malformed one, cycling through non-JSON (truncated),
  a missing field (``p`` or the first key) and a wrong type (an int field sent as a string).
* ``duplicate_rate``: a frame is sent twice in a row.
* ``reorder_rate``: a frame is held back and sent after the next one (out of order).
* ``gap_rate``: a trade frame is not sent at all — its trade id is skipped on this connection
  (the trade still exists in ``/sim/stats`` truth and in the REST history).
* ``depth_gap_rate``: a depth diff (``@depth``, ``@depth@100ms``, ``@depth@1000ms``) is not sent
  at all on this connection — a sequence break: the next diff's ``U`` is not the previous ``u``
  + 1, and a client following Binance's procedure must resync from a new snapshot.
* ``stale_snapshots`` (server-level): the first N REST ``/api/v3/depth`` answers are a stale
  snapshot — the book as it was ``stale_snapshot_age`` seconds of market time earlier (kept at
  every 1000 ms tick; the opening book until that much time has passed), with that book's
  ``lastUpdateId`` — so a client that subscribed since then finds ``lastUpdateId`` below its
  first buffered ``U`` - 1 and must fetch the snapshot again.
* ``slow_start_seconds``: the server waits that long before it listens (server-level).
* ``connections``: only the first N accepted connections get faults (None: all), so a reconnecting
  client can recover.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

import orjson


@dataclass(frozen=True, slots=True)
class FaultConfig:
    drop_after_messages: int | None = None
    drop_after_seconds: float | None = None
    drop_mode: Literal["abort", "close"] = "abort"
    stall_after_messages: int | None = None
    stall_after_seconds: float | None = None
    stall_seconds: float | None = None
    malformed_rate: float = 0.0
    duplicate_rate: float = 0.0
    reorder_rate: float = 0.0
    gap_rate: float = 0.0
    depth_gap_rate: float = 0.0
    stale_snapshots: int = 0
    stale_snapshot_age: float = 5.0
    slow_start_seconds: float = 0.0
    connections: int | None = None
    seed: int = 0

    @property
    def any_connection_fault(self) -> bool:
        return any(
            (
                self.drop_after_messages is not None,
                self.drop_after_seconds is not None,
                self.stall_after_messages is not None,
                self.stall_after_seconds is not None,
                self.malformed_rate > 0,
                self.duplicate_rate > 0,
                self.reorder_rate > 0,
                self.gap_rate > 0,
                self.depth_gap_rate > 0,
            )
        )

    def applies_to(self, connection_index: int) -> bool:
        """Whether the connection (0-based, in accept order) gets faults."""
        if not self.any_connection_fault:
            return False
        return self.connections is None or connection_index < self.connections


def malform(payload: bytes, variant: int) -> bytes:
    """A malformed version of a JSON object payload: 0 non-JSON, 1 missing field, 2 wrong type."""
    if variant == 0:
        return payload[: max(1, len(payload) // 2)]
    try:
        obj: Any = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload[: max(1, len(payload) // 2)]
    if isinstance(obj, dict) and "data" in obj and isinstance(obj["data"], dict):
        target: dict[str, Any] = obj["data"]
    elif isinstance(obj, dict):
        target = obj
    else:
        return payload[: max(1, len(payload) // 2)]
    if variant == 1:
        key = "p" if "p" in target else next(iter(target), None)
        if key is not None:
            del target[key]
    else:
        for k, v in target.items():
            if isinstance(v, int) and not isinstance(v, bool):
                target[k] = str(v)
                break
        else:
            for k, v in target.items():
                if isinstance(v, str):
                    target[k] = 12345
                    break
    return orjson.dumps(obj)


class FaultInjector:
    """Decides, frame by frame, what one connection really receives."""

    def __init__(self, config: FaultConfig, seed: int) -> None:
        self.config = config
        self._rng = random.Random(seed)
        self.sent = 0  # frames passed to the connection (after faults)
        self.seen = 0  # frames offered
        self.dropped = False
        self._stall_until: float | None = None
        self._stalled = False
        self._held: bytes | None = None
        self._malform_next = 0
        self.counts = {
            "malformed": 0,
            "duplicated": 0,
            "reordered": 0,
            "gaps": 0,
            "stalled": 0,
            "depth_gaps": 0,
        }

    def start_stall(self, now: float) -> None:
        self._stalled = True
        d = self.config.stall_seconds
        self._stall_until = None if d is None else now + d

    def stalled(self, now: float) -> bool:
        if self._stalled and self._stall_until is not None and now >= self._stall_until:
            self._stalled = False
        return self._stalled

    def process(
        self, payload: bytes, is_trade: bool, now: float, is_diff: bool = False
    ) -> list[bytes] | None:
        """Payloads to send for this offered frame (possibly none), or None: drop the connection.

        ``is_diff``: the frame is a depth diff (``depth_gap_rate`` applies to it)."""
        cfg = self.config
        if self.dropped:
            return None
        self.seen += 1
        if cfg.drop_after_messages is not None and self.sent >= cfg.drop_after_messages:
            self.dropped = True
            return None
        if (
            cfg.stall_after_messages is not None
            and not self._stalled
            and self._stall_until is None
            and self.sent >= cfg.stall_after_messages
        ):
            self.start_stall(now)
        if self.stalled(now):
            self.counts["stalled"] += 1
            return []
        rnd = self._rng.random
        if is_trade and cfg.gap_rate > 0 and rnd() < cfg.gap_rate:
            self.counts["gaps"] += 1
            return []
        if is_diff and cfg.depth_gap_rate > 0 and rnd() < cfg.depth_gap_rate:
            self.counts["depth_gaps"] += 1
            return []
        out = [payload]
        if cfg.malformed_rate > 0 and rnd() < cfg.malformed_rate:
            out = [malform(payload, self._malform_next)]
            self._malform_next = (self._malform_next + 1) % 3
            self.counts["malformed"] += 1
        elif cfg.duplicate_rate > 0 and rnd() < cfg.duplicate_rate:
            out = [payload, payload]
            self.counts["duplicated"] += 1
        if self._held is not None:
            out.append(self._held)
            self._held = None
        elif cfg.reorder_rate > 0 and len(out) == 1 and rnd() < cfg.reorder_rate:
            self._held = out.pop()
            self.counts["reordered"] += 1
        if cfg.drop_after_messages is not None:
            out = out[: max(0, cfg.drop_after_messages - self.sent)]
        self.sent += len(out)
        return out
