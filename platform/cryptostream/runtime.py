"""Interpreter settings of the long-running services (tail latency)."""

from __future__ import annotations

import gc
import sys

# How long a thread may hold the GIL while another waits for it (CPython's default: 5 ms).
SWITCH_INTERVAL_S = 0.0005


def tune_gc() -> None:
    """Fewer, cheaper collections: the hot paths allocate short-lived objects only.

    Freezing the start-up heap keeps every collection from re-scanning the imported modules
    (a full collection of the processor's heap paused it for 30-66 ms at 10,000 trades/s, the
    latency tail of ``nox -s bench_processor``), and a larger young-generation threshold turns
    many small pauses into few. Call it once the service is set up, before its loop.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


def tune_thread_switching() -> None:
    """Hand the GIL over sooner, for a service whose threads pass work to each other.

    The processor's apply thread waits on Redis with the GIL released; when the reply arrives
    it needs the GIL back from the main thread, which is folding the next batch and, by default,
    keeps it up to 5 ms. At 10,000 trades/s that wait was a visible part of event -> visible
    latency (p99 55 -> 38 ms, every one of four alternating rounds better, README).
    """
    sys.setswitchinterval(SWITCH_INTERVAL_S)
