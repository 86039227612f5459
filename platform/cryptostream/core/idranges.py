"""Inclusive ranges of trade ids (pure): the one arithmetic ingest's resume plan and the
reliability checker's gap audit share."""

from __future__ import annotations

Range = tuple[int, int]  # (first id, last id), inclusive


def subtract(ranges: list[Range], cut: Range) -> list[Range]:
    """``ranges`` without the ids of ``cut``."""
    lo, hi = cut
    out: list[Range] = []
    for a, b in ranges:
        if b < lo or a > hi:
            out.append((a, b))
            continue
        if a < lo:
            out.append((a, lo - 1))
        if b > hi:
            out.append((hi + 1, b))
    return out
