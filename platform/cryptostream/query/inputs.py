"""Parsing of user-supplied symbol lists: validated, upper-cased, de-duplicated, bounded."""

from __future__ import annotations

from collections.abc import Iterable

from cryptostream.core.symbols import InvalidSymbol, normalize_symbol


def parse_symbols(parts: Iterable[object], limit: int) -> list[str]:
    """Validate each symbol; keep first-seen order; at least one and at most ``limit``."""
    out: dict[str, None] = {}
    for part in parts:
        if not isinstance(part, str):
            raise InvalidSymbol("symbols must be strings")
        part = part.strip()
        if part:
            out[normalize_symbol(part)] = None
            if len(out) > limit:
                raise InvalidSymbol(f"symbols: at most {limit} symbols per request")
    if not out:
        raise InvalidSymbol("symbols: give at least one symbol, comma-separated")
    return list(out)


def parse_symbol_list(raw: str, limit: int) -> list[str]:
    """``"btcusdt, ETHUSDT"`` -> ``["BTCUSDT", "ETHUSDT"]``."""
    return parse_symbols(raw.split(","), limit)
