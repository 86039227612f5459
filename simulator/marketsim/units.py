"""Fixed-point decimal helpers: amounts are ints in units of 1e-8 (Binance's 8 decimals).

Pure, no I/O. Prices and quantities never pass through floats on their way to a payload.
"""

from __future__ import annotations

SCALE = 100_000_000
DECIMALS = 8


def fmt8(units: int) -> str:
    """Format an amount in 1e-8 units as Binance does: always 8 decimals, e.g. ``66398.85000000``."""
    if units < 0:
        return "-" + fmt8(-units)
    whole, frac = divmod(units, SCALE)
    return f"{whole}.{frac:08d}"


def parse8(text: str) -> int:
    """Parse a decimal string into 1e-8 units (extra digits beyond 8 decimals are truncated)."""
    # Fast path for the plain "123.45" that archives and payloads hold (replay's hottest call).
    whole, _, frac = text.partition(".")
    if whole.isascii() and whole.isdigit() and (not frac or (frac.isascii() and frac.isdigit())):
        return int(whole) * SCALE + int(frac[:DECIMALS].ljust(DECIMALS, "0"))
    return _parse8_general(text)


def _parse8_general(text: str) -> int:
    text = text.strip()
    neg = text.startswith("-")
    if neg or text.startswith("+"):
        text = text[1:]
    if "e" in text or "E" in text:
        raise ValueError(f"exponent notation not supported: {text!r}")
    whole, _, frac = text.partition(".")
    if not whole and not frac:
        raise ValueError("empty decimal")
    if (whole and not whole.isdigit()) or (frac and not frac.isdigit()):
        raise ValueError(f"not a decimal: {text!r}")
    value = int(whole or "0") * SCALE + int((frac + "00000000")[:DECIMALS])
    return -value if neg else value


def fmt_product(price_units: int, qty_units: int) -> str:
    """Format price*qty (both 1e-8 units) with 8 decimals, truncated (quote volume)."""
    return fmt8(price_units * qty_units // SCALE)
