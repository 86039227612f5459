"""Command line: ``python -m marketsim [flags]`` / ``csp simulator [flags]``.

Exit codes: 0 after SIGTERM/SIGINT (clean stop), 2 for bad flags (argparse), 1 for start errors.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import ecs_logging

from marketsim.faults import FaultConfig
from marketsim.server import SimConfig, Simulator, write_ready_file
from marketsim.symbols import DEFAULT_SYMBOLS, parse_symbols

log = logging.getLogger("marketsim")


def parse_start_time(text: str) -> int | None:
    """``now`` → None (wall clock at start); an int (ms, or µs if 16 digits) or ISO-8601 → µs."""
    t = text.strip()
    if t.lower() == "now":
        return None
    if t.isdigit():
        v = int(t)
        return v if v >= 10**14 else v * 1000
    dt = datetime.fromisoformat(t.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1_000_000)


def _symbols(text: str) -> tuple[str, ...]:
    try:
        return parse_symbols(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _opt_float(text: str) -> float | None:
    return None if text.lower() in ("none", "off", "0") else float(text)


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's default as one would type it (``BTCUSDT,ETHUSDT``, not a Python tuple)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default == [] or "(default" in text:
            return text
        if default is argparse.SUPPRESS:
            return text
        if isinstance(default, tuple):
            shown = ",".join(str(v) for v in default)
        elif action.dest == "start_time" and isinstance(default, int):
            shown = datetime.fromtimestamp(default / 1e6, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        else:
            shown = f"{default:g}" if isinstance(default, float) else str(default)
        return f"{text} (default: {shown})"


def build_parser(prog: str = "marketsim") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        formatter_class=_HelpFormatter,
        description="Binance-compatible market simulator: WebSocket streams (/ws, /stream) and a "
        "REST subset (/api/v3/...) plus /sim/stats, all on one port.",
    )
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="bind address")
    g.add_argument("--port", type=int, default=8765, help="port; 0 = a free port")
    g.add_argument(
        "--ready-file",
        type=Path,
        help='once listening, atomically write JSON {"ws_url","rest_url","pid","port"} here',
    )
    g.add_argument(
        "--tls",
        action="store_true",
        help="serve wss:// and https:// with a "
        "self-signed certificate (generated unless --tls-cert/--tls-key are given)",
    )
    g.add_argument("--tls-cert", type=Path, help="PEM certificate (implies --tls)")
    g.add_argument("--tls-key", type=Path, help="PEM private key (implies --tls)")
    g.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")

    g = p.add_argument_group("synthetic market")
    g.add_argument(
        "--symbols",
        type=_symbols,
        default=DEFAULT_SYMBOLS,
        help="comma-separated symbols, busiest first",
    )
    g.add_argument(
        "--rate",
        type=float,
        default=100.0,
        help="total simulated trades/s across symbols; 0 = as fast as "
        "possible (event times then follow a nominal 1000 trades/s)",
    )
    g.add_argument(
        "--fast",
        action="store_true",
        help="as fast as possible, keeping --rate for the simulated event times",
    )
    g.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="simulated seconds per wall second when paced (synthetic and replay)",
    )
    g.add_argument("--seed", type=int, default=1, help="RNG seed")
    g.add_argument("--max-trades", type=int, help="stop generating after N trades (keep serving)")
    g.add_argument(
        "--start-time",
        type=parse_start_time,
        default=None,
        help="market clock start: 'now' (default: event times follow the wall clock; with "
        "--speed above 1 they run ahead of it, with --fast each trade gets the time it is sent), "
        "or epoch ms/µs or ISO-8601 for reproducible runs (e.g. 2025-01-01: the same seed then "
        "gives the same bytes, and REST serverTime and serverShutdown follow that clock)",
    )
    g.add_argument("--zipf", type=float, default=1.0, help="per-symbol rate skew exponent")
    g.add_argument(
        "--burst-prob", type=float, default=0.0, help="per-order burst start probability"
    )
    g.add_argument("--burst-mult", type=float, default=10.0, help="rate multiplier during a burst")
    g.add_argument(
        "--book-levels",
        type=int,
        default=100,
        help="order book levels a side the synthetic makers keep (served on the depth streams "
        "and REST /api/v3/depth); 0 = no book (trades only, several times faster)",
    )
    g.add_argument(
        "--wait-for-subscribers",
        type=int,
        default=0,
        help="start the market clock once N connections have a subscription",
    )

    g = p.add_argument_group("replay (instead of the synthetic market)")
    g.add_argument(
        "--replay",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="recorded frames (.jsonl[.gz]), Binance archive CSV (trades/aggTrades, "
        ".csv or .zip) or the pipeline archive's Parquet files; repeatable, merged in time order",
    )
    g.add_argument("--replay-symbol", help="symbol for archive files whose name does not tell")
    g.add_argument("--loop", action="store_true", help="replay the files again and again")

    g = p.add_argument_group("connection rules (Binance defaults)")
    g.add_argument("--ping-interval", type=_opt_float, default=20.0, help="seconds; 0/off disables")
    g.add_argument("--pong-timeout", type=_opt_float, default=60.0, help="seconds; 0/off disables")
    g.add_argument("--max-streams", type=int, default=1024, help="streams per connection")
    g.add_argument(
        "--msg-rate-limit",
        type=int,
        default=5,
        help="incoming messages per second per connection (0 = unlimited)",
    )
    g.add_argument(
        "--max-connection-attempts",
        type=int,
        default=300,
        help="WebSocket connection attempts per IP per --connection-attempt-window (0 = unlimited)",
    )
    g.add_argument(
        "--connection-attempt-window", type=float, default=300.0, help="seconds of that window"
    )
    g.add_argument(
        "--lifetime",
        type=_opt_float,
        default=24 * 3600.0,
        help="connection lifetime in seconds (then serverShutdown + close)",
    )
    g.add_argument(
        "--shutdown-notice",
        type=float,
        default=10.0,
        help="seconds before the lifetime ends that serverShutdown is sent (at most half the "
        "lifetime; default 10)",
    )
    g.add_argument(
        "--history",
        type=int,
        default=10_000,
        help="orders (aggTrades) kept per symbol for the REST endpoints",
    )
    g.add_argument("--kline-update-ms", type=int, default=2000, help="kline stream update period")
    g.add_argument(
        "--rest-weight-limit",
        type=int,
        default=6000,
        help="REST request weight per IP per minute, as Binance (429 + Retry-After over it, 418 "
        "for a client that keeps going); 0 switches every REST limit off (benchmarks)",
    )
    g.add_argument(
        "--rest-raw-limit", type=int, default=61_000, help="REST requests per IP per 5 minutes"
    )

    g = p.add_argument_group("faults")
    g.add_argument(
        "--fault-drop-after-messages", type=int, help="drop a connection after N messages"
    )
    g.add_argument("--fault-drop-after-seconds", type=float, help="... or after N seconds")
    g.add_argument(
        "--fault-drop-mode",
        choices=("abort", "close"),
        default="abort",
        help="abort: reset the TCP connection; close: a WebSocket close frame",
    )
    g.add_argument("--fault-stall-after-messages", type=int, help="stop sending after N messages")
    g.add_argument("--fault-stall-after-seconds", type=float, help="... or after N seconds")
    g.add_argument("--fault-stall-seconds", type=float, help="stall duration (default: forever)")
    g.add_argument(
        "--fault-malformed-rate", type=float, default=0.0, help="fraction of frames corrupted"
    )
    g.add_argument(
        "--fault-duplicate-rate", type=float, default=0.0, help="fraction of trades sent twice"
    )
    g.add_argument(
        "--fault-reorder-rate",
        type=float,
        default=0.0,
        help="fraction of trades swapped with the next",
    )
    g.add_argument(
        "--fault-gap-rate", type=float, default=0.0, help="fraction of trades never sent"
    )
    g.add_argument(
        "--fault-depth-gap-rate",
        type=float,
        default=0.0,
        help="fraction of depth diffs never sent (a U/u sequence break the client must resync)",
    )
    g.add_argument(
        "--fault-stale-snapshots",
        type=int,
        default=0,
        help="the first N REST /api/v3/depth answers are stale (older than the diff stream a "
        "client buffered since it subscribed: it must fetch again)",
    )
    g.add_argument(
        "--fault-stale-snapshot-age",
        type=float,
        default=5.0,
        help="how old a stale snapshot is, in seconds of market time",
    )
    g.add_argument(
        "--fault-slow-start", type=float, default=0.0, help="seconds to wait before listening"
    )
    g.add_argument(
        "--fault-connections",
        type=int,
        help="faults only on the first N connections (default: all)",
    )
    g.add_argument("--fault-seed", type=int, default=0, help="RNG seed of the faults")
    return p


def config_from_args(ns: argparse.Namespace) -> SimConfig:
    fast = ns.fast or ns.rate <= 0
    cfg = SimConfig(
        host=ns.host,
        port=ns.port,
        symbols=tuple(ns.symbols),
        rate=ns.rate if ns.rate > 0 else 1000.0,
        fast=fast,
        speed=ns.speed,
        seed=ns.seed,
        max_trades=ns.max_trades,
        start_time_us=ns.start_time,
        zipf_s=ns.zipf,
        burst_prob=ns.burst_prob,
        burst_mult=ns.burst_mult,
        wait_for_subscribers=ns.wait_for_subscribers,
        ping_interval=ns.ping_interval,
        pong_timeout=ns.pong_timeout,
        max_streams=ns.max_streams,
        msg_rate_limit=ns.msg_rate_limit,
        max_connection_attempts=ns.max_connection_attempts,
        connection_attempt_window=ns.connection_attempt_window,
        lifetime=ns.lifetime,
        shutdown_notice=ns.shutdown_notice,
        history_orders=ns.history,
        kline_update_ms=ns.kline_update_ms,
        book_levels=ns.book_levels,
        rest_weight_limit=ns.rest_weight_limit,
        rest_raw_limit=ns.rest_raw_limit,
        faults=FaultConfig(
            drop_after_messages=ns.fault_drop_after_messages,
            drop_after_seconds=ns.fault_drop_after_seconds,
            drop_mode=ns.fault_drop_mode,
            stall_after_messages=ns.fault_stall_after_messages,
            stall_after_seconds=ns.fault_stall_after_seconds,
            stall_seconds=ns.fault_stall_seconds,
            malformed_rate=ns.fault_malformed_rate,
            duplicate_rate=ns.fault_duplicate_rate,
            reorder_rate=ns.fault_reorder_rate,
            gap_rate=ns.fault_gap_rate,
            depth_gap_rate=ns.fault_depth_gap_rate,
            stale_snapshots=ns.fault_stale_snapshots,
            stale_snapshot_age=ns.fault_stale_snapshot_age,
            slow_start_seconds=ns.fault_slow_start,
            connections=ns.fault_connections,
            seed=ns.fault_seed,
        ),
    )
    if ns.replay:
        from marketsim.replay import replay_factory

        cfg.source_factory = replay_factory(list(ns.replay), loop=ns.loop, symbol=ns.replay_symbol)
    if ns.tls or ns.tls_cert or ns.tls_key:
        if ns.tls_cert and ns.tls_key:
            cfg.tls_cert, cfg.tls_key = ns.tls_cert, ns.tls_key
        else:
            from marketsim.tls import self_signed_cert

            cfg.tls_cert, cfg.tls_key = self_signed_cert()
    return cfg


async def _serve(cfg: SimConfig, ready_file: Path | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sim = Simulator(cfg)
    await sim.start()
    log.info("marketsim listening on %s (REST %s)", sim.ws_url, sim.rest_url)
    if ready_file is not None:
        write_ready_file(ready_file, sim)
    try:
        return await _until_stopped(stop, sim)
    finally:
        await sim.stop()


async def _until_stopped(stop: asyncio.Event, sim: Simulator) -> int:
    """Serve until asked to stop; a market whose source fails (an unreadable replay file) ends
    the process at once with that error, instead of serving nothing until SIGTERM."""
    stopped = asyncio.create_task(stop.wait())
    market = sim.market_task
    if market is not None:
        await asyncio.wait({stopped, market}, return_when=asyncio.FIRST_COMPLETED)
        error = sim.source_error
        if error is None and market.done() and not market.cancelled():
            exc = market.exception()
            error = None if exc is None else str(exc)
        if error is not None:
            stopped.cancel()
            print(f"marketsim: the market stopped: {error}", file=sys.stderr)
            return 1
    await stopped  # the source ran out (or --max-trades): keep serving what was sent
    return 0


def _setup_logging(level: str) -> None:
    """ECS JSON lines on stdout, like the pipeline's services, so one Filebeat config ships all."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(ecs_logging.StdlibFormatter(extra={"service.name": "marketsim"}))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def main(argv: list[str] | None = None, prog: str = "marketsim") -> int:
    parser = build_parser(prog)
    ns = parser.parse_args(sys.argv[1:] if argv is None else argv)
    _setup_logging(ns.log_level)
    try:
        cfg = config_from_args(ns)
    except (OSError, ValueError) as exc:
        print(f"marketsim: {exc}", file=sys.stderr)
        return 1
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        factory = None
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(_serve(cfg, ns.ready_file))
    except (OSError, ValueError) as exc:
        print(f"marketsim: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # pragma: no cover
        return 0
