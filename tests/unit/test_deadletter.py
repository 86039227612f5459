"""The one dead-letter shape: whatever the input, an entry fits the producer's limit."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from cryptostream.core.deadletter import (
    DEFAULT_MAX_BYTES,
    MAX_REASON_CHARS,
    decode_dead_letter,
    encode_dead_letter,
)


def test_an_800_kb_record_with_an_unbounded_reason_fits() -> None:
    raw = b'{"v": "' + b"\x01" * 800_000 + b'"}'  # every byte escapes to six in JSON
    value = encode_dead_letter(
        "x" * 2_000_000,
        "processor",
        "raw.trades/3/7",
        raw,
        topic="raw.trades",
        partition=3,
        offset=7,
    )
    assert len(value) <= DEFAULT_MAX_BYTES
    entry = decode_dead_letter(value)
    assert len(entry.reason) <= MAX_REASON_CHARS and entry.reason.startswith("xxx")
    assert entry.raw_bytes == len(raw) and entry.raw_truncated
    assert raw.decode().startswith(entry.raw) and entry.raw
    assert (entry.topic, entry.partition, entry.offset) == ("raw.trades", 3, 7)


def test_a_small_input_is_kept_whole() -> None:
    entry = decode_dead_letter(encode_dead_letter("not JSON", "ingest", "ws://x", b"{bad"))
    assert (entry.raw, entry.raw_bytes, entry.raw_truncated) == ("{bad", 4, False)
    assert entry.stage == "ingest" and entry.source == "ws://x"


@settings(max_examples=50)
@given(st.binary(max_size=300_000), st.text(max_size=3000), st.integers(1024, 300_000))
def test_any_input_fits_any_limit(raw: bytes, reason: str, limit: int) -> None:
    value = encode_dead_letter(reason, "processor", "t/0/1", raw, max_bytes=limit)
    assert len(value) <= limit
    doc = orjson.loads(value)
    assert (doc["raw_bytes"] == len(raw) and doc["reason"] == reason[:MAX_REASON_CHARS]) or (
        len(reason) > MAX_REASON_CHARS
    )
