"""Trading-pair symbols: one validation rule shared by every service."""

from __future__ import annotations

import re

SYMBOL_PATTERN = r"\A[A-Za-z0-9]{2,20}\Z"
SYMBOL_RE = re.compile(SYMBOL_PATTERN)


class InvalidSymbol(ValueError):
    """A symbol that is not 2-20 ASCII letters or digits."""


def normalize_symbol(raw: str) -> str:
    """Validate and upper-case a symbol (``btcusdt`` -> ``BTCUSDT``)."""
    if not isinstance(raw, str) or not SYMBOL_RE.fullmatch(raw):
        shown = raw if isinstance(raw, str) and len(raw) <= 40 else f"{str(raw)[:40]}..."
        raise InvalidSymbol(f"invalid symbol {shown!r}: expected 2-20 ASCII letters or digits")
    return raw.upper()


def is_valid_symbol(raw: str) -> bool:
    return isinstance(raw, str) and SYMBOL_RE.fullmatch(raw) is not None
