import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cryptostream.binance.frames import ControlReply, Ignored, Malformed, parse_frame
from cryptostream.core.trades import Trade

TRADE = {
    "e": "trade",
    "E": 1718000000001,
    "s": "BTCUSDT",
    "t": 42,
    "p": "66398.85000000",
    "q": "0.00120000",
    "T": 1718000000000,
    "m": True,
    "M": True,
}


def test_raw_trade_payload() -> None:
    outcome = parse_frame(orjson.dumps(TRADE))
    assert outcome == Trade(
        "BTCUSDT", 42, "66398.85000000", "0.00120000", 1718000000000, 1718000000001, True
    )


def test_combined_stream_wrapper_and_unknown_fields() -> None:
    frame = {"stream": "btcusdt@trade", "data": {**TRADE, "X": "new field"}}
    outcome = parse_frame(orjson.dumps(frame))
    assert isinstance(outcome, Trade) and outcome.trade_id == 42


def test_control_replies_and_errors() -> None:
    assert parse_frame(b'{"result":null,"id":1}') == ControlReply(1, None)
    reply = parse_frame(b'{"code":2,"msg":"Invalid request"}')
    assert isinstance(reply, ControlReply) and reply.error == {"code": 2, "msg": "Invalid request"}


def test_other_events_are_ignored_not_errors() -> None:
    assert parse_frame(orjson.dumps({**TRADE, "e": "aggTrade"})) == Ignored("aggTrade")
    assert parse_frame(b'{"e":"serverShutdown","E":1}') == Ignored("serverShutdown")


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"not json", "not JSON"),
        (b"[1,2]", "expected a JSON object"),
        (b'{"stream":"x","data":5}', "not an object"),
        (b'{"a":1}', "no event type"),
        (orjson.dumps({k: v for k, v in TRADE.items() if k != "p"}), "missing field 'p'"),
        (orjson.dumps({**TRADE, "p": 1.5}), "decimal string"),
        (orjson.dumps({**TRADE, "p": "-1.0"}), "not a plain decimal"),
        (orjson.dumps({**TRADE, "p": "0.000"}), "must be positive"),
        (orjson.dumps({**TRADE, "p": "NaN"}), "not a plain decimal"),
        (orjson.dumps({**TRADE, "q": "Infinity"}), "not a plain decimal"),
        (orjson.dumps({**TRADE, "p": "1e5"}), "not a plain decimal"),
        (orjson.dumps({**TRADE, "t": "42"}), "must be an integer"),
        (orjson.dumps({**TRADE, "t": True}), "must be an integer"),
        (orjson.dumps({**TRADE, "s": "../x"}), "invalid symbol"),
        (orjson.dumps({**TRADE, "m": "yes"}), "boolean"),
    ],
)
def test_malformed_frames_say_why(frame: bytes, reason: str) -> None:
    outcome = parse_frame(frame)
    assert isinstance(outcome, Malformed), outcome
    assert reason in outcome.reason


def test_oversized_frames_are_rejected_before_parsing() -> None:
    outcome = parse_frame(b" " * 2000 + orjson.dumps(TRADE), max_bytes=1024)
    assert isinstance(outcome, Malformed) and "exceeds" in outcome.reason


def _check_outcome(raw: bytes) -> None:
    """Never raises, and says what it got: a trade, a control reply, an ignored event, or
    Malformed with a reason (an arbitrary input is never silently dropped)."""
    outcome = parse_frame(raw)
    assert isinstance(outcome, Trade | ControlReply | Ignored | Malformed)
    if isinstance(outcome, Malformed):
        assert outcome.reason


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    _check_outcome(raw)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=5)
    ),
    max_leaves=20,
)


@given(
    st.dictionaries(st.sampled_from([*list(TRADE), "stream", "data", "result", "id"]), json_values)
)
def test_arbitrary_json_objects_never_raise(obj: dict[str, object]) -> None:
    _check_outcome(orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS))


def test_binance_error_envelope_is_a_control_error() -> None:
    reply = parse_frame(b'{"error":{"code":2,"msg":"Invalid request: invalid stream"},"id":7}')
    assert reply == ControlReply(7, None, {"code": 2, "msg": "Invalid request: invalid stream"})
    reply = parse_frame(b'{"error":"weird","id":null}')
    assert isinstance(reply, ControlReply) and reply.error == {"msg": "weird"}


AGG = {
    "e": "aggTrade",
    "E": 5,
    "s": "ETHUSDT",
    "a": 77,
    "p": "3000.10",
    "q": "2.5",
    "f": 100,
    "l": 104,
    "T": 4,
    "m": False,
    "M": True,
}


