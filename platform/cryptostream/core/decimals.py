"""Exact decimal arithmetic for the views, sized so that no schema-valid input can round.

A price or quantity has at most 20 integer and 20 fractional digits (core/trades.py), so a
notional (price x quantity) has at most 80 significant digits (< 10^40, 40 fractional digits),
and a sum of up to 2^63 of them (< 10^19 terms, ids are 63-bit) stays below 10^59 with 40
fractional digits: at most 99 significant digits. A precision of 100 therefore never rounds;
``Inexact`` stays trapped as the proof that it does not.
"""

from __future__ import annotations

import decimal

PRECISION = 100
EXACT = decimal.Context(prec=PRECISION, traps=[decimal.InvalidOperation, decimal.Inexact])


def fmt(value: decimal.Decimal) -> str:
    """Canonical decimal text: no exponent, no trailing fractional zeros."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def scaled_text(value: int, scale: int) -> str:
    """An integer at ``scale`` fractional digits as canonical text (what :func:`fmt` writes)."""
    digits = str(value).rjust(scale + 1, "0")
    whole, frac = digits[:-scale], digits[-scale:].rstrip("0")
    return f"{whole}.{frac}" if frac else whole


def canonical(text: str) -> str:
    """A plain decimal text (already validated) in :func:`fmt`'s canonical form."""
    whole, _, frac = text.partition(".")
    whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
    return f"{whole}.{frac}" if frac else whole
