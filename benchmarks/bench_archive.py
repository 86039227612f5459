"""Archive benchmark: one sink's drain rate, the one-day candle query, decimal128 vs strings.

1. **Sink**: ``--trades`` (1,000,000) trades pre-filled over 8 partitions and ``--symbols``
   Zipf-weighted symbols on the local broker; one :class:`ArchiveSink` (the code ``csp archive``
   runs, in this process) drains them into an empty archive folder with the default settings.
   Rate = trades / (last flush durable - first record fetched); the time inside
   ``ArchiveStore.commit`` (Arrow, Parquet, fsync) is reported apart.
2. **Query**: ``--query-trades`` (1,000,000) trades of one symbol in one UTC day, archived by the
   sink's own core and store; the day's 1440 one-minute candles through ``History.candles``
   (first call on a fresh object, then the median of repeats) and through the real query API
   (``GET /candles/{symbol}?interval=1m&from=&to=``, uvicorn, Redis of the local stack).
2b. **Query on S3** (``--s3``): the same one-day archive written through the object store's
   commit protocol (archive/objects.py) to moto's S3 server on 127.0.0.1 (a pure-Python server
   in this process: its speed, not a real store's, bounds these numbers), then the same
   ``History.candles`` timing over the objects (Arrow datasets read by DuckDB).
3. **Column types**: the same 1M rows with price/quantity as decimal128(38, 8) and as decimal
   strings: file size, DuckDB's candle query, pandas (pyarrow ``to_pandas``) and Polars reads,
   each with an exactness check of the quantity sum.

Run it as ``flock /tmp/csp-heavy.lock nox -s bench_archive`` (writes reports/bench-archive.json).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import uvicorn
from confluent_kafka import Consumer, Producer, TopicPartition

from cryptostream.archive.core import DAY_MS, SinkCore
from cryptostream.archive.objects import ObjectRoot, ObjectStore, object_root
from cryptostream.archive.service import ArchiveSink
from cryptostream.archive.store import ArchiveStore, Store
from cryptostream.config import Settings
from cryptostream.core.codec import encode_trade
from cryptostream.core.decimals import EXACT
from cryptostream.core.trades import Trade
from cryptostream.history.queries import History
from cryptostream.kafka_clients import producer_config
from cryptostream.query.app import QueryApp
from cryptostream.query.server import uvicorn_config
from cryptostream.stack.local import LocalStack
from cryptostream.stack.supervisor import free_port
from cryptostream.topics import create_topics, required_topics

BASE = 1_718_000_000_000 - 1_718_000_000_000 % DAY_MS  # a UTC midnight


def pools(seed: int) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    return (
        [f"{rng.uniform(1, 70000):.8f}" for _ in range(997)],
        [f"{rng.uniform(0.001, 5):.8f}" for _ in range(1009)],
    )


def prefill(settings: Settings, total: int, names: list[str], odd_every: int = 0) -> None:
    """``odd_every``: one trade in that many has a price of 10 fractional digits (more than
    the default CSP_ARCHIVE_SCALE of 8)."""
    rng = random.Random(1)
    prices, qtys = pools(1)
    producer = Producer(producer_config(settings, **{"linger.ms": 20}))
    ids = dict.fromkeys(names, 0)
    chosen = rng.choices(names, [1 / (i + 1) for i in range(len(names))], k=total)
    t0 = time.monotonic()
    for i, symbol in enumerate(chosen):
        ids[symbol] += 1
        t = BASE + i * (DAY_MS // total)
        price = prices[i % 997]
        if odd_every and i % odd_every == 0:
            price += "17"
        trade = Trade(symbol, ids[symbol], price, qtys[i % 1009], t, t, bool(i & 1))
        while True:
            try:
                producer.produce(settings.topic, encode_trade(trade, t * 1000), symbol.encode())
                break
            except BufferError:
                producer.poll(0.05)
        if i % 20000 == 0:
            producer.poll(0)
    assert producer.flush(120) == 0
    print(f"prefilled {total:,} trades in {time.monotonic() - t0:.1f}s", flush=True)


def end_offsets(settings: Settings) -> int:
    consumer = Consumer(settings.kafka.librdkafka({"group.id": "probe"}))
    try:
        parts = consumer.list_topics(settings.topic, timeout=10).topics[settings.topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(settings.topic, p), timeout=10)[1]
            for p in parts
        )
    finally:
        consumer.close()


def drain(settings: Settings, total: int) -> dict[str, float]:
    sink = ArchiveSink(settings)
    commit_s = 0.0
    original = sink.store.commit

    def timed_commit(flush: Any) -> Any:
        nonlocal commit_s
        t = time.perf_counter()
        try:
            return original(flush)
        finally:
            commit_s += time.perf_counter() - t

    sink.store.commit = timed_commit  # type: ignore[method-assign]
    sink.consumer.subscribe(
        [settings.topic],
        on_assign=sink._on_assign,
        on_revoke=sink._on_revoke,
        on_lost=sink._on_lost,
    )
    started: float | None = None
    deadline = time.monotonic() + 600
    while sink.stats["records"] < total and time.monotonic() < deadline:
        sink.step(0.5)
        if started is None and sink.stats["records"]:
            started = time.perf_counter()
    if hasattr(sink, "flush_all"):
        sink.flush_all()
    else:  # a --before tree from before the depth lane
        for partition in sink.core.due(time.monotonic(), everything=True):
            sink._flush(partition)  # type: ignore[call-arg]
    ended = time.perf_counter()
    sink.consumer.close()
    unrepresentable = sink.store.unrepresentable
    assert started is not None and sink.stats["records"] == total, sink.stats
    elapsed = ended - started
    out = {
        "trades": total,
        "seconds": round(elapsed, 3),
        "trades_per_s": round(total / elapsed),
        "commit_seconds": round(commit_s, 3),
        "files": sink.stats["files"],
        "flushes": sink.stats["flushes"],
        "archived": sink.stats["archived"] - unrepresentable,
        "not_archived": unrepresentable,
    }
    print(f"sink drain: {out}", flush=True)
    return out


def drain_in(tree: Path, settings: Settings, total: int, tag: str) -> dict[str, Any]:
    """:func:`drain` in a fresh process importing ``cryptostream`` from ``tree`` (this one's or
    a ``--before`` tree), a fresh consumer group and an empty archive folder."""
    archive = settings.run_dir / f"archive-{tag}"
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "CSP_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "CSP_TOPIC": settings.topic,
        "CSP_ARCHIVE_DIR": str(archive),
        "CSP_ARCHIVE_GROUP_ID": f"bench-{tag}",
        "CSP_RUN_DIR": str(settings.run_dir),
    }
    argv = [sys.executable, __file__, "--drain-only", str(total)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"drain {tag} failed: {done.stderr[-2000:]}")
    out: dict[str, Any] = orjson.loads(done.stdout.strip().splitlines()[-1])
    shutil.rmtree(archive, ignore_errors=True)
    print(f"  {tag}: {out}", flush=True)
    return out


def compare_trees(
    settings: Settings, before: Path, after: Path, total: int, rounds: int
) -> dict[str, Any]:
    """Before/after in one run, on the same prefilled topic: rounds alternate (and rotate
    which tree goes first), each a fresh process draining every trade."""
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for r in range(rounds):
        order = [("before", before), ("after", after)]
        for name, tree in order if r % 2 == 0 else order[::-1]:
            runs[name].append(drain_in(tree, settings, total, f"{settings.topic}-{name}-{r}"))
    med = {k: statistics.median(x["trades_per_s"] for x in v) for k, v in runs.items()}
    return {
        "topic": settings.topic,
        "runs": runs,
        "median_trades_per_s": med,
        "after_over_before": round(med["after"] / med["before"], 3),
        "archived": {k: v[0]["archived"] for k, v in runs.items()},
        "not_archived": {k: v[0]["not_archived"] for k, v in runs.items()},
    }


def one_day_archive(root: Path | ObjectRoot, total: int, symbol: str) -> None:
    prices, qtys = pools(2)
    core = SinkCore(200_000, 3600.0)  # the default CSP_ARCHIVE_FLUSH_ROWS
    store: Store
    if isinstance(root, ObjectRoot):
        store = ObjectStore(root, "raw.trades", 8, 262_144)
    else:
        store = ArchiveStore(root, "raw.trades", 8, 262_144)
    step = DAY_MS / total
    for i in range(total):
        t = BASE + int(i * step)
        trade = Trade(symbol, i + 1, prices[i % 997], qtys[i % 1009], t, t, bool(i & 1))
        core.add(0, i, encode_trade(trade, t * 1000), 0.0)
        for p in core.due(0.0):
            store.commit(core.take(p))
    for p in core.due(0.0, everything=True):
        store.commit(core.take(p))


def time_query(root: Path | ObjectRoot, symbol: str, repeats: int) -> dict[str, Any]:
    t = time.perf_counter()
    history = History(root)
    candles, bad = history.candles(symbol, BASE, BASE + DAY_MS)
    first_ms = (time.perf_counter() - t) * 1000
    assert len(candles) == 1440 and not bad and sum(c.trades for c in candles)
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        history.candles(symbol, BASE, BASE + DAY_MS)
        runs.append((time.perf_counter() - t) * 1000)
    out = {
        "first_ms": round(first_ms, 1),
        "median_ms": round(statistics.median(runs), 1),
        "max_ms": round(max(runs), 1),
        "candles": len(candles),
        "trades": sum(c.trades for c in candles),
    }
    print(f"History.candles, one day of 1m: {out}", flush=True)
    return out


def query_s3(total: int, symbol: str, repeats: int) -> dict[str, Any]:
    import logging

    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        pafs.S3FileSystem(
            access_key="bench",
            secret_key="bench",
            scheme="http",
            endpoint_override=f"{host}:{port}",
            allow_bucket_creation=True,
        ).create_dir("bench")
        root = object_root(
            "s3://bench/archive",
            endpoint=f"http://{host}:{port}",
            access_key_id="bench",
            secret_access_key="bench",
        )
        t0 = time.perf_counter()
        one_day_archive(root, total, symbol)
        write_s = time.perf_counter() - t0
        out = time_query(root, symbol, repeats)
    finally:
        server.stop()
    out = {"server": "moto ThreadedMotoServer (in process)", "write_s": round(write_s, 2), **out}
    print(f"on S3 (moto): {out}", flush=True)
    return out


def time_http(settings: Settings, symbol: str, repeats: int) -> dict[str, Any]:
    config = uvicorn_config(settings, workers=1)
    assert isinstance(config.app, QueryApp)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{settings.query_port}/candles/{symbol}"
    params = {"interval": "1m", "from": BASE, "to": BASE + DAY_MS}
    runs = []
    try:
        with httpx.Client(timeout=30) as client:
            for i in range(repeats + 1):
                t = time.perf_counter()
                reply = client.get(url, params=params)
                elapsed = (time.perf_counter() - t) * 1000
                assert reply.status_code == 200 and len(reply.json()["candles"]) == 1440
                if i:
                    runs.append(elapsed)
                else:
                    first = elapsed
    finally:
        server.should_exit = True
        thread.join(10)
    out = {
        "first_ms": round(first, 1),
        "median_ms": round(statistics.median(runs), 1),
        "max_ms": round(max(runs), 1),
    }
    print(f"GET /candles one day of 1m over HTTP: {out}", flush=True)
    return out


def column_types(root: Path, workdir: Path) -> dict[str, Any]:
    """decimal128(38, 8) against decimal strings, on the same rows."""
    files = sorted(str(p) for p in root.glob("date=*/symbol=*/*.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files])
    truth = Decimal(0)
    for q in table.column("quantity").to_pylist():
        truth = EXACT.add(truth, q)
    as_text = table.set_column(1, "price", table.column("price").cast(pa.string())).set_column(
        2, "quantity", table.column("quantity").cast(pa.string())
    )
    out: dict[str, Any] = {"rows": table.num_rows}
    for name, t, dec in (("decimal128", table, "price"), ("string", as_text, None)):
        path = workdir / f"types-{name}.parquet"
        pq.write_table(t, path, compression="zstd", row_group_size=262_144)
        res: dict[str, Any] = {"bytes": path.stat().st_size}
        p, q = (
            ("price", "quantity")
            if dec
            else ("CAST(price AS DECIMAL(38,8))", "CAST(quantity AS DECIMAL(38,8))")
        )
        sql = (
            f"SELECT trade_time - trade_time % 60000 AS t, arg_min({p}, trade_id), max({p}), "
            f"min({p}), arg_max({p}, trade_id), sum({q}), sum({p} * {q}), count(*) "
            f"FROM read_parquet('{path}') GROUP BY 1"
        )
        con = duckdb.connect()
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            con.execute(sql).fetchall()
            runs.append((time.perf_counter() - t0) * 1000)
        res["duckdb_candles_ms"] = round(statistics.median(runs), 1)
        total = con.execute(f"SELECT sum({q}) FROM read_parquet('{path}')").fetchone()
        res["duckdb_sum_exact"] = total is not None and Decimal(total[0]) == truth
        t0 = time.perf_counter()
        frame = pq.read_table(path).to_pandas()
        res["pandas_read_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        res["pandas_dtype"] = str(frame["quantity"].dtype)
        t0 = time.perf_counter()
        acc = Decimal(0)
        for v in frame["quantity"]:
            acc = EXACT.add(acc, v if isinstance(v, Decimal) else Decimal(v))
        res["pandas_exact_sum_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        res["pandas_sum_exact"] = acc == truth
        try:
            import polars as pl
        except ImportError:
            res["polars"] = "not installed"
        else:
            t0 = time.perf_counter()
            df = pl.read_parquet(path)
            col = df["quantity"] if dec else df["quantity"].cast(pl.Decimal(38, 8))
            s = col.sum()
            res["polars_read_sum_ms"] = round((time.perf_counter() - t0) * 1000, 1)
            res["polars_dtype"] = str(df["quantity"].dtype)
            res["polars_sum_exact"] = Decimal(str(s)) == truth
        out[name] = res
        print(f"columns as {name}: {res}", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=1_000_000)
    parser.add_argument("--symbols", type=int, default=100)
    parser.add_argument("--query-trades", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--s3", action="store_true", help="also the query on S3 (moto)")
    parser.add_argument(
        "--before",
        type=Path,
        help="a tree's platform/ folder to compare the sink with (git archive <commit> platform)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="drains per tree with --before")
    parser.add_argument(
        "--odd-every",
        type=int,
        default=100,
        help="with --before, a second topic where one trade in this many has 10 decimals",
    )
    parser.add_argument("--sink-only", action="store_true", help="skip the query parts")
    parser.add_argument("--drain-only", type=int, help=argparse.SUPPRESS)  # drain_in's child
    args = parser.parse_args()
    if args.drain_only:
        child = Settings()
        print(orjson.dumps(drain(child, args.drain_only)).decode(), flush=True)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="bench-archive-"))
    base = Settings(run_dir=workdir, archive_dir=workdir / "archive")
    results: dict[str, Any] = {
        "command": "flock /tmp/csp-heavy.lock nox -s bench_archive",
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
        },
    }
    with LocalStack(base, workdir / "stack") as stack:
        settings = base.model_copy(
            update={
                "kafka_bootstrap": stack.kafka_bootstrap,
                "redis_url": stack.redis_url,
                "query_port": free_port(),
            }
        )
        create_topics(settings.kafka, required_topics(settings))
        prefill(settings, args.trades, [f"S{i:04d}USDT" for i in range(args.symbols)])
        assert end_offsets(settings) == args.trades
        results["sink"] = drain(settings, args.trades)
        if args.before is not None:
            after = Path(__file__).resolve().parent.parent / "platform"
            results["sink_before_after"] = compare_trees(
                settings, args.before, after, args.trades, args.rounds
            )
            odd = settings.model_copy(update={"topic": settings.topic + ".odd"})
            create_topics(odd.kafka, required_topics(odd)[:1])
            prefill(
                odd, args.trades, [f"S{i:04d}USDT" for i in range(args.symbols)], args.odd_every
            )
            results["sink_before_after_odd"] = compare_trees(
                odd, args.before, after, args.trades, args.rounds
            )
        if args.sink_only:
            return _finish(args, results)
        qroot = workdir / "query-archive"
        t0 = time.perf_counter()
        one_day_archive(qroot, args.query_trades, "BTCUSDT")
        print(f"one-day archive written in {time.perf_counter() - t0:.1f}s", flush=True)
        results["query"] = time_query(qroot, "BTCUSDT", args.repeats)
        results["query_http"] = time_http(
            settings.model_copy(update={"archive_dir": qroot}), "BTCUSDT", args.repeats
        )
        results["column_types"] = column_types(qroot, workdir)
        if args.s3:
            results["query_s3"] = query_s3(args.query_trades, "BTCUSDT", args.repeats)
    return _finish(args, results)


def _finish(args: argparse.Namespace, results: dict[str, Any]) -> int:
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    ok = results["sink"]["trades_per_s"] >= 100_000 and (
        "query" not in results or results["query"]["median_ms"] <= 200
    )
    print("targets met" if ok else "TARGETS MISSED (>= 100,000 trades/s, <= 200 ms)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
