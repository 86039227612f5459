import pytest
from hypothesis import given
from hypothesis import strategies as st

from cryptostream.core.symbols import InvalidSymbol, is_valid_symbol, normalize_symbol


@pytest.mark.parametrize("raw", ["btcusdt", "BTCUSDT", "BtcUsdt", "1INCHUSDT", "AB"])
def test_valid_symbols_are_upper_cased(raw: str) -> None:
    assert normalize_symbol(raw) == raw.upper()


@pytest.mark.parametrize(
    "raw",
    ["", "A", "*", "../etc", "BTC\r\nUSDT", "BTCUSDT\n", "BTC USDT", "X" * 21, "ÄBC", "price:*"],
)
def test_invalid_symbols_are_rejected(raw: str) -> None:
    assert not is_valid_symbol(raw)
    with pytest.raises(InvalidSymbol):
        normalize_symbol(raw)


@given(st.text(max_size=40))
def test_validation_never_raises_anything_else(raw: str) -> None:
    try:
        assert normalize_symbol(raw).isupper() or normalize_symbol(raw).isdigit()
    except InvalidSymbol:
        assert not is_valid_symbol(raw)
