"""Quiet-symbol checks: notice trades lost just before a symbol goes quiet (sans-I/O).

A gap is normally revealed by the symbol's next trade. A trade lost at the end of a burst would
stay unnoticed until the symbol trades again: hours for an illiquid symbol, never at the end of a
replay. So a symbol whose last trade id has not moved for ``quiet_s`` is checked once against the
REST API's newest id; while it stays quiet, the checks back off (the interval doubles up to
``max_interval_s``), and at most ``max_per_step`` symbols are checked per step, so thousands of
quiet symbols cost a trickle of light requests (``aggTrades?limit=1``: weight 2 on Binance).

Finding a newer id than the tracker's last is not yet a gap: the trade may still be in flight on
the WebSocket. The caller opens a *pending* gap, which the usual grace period settles.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cryptostream.binance.rest import newest_id, newest_request

__all__ = ["TailWatch", "newest_id", "newest_request"]


@dataclass(slots=True)
class _Quiet:
    last: int  # the id last seen when this entry was (re)started
    next_at: float
    interval: float


class TailWatch:
    def __init__(self, quiet_s: float, max_interval_s: float = 3600.0, max_per_step: int = 5):
        self.quiet_s = quiet_s
        self.max_interval_s = max(max_interval_s, quiet_s)
        self.max_per_step = max_per_step
        self._quiet: dict[str, _Quiet] = {}

    def due(self, lasts: Mapping[str, int | None], now: float) -> list[str]:
        """Symbols to check now, given each symbol's last id seen (``None``: none seen yet).

        A symbol whose id moved since the last call starts a fresh quiet period; one that is due
        but beyond this step's budget stays due for the next step.
        """
        out: list[str] = []
        for symbol, last in lasts.items():
            if last is None:
                continue
            quiet = self._quiet.get(symbol)
            if quiet is None or quiet.last != last:
                self._quiet[symbol] = _Quiet(last, now + self.quiet_s, self.quiet_s)
            elif now >= quiet.next_at and len(out) < self.max_per_step:
                quiet.interval = min(quiet.interval * 2, self.max_interval_s)
                quiet.next_at = now + quiet.interval
                out.append(symbol)
        return out
