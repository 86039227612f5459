"""What Redis holds of each symbol's candles and totals, as far as this processor knows (sans-I/O).

Merging a batch's partials into the stored candles and totals is exact decimal arithmetic on
strings, and in Lua it was most of the apply script's cost (and so of Redis's CPU at a steady
rate, where every batch touches most symbols). The processor knows what it wrote: each call
carries, next to a partial, the stored spelling it expects and the merged spelling it computed
with exact integers, and the script writes the merged one only over exactly the expected text
(apply_batch.lua, "Expectations"). Anything this module gets wrong costs a merge in Lua, never a
wrong value: a stale expectation does not match, and the script merges the partial instead.

Calls are numbered as they are built. An expectation is optimistic: built while the previous
call is in flight, it assumes that call applies. A key this module does not know (a new
minute, a restart, another writer) is merged by the script, which returns what it wrote (a
seed); the calls built before that seed arrived merged their partials in Lua too, and the seed
folded with those partials is what Redis holds after them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from cryptostream.core.codec import SCALE
from cryptostream.core.decimals import canonical, scaled_text
from cryptostream.processor.batch import (
    _BASE,
    _CLOSE,
    _COUNT,
    _FIRST,
    _HIGH,
    _HIGH_TEXT,
    _LAST,
    _LOW,
    _LOW_TEXT,
    _OPEN,
    _QUOTE,
)

MAX_KEYS = 100_000  # per table; cleared when full (bounded memory, one round of Lua merges)
MAX_PENDING = 8  # partials kept for a key waiting for its seed; more: forget the key

Candle = list[Any]
Totals = tuple[int, int, int]  # trades, base (at SCALE), quote (at 2 * SCALE)


@dataclass(slots=True)
class _Entry:
    last: int  # the last call that wrote the key (built; perhaps not yet answered)
    state: Any = None  # what Redis holds once `last` applied; None while waiting for a seed
    spelled: str | tuple[str, ...] = ""  # the state as Redis stores it: the next expectation
    since: int = 0  # waiting: the call whose seed it waits for...
    partials: list[Any] = field(default_factory=list)  # ...and the partials of later calls


class KnownViews:
    """Expectations for the apply script, and the seeds of its replies folded back in."""

    def __init__(self, max_keys: int = MAX_KEYS) -> None:
        self.max_keys = max_keys
        self.calls = 0
        self.candles: dict[tuple[str, int], _Entry] = {}
        self.totals: dict[str, _Entry] = {}
        self.stats = {"expected": 0, "seeded": 0}

    def next_call(self) -> int:
        self.calls += 1
        return self.calls

    def clear(self) -> None:
        """Forget everything (a refused or unanswered call, a rebalance: start from seeds)."""
        self.candles.clear()
        self.totals.clear()

    def candle(
        self, call: int, symbol: str, minute: int, partial: Candle
    ) -> tuple[str, str] | None:
        """(expected member, merged member) for one candle partial of ``call`` (texts
        canonical), or None (the script merges it)."""
        pair: tuple[str, str] | None = self._next(
            self.candles, (symbol, minute), call, partial, merge_candle, _member
        )
        return pair

    def total(
        self, call: int, symbol: str, totals: Totals
    ) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """(expected, merged) (trades, base, quote) texts for ``call``'s totals, or None."""
        pair: tuple[tuple[str, ...], tuple[str, ...]] | None = self._next(
            self.totals, symbol, call, totals, merge_totals, _totals_texts
        )
        return pair

    def settle(self, call: int, names: Sequence[str], reply: Sequence[Any]) -> None:
        """Fold the seeds of an applied call's reply (``{1, n, candle_seeds, totals_seeds}``,
        symbols by their 1-based index in ``names``) into what is known."""
        candle_seeds = reply[2] if len(reply) > 2 else []
        totals_seeds = reply[3] if len(reply) > 3 else []
        for i in range(0, len(candle_seeds), 2):
            text = _str(candle_seeds[i + 1])
            parsed = parse_member(text)
            if parsed is not None:
                minute, state = parsed
                key = (names[int(candle_seeds[i]) - 1], minute)
                self._seed(self.candles, key, call, state, text, merge_candle, _member)
        for i in range(0, len(totals_seeds), 4):
            texts = tuple(_str(x) for x in totals_seeds[i + 1 : i + 4])
            totals = parse_totals(texts)
            if totals is not None:
                symbol = names[int(totals_seeds[i]) - 1]
                self._seed(self.totals, symbol, call, totals, texts, merge_totals, _totals_texts)

    def _next(
        self,
        table: dict[Any, _Entry],
        key: Any,
        call: int,
        partial: Any,
        merge: Callable[[Any, Any], Any],
        spell: Callable[[Any, Any], Any],
    ) -> Any:
        entry = table.get(key)
        if entry is None:
            if len(table) >= self.max_keys:
                table.clear()
            table[key] = _Entry(call, since=call)
            return None
        if entry.state is None:  # waiting for a seed: the script merges this one too
            entry.last = call
            entry.partials.append(partial)
            if len(entry.partials) > MAX_PENDING:  # its seed is not coming: start again
                table[key] = _Entry(call, since=call)
            return None
        state = merge(entry.state, partial)
        expected, entry.spelled = entry.spelled, spell(key, state)
        entry.state, entry.last = state, call
        self.stats["expected"] += 1
        return expected, entry.spelled

    def _seed(
        self,
        table: dict[Any, _Entry],
        key: Any,
        call: int,
        state: Any,
        spelled: Any,
        merge: Callable[[Any, Any], Any],
        spell: Callable[[Any, Any], Any],
    ) -> None:
        entry = table.get(key)
        if entry is None:
            return
        if entry.last == call:  # no later call built: Redis holds exactly the seed
            entry.state, entry.spelled, entry.partials = state, spelled, []
        elif entry.state is None and entry.since == call:  # later calls merged in Lua too
            for partial in entry.partials:
                state = merge(state, partial)
            entry.state, entry.spelled, entry.partials = state, spell(key, state), []
        else:  # a later call's expectation: if it was wrong, its own seed comes next
            return
        self.stats["seeded"] += 1


