"""The query service's one store error, apart from both readers that raise it (no import cycle)."""

from __future__ import annotations


class StoreUnavailable(RuntimeError):
    """Redis could not answer (down, restarting, timed out)."""
