"""Moved to :mod:`cryptostream.binance.frames` (Binance's stream payloads); re-exported here for
the modules that still import the old name."""

from cryptostream.binance.frames import (
    ControlReply,
    FrameOutcome,
    Ignored,
    Malformed,
    parse_frame,
    parse_frame_checked,
)

__all__ = [
    "ControlReply",
    "FrameOutcome",
    "Ignored",
    "Malformed",
    "parse_frame",
    "parse_frame_checked",
]
