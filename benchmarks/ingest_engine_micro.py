"""The ingest engine alone: CPU µs per frame of ``TradeEngine.on_frames`` (no I/O).

Combined-stream trade frames of 8 symbols, consecutive ids, the genuine recordings' price and
quantity texts (``recorded.py``: repeats as often as in real trading), in reads of 1 to 256
frames (a read's frames share one call). Run by ``bench_ingest.py`` in a subprocess per tree
(``PYTHONPATH`` chooses the code), so an earlier commit's engine is measured the same way;
prints one JSON object ``{read size: µs per frame}`` (the best of ``--repeat`` passes).
"""

from __future__ import annotations

import argparse
import random
import time

import orjson

from cryptostream.ingest.engine import TradeEngine
from recorded import TextWalk

SYMBOLS = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT", "ADAUSDT", "ETHBTC"]
READ_SIZES = (1, 4, 16, 64, 256)


def reads(size: int, frames: int) -> list[list[bytes]]:
    next_id = dict.fromkeys(SYMBOLS, 1)
    texts = TextWalk(SYMBOLS, random.Random(size))
    out: list[list[bytes]] = []
    k = 0
    for _ in range(frames // size):
        read = []
        for _ in range(size):
            symbol = SYMBOLS[k % len(SYMBOLS)]
            price, qty = texts.next(symbol)
            k += 1
            payload = {
                "e": "trade",
                "E": 1718000000001 + k,
                "s": symbol,
                "t": next_id[symbol],
                "p": price,
                "q": qty,
                "T": 1718000000000 + k,
                "m": bool(k & 1),
                "M": True,
            }
            read.append(orjson.dumps({"stream": f"{symbol.lower()}@trade", "data": payload}))
            next_id[symbol] += 1
        out.append(read)
    return out


def measure(size: int, frames: int) -> float:
    engine = TradeEngine(
        SYMBOLS,
        kind="trade",
        grace_s=5.0,
        bound=1 << 40,
        buffer_timeout_s=5.0,
        max_frame=65536,
        gap_topic="gaps",
        dlq_topic="dlq",
    )
    engine.connected(1, "ws://bench")
    work = reads(size, frames)
    t0 = time.process_time()
    for read in work:
        engine.on_frames(read, 1_718_000_000_001_234, 1, 1.0)
    elapsed = time.process_time() - t0
    if engine.stats.trades != frames // size * size or engine.stats.duplicates:
        raise RuntimeError(f"unexpected engine outcome: {engine.stats}")
    return elapsed / (frames // size * size) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    ns = parser.parse_args()
    result = {
        str(size): round(min(measure(size, ns.frames) for _ in range(ns.repeat)), 3)
        for size in READ_SIZES
    }
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
