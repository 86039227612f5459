"""Locust load for the query API: ``GET /price/{symbol}`` with a Zipf-like symbol mix.

Real traffic is skewed -- a few pairs (BTCUSDT, ETHUSDT) take most requests -- so symbols are
drawn with probability proportional to 1/rank**s over ``LOCUST_SYMBOLS`` symbols (default 1,000,
named like ``benchmarks/bench_query.py`` fills them: ``SYM0000USDT``...), and a share
(``LOCUST_UNKNOWN_SHARE``, default 5 %) asks for symbols that do not exist, which must come back
404 ``{"error": "price not available"}``; both outcomes count as successes, anything else fails.
A small share of requests also hits ``/prices`` with a handful of symbols.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:3000 --headless -u 64 -r 16 -t 60s
"""

from __future__ import annotations

import bisect
import itertools
import os
import random

from locust import FastHttpUser, constant, task

N_SYMBOLS = int(os.environ.get("LOCUST_SYMBOLS", "1000"))
ZIPF_S = float(os.environ.get("LOCUST_ZIPF_S", "1.1"))
UNKNOWN_SHARE = float(os.environ.get("LOCUST_UNKNOWN_SHARE", "0.05"))

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
