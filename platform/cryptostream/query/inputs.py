"""Parsing of user-supplied symbol lists: validated, upper-cased, de-duplicated, bounded.

Strict on purpose (no blanks, no empty items, at most ``limit`` items counting repeats): what
is accepted is exactly what the OpenAPI pattern :func:`symbol_list_pattern` documents, so
generated clients and the fuzz tests agree with the server.
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptostream.core.symbols import InvalidSymbol, normalize_symbol

SYMBOL_PATTERN = "^[A-Za-z0-9]{2,20}$"


def symbol_list_pattern(limit: int) -> str:
    return f"^[A-Za-z0-9]{{2,20}}(,[A-Za-z0-9]{{2,20}}){{0,{limit - 1}}}$"


def parse_symbols(parts: Iterable[object], limit: int) -> list[str]:
    """Validate each symbol; keep first-seen order; at least one and at most ``limit`` items."""
    out: dict[str, None] = {}
    for count, part in enumerate(parts, start=1):
        if not isinstance(part, str):
            raise InvalidSymbol("symbols must be strings")
        if count > limit:
            raise InvalidSymbol(f"symbols: at most {limit} symbols per request")
        out[normalize_symbol(part)] = None
    if not out:
        raise InvalidSymbol("symbols: give at least one symbol")
    return list(out)


def parse_symbol_list(raw: str, limit: int) -> list[str]:
    """``"btcusdt,ETHUSDT"`` -> ``["BTCUSDT", "ETHUSDT"]``."""
    return parse_symbols(raw.split(",") if raw else [], limit)
