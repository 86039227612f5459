"""Locust load for the query API: ``GET /price/{symbol}`` with a Zipf-like symbol mix.

Real traffic is skewed -- a few pairs (BTCUSDT, ETHUSDT) take most requests -- so symbols are
drawn with probability proportional to 1/rank**s over ``LOCUST_SYMBOLS`` symbols (default 1,000,
named like ``benchmarks/bench_query.py`` fills them: ``SYM0000USDT``...), and a share
(``LOCUST_UNKNOWN_SHARE``, default 5 %) asks for symbols that do not exist, which must come back
404 ``{"error": "price not available"}``; both outcomes count as successes, anything else fails.
Every read route is loaded: ``/prices`` with a handful of symbols, ``/candles`` (1m and rolled-up
intervals), ``/stats``, ``/trades/latest`` and ``/symbols``, and ``LOCUST_LIVE_CLIENTS`` live-push
clients (default 2) each hold an SSE stream (``/stream/prices``) for ``LOCUST_LIVE_HOLD_S``
(5 s) at a time; a stream that broke or brought no update counts as a failure.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:3000 --headless -u 64 -r 16 -t 60s
"""

from __future__ import annotations

import bisect
import itertools
import os
import random
import time

from locust import FastHttpUser, HttpUser, constant, task

N_SYMBOLS = int(os.environ.get("LOCUST_SYMBOLS", "1000"))
ZIPF_S = float(os.environ.get("LOCUST_ZIPF_S", "1.1"))
UNKNOWN_SHARE = float(os.environ.get("LOCUST_UNKNOWN_SHARE", "0.05"))
LIVE_CLIENTS = int(os.environ.get("LOCUST_LIVE_CLIENTS", "2"))
LIVE_HOLD_S = float(os.environ.get("LOCUST_LIVE_HOLD_S", "5"))

SYMBOLS = [f"SYM{i:04d}USDT" for i in range(N_SYMBOLS)]
_CUMULATIVE = list(itertools.accumulate(1.0 / (rank**ZIPF_S) for rank in range(1, N_SYMBOLS + 1)))


def zipf_symbol(rng: random.Random) -> str:
    """A symbol drawn with weight 1/rank**s (rank 1 = SYM0000USDT)."""
    x = rng.random() * _CUMULATIVE[-1]
    return SYMBOLS[bisect.bisect_left(_CUMULATIVE, x)]


class PriceReader(FastHttpUser):
    wait_time = constant(0)  # closed loop, like wrk: each user sends as fast as it gets answers

    def on_start(self) -> None:
        self.rng = random.Random()

    @task(20)
    def price(self) -> None:
        if self.rng.random() < UNKNOWN_SHARE:
            symbol = f"NOPE{self.rng.randrange(10**6):06d}"
            expected = 404
        else:
            symbol = zipf_symbol(self.rng)
            expected = 200
        with self.client.get(
            f"/price/{symbol}", name="/price/{symbol}", catch_response=True
        ) as resp:
            if resp.status_code != expected:
                resp.failure(f"expected {expected}, got {resp.status_code}")
            elif expected == 404 and resp.json() != {"error": "price not available"}:
                resp.failure("404 without the contract's body")
            else:
                resp.success()

    @task(1)
    def prices(self) -> None:
        symbols = ",".join({zipf_symbol(self.rng) for _ in range(5)})
        with self.client.get(
            f"/prices?symbols={symbols}", name="/prices", catch_response=True
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"got {resp.status_code}")
            else:
                resp.success()

    def _read(self, path: str, name: str) -> None:
        """A known symbol's view: 200, or 404 while the processors have not written it yet."""
        with self.client.get(path, name=name, catch_response=True) as resp:
            if resp.status_code not in (200, 404):
                resp.failure(f"got {resp.status_code}")
            else:
                resp.success()

    @task(3)
    def candles(self) -> None:
        interval = self.rng.choice(("1m", "1m", "5m", "1h"))
        self._read(
            f"/candles/{zipf_symbol(self.rng)}?interval={interval}&limit=30", "/candles/{symbol}"
        )

    @task(2)
    def stats(self) -> None:
        self._read(f"/stats/{zipf_symbol(self.rng)}", "/stats/{symbol}")

    @task(1)
    def latest_trade(self) -> None:
        self._read(f"/trades/latest/{zipf_symbol(self.rng)}", "/trades/latest/{symbol}")

    @task(1)
    def symbols(self) -> None:
        self._read("/symbols", "/symbols")


class LiveClient(HttpUser):
    """A live-push client: holds ``/stream/prices`` open for a while, counting the updates."""

    fixed_count = LIVE_CLIENTS
    wait_time = constant(0)

    def on_start(self) -> None:
        self.rng = random.Random()

    @task
    def stream(self) -> None:
        symbols = ",".join({zipf_symbol(self.rng) for _ in range(20)})
        started = time.perf_counter()
        updates = 0
        with self.client.get(
            f"/stream/prices?symbols={symbols}",
            name="/stream/prices",
            stream=True,
            catch_response=True,
            timeout=LIVE_HOLD_S + 10,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"got {resp.status_code}")
                return
            try:
                for line in resp.iter_lines():
                    if line.startswith(b"data:"):
                        updates += 1
                    if time.perf_counter() - started >= LIVE_HOLD_S:
                        break
            except Exception as exc:  # a broken stream is a failed request, never a crash
                resp.failure(f"stream broke after {updates} updates: {exc!r}")
                return
            # Updates flow whenever trades do; a stream that stays silent is a failure.
            if updates:
                resp.success()
            else:
                resp.failure(f"no update within {LIVE_HOLD_S:g} s")
