"""Genuine trade texts for the benchmarks' synthetic trades (shared by the benchmarks).

How often real prices and quantities repeat is what the decode memos of the processor and of
ingest meet (``core/codec.py``, ``binance/frames.py``), so a benchmark that fed them a small pool
of texts would flatter them. :class:`TextWalk` walks the genuine trades of ``../shared/data`` in
their order, per symbol from its own starting point, with a whole-number shift per symbol and
per pass over the recordings: no two symbols, and no two passes, share a price text; every
repeat is one of real trading.
"""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import orjson

_HERE = Path(__file__).resolve()
# ../shared/data beside the checkout (a worktree under wt/<name> sits deeper: look up a few levels)
RECORDINGS: Path = next(
    (d / "shared" / "data" for d in _HERE.parents[1:5] if (d / "shared" / "data").is_dir()),
    _HERE.parents[2] / "shared" / "data",
)


def recorded_pairs(directory: Path = RECORDINGS) -> list[tuple[str, str]]:
    """(price, quantity) texts of the genuine trades in ``directory``, in order (none: [])."""
    pairs: list[tuple[str, str]] = []
    for path in sorted(directory.glob("hftbacktest_spot_*")):
        with gzip.open(path, "rb") as lines:
            for line in lines:
                if b"@trade" in line:
                    data = orjson.loads(line.split(b" ", 1)[1])["data"]
                    pairs.append((data["p"], data["q"]))
    return pairs


class TextWalk:
    def __init__(self, names: list[str], rng: random.Random) -> None:
        self.pairs = recorded_pairs()
        self.source = f"{len(self.pairs):,} genuine trades of {RECORDINGS}"
        if not self.pairs:  # no recordings: synthetic texts (they repeat less than real ones)
            self.source = "synthetic texts (no recordings found)"
            self.pairs = [
                (f"{rng.uniform(1, 70000):.2f}", f"{rng.uniform(0.001, 5):.5f}")
                for _ in range(20_000)
            ]
        self.index = {name: k for k, name in enumerate(names)}
        self.steps = {name: rng.randrange(len(self.pairs)) for name in names}

    def next(self, symbol: str) -> tuple[str, str]:
        """The symbol's next (price, quantity) texts."""
        step = self.steps[symbol] = self.steps[symbol] + 1
        passes, at = divmod(step, len(self.pairs))
        price, qty = self.pairs[at]
        whole, dot, frac = price.partition(".")
        shift = 100_000 * (self.index[symbol] + len(self.index) * passes)
        return f"{int(whole) + shift}{dot}{frac}", qty
