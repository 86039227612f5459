"""Direct Kafka load generator: the ingest's records at a fixed open-model arrival rate.

Writes exactly what ``csp ingest`` writes (``core.codec`` values, key = symbol, the same
producer settings), so the processors cannot tell the difference, at rates beyond what one
WebSocket path delivers. Runs as its own process (``python -m cryptostream_lab.harness.loadgen``)
so it never competes for the harness's GIL; the harness passes the wall-clock start time, which
fixes every record's intended send time in advance.

Each record's event time is its intended send time (ms): the processors' own latency histogram
then measures from the schedule too. The trade time is deterministic (see ``SyntheticTrades``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import orjson

from cryptostream.config import Settings
from cryptostream.core.codec import encode_key, encode_trade
from cryptostream.kafka_clients import make_producer
from cryptostream_lab.harness.schedule import (
    OpenSchedule,
    SyntheticTrades,
    run_open_loop,
    symbol_names,
    symbol_sequence,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--topic", required=True)
    p.add_argument("--rate", type=float, required=True, help="records/s")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--symbols", type=int, required=True)
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--id-base", type=int, default=0)
    p.add_argument("--start-wall", type=float, required=True, help="epoch seconds of record 0")
    p.add_argument("--out", type=Path, required=True, help="JSON summary written at the end")
    args = p.parse_args(argv)

    settings = Settings()  # CSP_KAFKA_BOOTSTRAP etc. from the environment, like the services
    producer = make_producer(settings, **{"linger.ms": 2})
    names = symbol_names(args.symbols)
    sequence = symbol_sequence(args.count, args.symbols, args.zipf, args.seed)
    trades = SyntheticTrades(names, sequence, args.rate, args.seed, id_base=args.id_base)
    start_mono = time.monotonic() + (args.start_wall - time.time())
    schedule = OpenSchedule(args.rate, args.count, start_mono)
    start_ms = args.start_wall * 1000
    topic = args.topic
    errors = 0

    def delivered(err: object, _msg: object) -> None:
        nonlocal errors
        if err is not None:
            errors += 1

    def send(i: int) -> None:
        trade = trades.trade(i, int(start_ms + i * 1000 / args.rate))
        value = encode_trade(trade, int(time.time() * 1e6))
        while True:
            try:
                producer.produce(topic, value, encode_key(trade.symbol), on_delivery=delivered)
                return
            except BufferError:  # the local queue is full: wait for deliveries, stay on the books
                producer.poll(0.01)

    late_start = time.monotonic() - start_mono
    result = run_open_loop(schedule, send, time.monotonic, time.sleep, lambda: producer.poll(0))
    unsent = producer.flush(60)
    elapsed = time.monotonic() - start_mono
    args.out.write_bytes(
        orjson.dumps(
            {
                "sent": result.sent,
                "errors": errors,
                "unflushed": unsent,
                "elapsed_s": elapsed,
                "late_start_s": max(0.0, late_start),
                "max_behind_s": result.max_behind_s,
                "behind_over_10ms": result.behind_over_10ms,
                "achieved_rate": result.sent / max(elapsed, 1e-9),
            }
        )
    )
    return 0 if errors == 0 and unsent == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