def test_agg_trade_mode() -> None:
    frame = orjson.dumps({"stream": "ethusdt@aggTrade", "data": AGG})
    assert parse_frame(frame, trade_event="aggTrade") == Trade(
        "ETHUSDT", 77, "3000.10", "2.5", 4, 5, False
    )
    assert parse_frame(orjson.dumps(TRADE), trade_event="aggTrade") == Ignored("trade")
    bad = parse_frame(orjson.dumps({**AGG, "a": "x"}), trade_event="aggTrade")
    assert isinstance(bad, Malformed) and "a (trade id)" in bad.reason


# Each field valid, at a limit, or wrong in the ways frames go wrong; plus the keys that make a
# frame something else (a control reply, a combined wrapper).
_FRAME_NEAR: dict[str, list[object]] = {
    "e": ["trade", "aggTrade", "depthUpdate", 5, None],
    "E": [1718000000001, 0, 253402300799999, 253402300800000, -1, 1.5, True, "1"],
    "s": ["BTCUSDT", "btcusdt", "B", "A" * 21, "BTC-USDT", "\uff22\uff34", 7],
    "t": [42, 0, 2**63 - 1, 2**63, -1, 1.0, False, "42"],
    "a": [42, -1, "x"],
    "p": [
        "66398.85000000",
        "0",
        "0.0",
        "1.",
        ".5",
        "1e5",
        " 1",
        "9" * 20 + "." + "9" * 20,
        "9" * 21,
        "\u0663",
        1.5,
    ],
    "q": ["0.00120000", "00.10", "-1", "NaN", 2],
    "T": [1718000000000, -5, 2**70, None],
    "m": [True, False, 0, "true"],
    "result": [None, 1],
    "code": [2],
    "msg": ["x"],
    "stream": ["btcusdt@trade", 3],
    "data": [{"e": "trade"}, [1], "x"],
}
_MISSING = object()
_frame_mutations = st.lists(st.sampled_from(sorted(_FRAME_NEAR)), max_size=3, unique=True).flatmap(
    lambda keys: st.fixed_dictionaries(
        {k: st.sampled_from([*_FRAME_NEAR[k], _MISSING]) for k in keys}
    )
)


@given(
    _frame_mutations,
    st.booleans(),
    st.sampled_from(["trade", "aggTrade"]),
    st.booleans(),
)
def test_fast_path_agrees_with_the_checked_path(
    mutations: dict[str, object], combined: bool, kind: str, as_text: bool
) -> None:
    """parse_frame (msgspec first) gives exactly what the field-by-field path gives."""
    import json

    from cryptostream.binance.frames import parse_frame_checked

    base = {**TRADE, "a": 42} if kind == "aggTrade" else TRADE
    payload = {k: v for k, v in {**base, "e": kind, **mutations}.items() if v is not _MISSING}
    frame: object = {"stream": "btcusdt@trade", "data": payload} if combined else payload
    raw: bytes | str = json.dumps(frame)
    if not as_text:
        raw = raw.encode()
    for _memoized in range(2):  # the second time, accepted texts come from the fast path's memos
        assert parse_frame(raw, trade_event=kind) == parse_frame_checked(raw, trade_event=kind)


def test_fast_path_memos_are_bounded() -> None:
    import json

    from cryptostream.binance import frames
    from cryptostream.core.codec import MEMO_MAX

    for i in range(MEMO_MAX + 10):
        frame = {**TRADE, "s": f"S{i}USDT", "p": f"{i + 1}.5"}
        trade = parse_frame(json.dumps(frame).encode())
        assert isinstance(trade, Trade) and trade.price == f"{i + 1}.5"
    assert all(0 < len(memo) <= MEMO_MAX for memo in frames._MEMOS)


@given(
    _frame_mutations,
    st.booleans(),
    st.sampled_from(["trade", "aggTrade"]),
)
def test_engine_records_are_the_checked_paths(
    mutations: dict[str, object], combined: bool, kind: str
) -> None:
    """The ingest engine's direct path (typed fields straight into the record's bytes) gives
    exactly the record of the field-by-field path, or dead-letters what it refuses."""
    import json

    from cryptostream.binance.frames import parse_frame_checked
    from cryptostream.core.codec import encode_trade
    from cryptostream.ingest.engine import TradeEngine

    base = {**TRADE, "a": 42} if kind == "aggTrade" else TRADE
    payload = {k: v for k, v in {**base, "e": kind, **mutations}.items() if v is not _MISSING}
    frame: object = {"stream": "btcusdt@trade", "data": payload} if combined else payload
    raw = json.dumps(frame).encode()
    e = TradeEngine(
        [],
        kind=kind,
        grace_s=0,
        bound=100,
        buffer_timeout_s=1,
        max_frame=1 << 16,
        gap_topic="g",
        dlq_topic="d",
    )
    records = e.on_frames([raw], 7, 1, 0.0)
    expected = parse_frame_checked(raw, trade_event=kind)
    if isinstance(expected, Trade):
        assert records == [(encode_trade(expected, 7), expected.symbol.encode(), expected.trade_id)]
    else:
        assert records == []
        assert len(e.outbox) == isinstance(expected, Malformed)
