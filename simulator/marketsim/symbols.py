"""Symbol specifications: price levels, tick and step sizes, assets. Pure, no I/O."""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass

from marketsim.units import SCALE

_QUOTES = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY", "BRL")
SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,20}$")


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """One simulated symbol. Amounts are in 1e-8 units."""

    symbol: str
    base_asset: str
    quote_asset: str
    initial_price: int
    tick_size: int
    step_size: int

    @property
    def lower(self) -> str:
        return self.symbol.lower()


def _spec(symbol: str, base: str, quote: str, price: str, tick: str, step: str) -> SymbolSpec:
    from marketsim.units import parse8

    return SymbolSpec(symbol, base, quote, parse8(price), parse8(tick), parse8(step))


KNOWN: dict[str, SymbolSpec] = {
    s.symbol: s
    for s in (
        _spec("BTCUSDT", "BTC", "USDT", "66398.85", "0.01", "0.00001"),
        _spec("ETHUSDT", "ETH", "USDT", "3512.37", "0.01", "0.0001"),
        _spec("BNBUSDT", "BNB", "USDT", "598.3", "0.01", "0.001"),
        _spec("SOLUSDT", "SOL", "USDT", "152.41", "0.01", "0.001"),
        _spec("XRPUSDT", "XRP", "USDT", "0.5231", "0.0001", "0.1"),
        _spec("DOGEUSDT", "DOGE", "USDT", "0.15234", "0.00001", "1"),
        _spec("ADAUSDT", "ADA", "USDT", "0.4512", "0.0001", "0.1"),
        _spec("ETHBTC", "ETH", "BTC", "0.05291", "0.00001", "0.0001"),
        _spec("LTCUSDT", "LTC", "USDT", "81.23", "0.01", "0.001"),
        _spec("TRXUSDT", "TRX", "USDT", "0.1201", "0.0001", "0.1"),
    )
}

DEFAULT_SYMBOLS: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT")


def split_assets(symbol: str) -> tuple[str, str]:
    for quote in _QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    return symbol[:-3], symbol[-3:]


def spec_for(symbol: str) -> SymbolSpec:
    """The spec of a symbol: a realistic table entry, or one derived deterministically from the name."""
    symbol = symbol.upper()
    if not SYMBOL_RE.match(symbol):
        raise ValueError(f"invalid symbol {symbol!r}: 2-20 characters A-Z, 0-9")
    if symbol in KNOWN:
        return KNOWN[symbol]
    base, quote = split_assets(symbol)
    h = zlib.crc32(symbol.encode())
    # log-uniform price between 0.01 and 10,000, 4-5 significant tick digits
    price = 10 ** (-2 + 6 * (h % 10_000) / 10_000)
    exp = math.floor(math.log10(price)) - 4
    tick = max(1, round(10**exp * SCALE))
    step = max(1, round(10 ** max(-5, -exp - 4) * SCALE))
    price_units = max(tick, int(price * SCALE) // tick * tick)
    return SymbolSpec(symbol, base, quote, price_units, tick, step)


def parse_symbols(text: str) -> tuple[str, ...]:
    """Parse ``BTCUSDT,ethusdt`` into upper-case, de-duplicated symbols (order kept)."""
    out: list[str] = []
    for part in text.split(","):
        sym = part.strip().upper()
        if not sym:
            continue
        if not SYMBOL_RE.match(sym):
            raise ValueError(f"invalid symbol {part!r}")
        if sym not in out:
            out.append(sym)
    if not out:
        raise ValueError("no symbols given")
    return tuple(out)
