"""The one shape of a dead-letter record on ``raw.trades.dlq`` (sans-I/O).

Ingest dead-letters frames it cannot decode; the processor, records it cannot apply. Both write::

    {"reason": "...", "stage": "ingest" | "processor", "source": "<ws url> | <topic>/<p>/<offset>",
     "raw": "<the input as text, maybe a prefix>", "raw_bytes": <its full length>,
     "raw_truncated": <bool>, ...where it came from: topic/partition/offset or received_at_us}

An entry must always fit the producer's and the broker's message limits (1 MB by default): a
dead letter that cannot be produced would turn one bad input into a stuck consumer. So the
reason is bounded and the raw input is cut to what fits, with its full length kept.
"""

from __future__ import annotations

import msgspec
import orjson

MAX_REASON_CHARS = 500
MAX_RAW_BYTES = 65536  # the prefix of the input kept: enough to see what went wrong
# Well below librdkafka's message.max.bytes (1,000,000) and the broker's max.message.bytes.
DEFAULT_MAX_BYTES = 256 * 1024


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    reason: str
    stage: str = ""
    source: str = ""
    raw: str = ""
    raw_bytes: int = 0
    raw_truncated: bool = False
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    received_at_us: int | None = None


def bounded_reason(reason: str) -> str:
    if len(reason) <= MAX_REASON_CHARS:
        return reason
    return f"{reason[: MAX_REASON_CHARS - 30]}... ({len(reason)} chars)"


def encode_dead_letter(
    reason: str,
    stage: str,
    source: str,
    raw: bytes | None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_raw: int = MAX_RAW_BYTES,
    **where: int | str,
) -> bytes:
    """One DLQ value of at most ``max_bytes`` bytes, whatever ``reason`` and ``raw`` hold."""
    data = raw or b""
    doc: dict[str, object] = {
        "reason": bounded_reason(reason),
        "stage": stage,
        "source": source[:500],
        **where,
        "raw_bytes": len(data),
        "raw_truncated": False,
        "raw": "",
    }
    room = max_bytes - len(orjson.dumps(doc)) - 16
    cut = min(len(data), max_raw, max(room, 0))
    while True:
        doc["raw"] = data[:cut].decode(errors="replace")
        doc["raw_truncated"] = cut < len(data)
        value = orjson.dumps(doc)
        if len(value) <= max_bytes or cut == 0:
            return value
        # JSON escaping (control bytes become \u00XX) made it longer than the bytes: cut more.
        cut = cut * max_bytes // len(value) // 2


def decode_dead_letter(value: bytes) -> DeadLetter:
    return msgspec.json.decode(value, type=DeadLetter)