def merge_candle(stored: Candle, partial: Candle) -> Candle:
    """``partial`` merged into ``stored`` (both with canonical texts) as apply_batch.lua does
    (and core/views.py Candle.merge): open and close by trade id (a tie keeps the stored open
    and takes the partial's close), high and low by value."""
    if partial[_FIRST] < stored[_FIRST]:
        first, open_ = partial[_FIRST], partial[_OPEN]
    else:
        first, open_ = stored[_FIRST], stored[_OPEN]
    if partial[_LAST] < stored[_LAST]:
        last, close = stored[_LAST], stored[_CLOSE]
    else:
        last, close = partial[_LAST], partial[_CLOSE]
    if stored[_HIGH] > partial[_HIGH]:
        high, high_text = stored[_HIGH], stored[_HIGH_TEXT]
    else:
        high, high_text = partial[_HIGH], partial[_HIGH_TEXT]
    if stored[_LOW] < partial[_LOW]:
        low, low_text = stored[_LOW], stored[_LOW_TEXT]
    else:
        low, low_text = partial[_LOW], partial[_LOW_TEXT]
    return [
        high,
        low,
        stored[_BASE] + partial[_BASE],
        stored[_QUOTE] + partial[_QUOTE],
        stored[_COUNT] + partial[_COUNT],
        first,
        open_,
        last,
        close,
        high_text,
        low_text,
    ]


def merge_totals(stored: Totals, batch: Totals) -> Totals:
    return stored[0] + batch[0], stored[1] + batch[1], stored[2] + batch[2]


def _member(key: tuple[str, int], c: Candle) -> str:
    """The stored spelling of a candle, byte for byte as apply_batch.lua's member() writes it."""
    return (
        f'{{"t":{key[1]},"o":"{c[_OPEN]}","h":"{c[_HIGH_TEXT]}","l":"{c[_LOW_TEXT]}",'
        f'"c":"{c[_CLOSE]}","v":"{scaled_text(c[_BASE], SCALE)}","qv":"{scaled_text(c[_QUOTE], 2 * SCALE)}",'
        f'"n":{c[_COUNT]},"ft":{c[_FIRST]},"lt":{c[_LAST]}}}'
    )


def _totals_texts(_key: str, totals: Totals) -> tuple[str, str, str]:
    return str(totals[0]), scaled_text(totals[1], SCALE), scaled_text(totals[2], 2 * SCALE)


def parse_member(member: str) -> tuple[int, Candle] | None:
    """A stored member as (minute, candle); None if it is not one this module can take."""
    try:
        doc = orjson.loads(member)
        high, low = scaled_at(doc["h"], SCALE), scaled_at(doc["l"], SCALE)
        base, quote = scaled_at(doc["v"], SCALE), scaled_at(doc["qv"], 2 * SCALE)
        minute, count, first, last = (int(doc[k]) for k in ("t", "n", "ft", "lt"))
        open_, close = doc["o"], doc["c"]
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    if None in (high, low, base, quote) or not (isinstance(open_, str) and isinstance(close, str)):
        return None
    state = [high, low, base, quote, count, first, open_, last, close, doc["h"], doc["l"]]
    return minute, state


def parse_totals(texts: Sequence[str]) -> Totals | None:
    if len(texts) != 3 or not texts[0].isdigit():
        return None
    base, quote = scaled_at(texts[1], SCALE), scaled_at(texts[2], 2 * SCALE)
    if base is None or quote is None:
        return None
    return int(texts[0]), base, quote


def scaled_at(value: object, scale: int) -> int | None:
    """A canonical non-negative decimal text as an integer at ``scale`` fractional digits;
    None for anything else (then nothing is expected of that key)."""
    if not isinstance(value, str):
        return None
    whole, _, frac = value.partition(".")
    if not (whole.isascii() and whole.isdigit()) or len(frac) > scale:
        return None
    if frac and not (frac.isascii() and frac.isdigit()):
        return None
    if canonical(value) != value:  # (a spelling the merged text would not reproduce)
        return None
    return int(whole + frac.ljust(scale, "0"))


def _str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
