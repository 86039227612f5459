"""Network faults through Toxiproxy (issue 20): the TCP path between two parts is proxied and
made slow, jittery, reset or black-holed, then healed; the views must end exact.

- processor <-> Redis and processor <-> Kafka (steady load produced straight into the topic;
  truth: the topic's content, each trade applied exactly once): latency with jitter, TCP resets
  (``reset_peer``), and a black hole (``timeout`` with 0: bytes are dropped and the connection
  stays open; removing the toxic closes the connections it held) longer than the clients'
  socket timeouts; each black hole must stall the processors. The Redis black hole drops Redis's *replies*
  only, so the batch script has run when the processor gives up on it: its retry must be
  refused by the offset compare-and-set, not applied twice. Kafka is reached through a second
  broker listener that advertises the proxy's address, so every connection of the processors
  (bootstrap, partition leader, group coordinator) goes through it.
- ingest <-> simulator (the WebSocket; REST backfill goes direct): a slow close (the simulator
  drops ingest's first connection while the proxy holds the close back: ingest's silence
  watchdog must give up on it), latency, a bandwidth limit, resets and a black hole; ingest
  reconnects, records the gaps and backfills them (truth: the simulator's history; no trade may
  stay unrecoverable, and the faults must have caused gaps).
- ingest <-> Kafka: a slow close (the stream stalls, the broker closes the producer's idle
  connection, the proxy holds that close back; the trades produced once the stream resumes wait
  on the dead connection until the close arrives), then latency, resets, a bandwidth limit and a
  black hole; nothing lost or doubled in ``raw.trades``.

Only the faulty path is proxied: the load, the probes and the checker talk to Kafka and Redis
directly. Toxiproxy is built from its Go module on first use (``ensure_toxiproxy``).
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from cryptostream.config import Settings
from cryptostream.stack.kafka import KafkaBroker, resolve_kafka_jars
from cryptostream.stack.pipeline import Pipeline, SimulatorHandle, wait_for
from cryptostream.stack.supervisor import free_port
from cryptostream.stack.toxiproxy import (
    Stream,
    ToxiproxyClient,
    ToxiproxyServer,
    ensure_toxiproxy,
)
from cryptostream.topics import create_topics, required_topics
from cryptostream_lab.reliability.recovery import caught_up
from tests.conftest import Env
from tests.reliability.harness import (
    FaultRun,
    Profile,
    SteadyProducer,
    gap_summary,
    settle_and_finish,
    sim_last_ids,
    topic_trades,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

SYMBOLS = [f"NET{i}USDT" for i in range(24)]  # spread over all 8 partitions
UPSTREAM_SYMBOLS = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT"]
NETWORK = Profile("full", faults=1, rate=400, spacing=(2.0, 4.0))
BLACK_HOLE_S = 14.0  # longer than the processor's Redis socket timeout (10 s) and Kafka session
BANDWIDTH_KBS = 16  # far below the load's ~400 trades/s of Redis or Kafka traffic
SLOW_CLOSE_MS = 5000
WS_DROP_AFTER_S = 20.0  # the simulator drops ingest's first connection this long after it opened
KAFKA_STALL_AFTER_S = 25.0  # the stream of ingest's first connection stalls this long after...
KAFKA_STALL_S = 7.0  # ... for this long: longer than the broker's idle limit, shorter than...
KAFKA_IDLE_MS = 4000  # (above the consumers' 3 s heartbeats: only truly idle connections close)
KAFKA_SLOW_CLOSE_MS = 8000  # ... the idle limit plus the held close
BOTH: tuple[Stream, ...] = ("upstream", "downstream")


@dataclass
class Toxi:
    server: ToxiproxyServer
    client: ToxiproxyClient


@pytest.fixture
def toxiproxy(tmp_path: Path) -> Iterator[Toxi]:
    binary = ensure_toxiproxy(Settings().cache_dir)
    server = ToxiproxyServer(tmp_path / "toxiproxy", binary).start()
    client = server.client()
    try:
        yield Toxi(server, client)
    finally:
        client.close()
        server.stop()


def _fault(
    run: FaultRun,
    tp: ToxiproxyClient,
    proxy: str,
    label: str,
    kind: str,
    attributes: dict[str, int | float],
    seconds: float,
    streams: tuple[Stream, ...] = BOTH,
    *,
    stalls: bool = False,
    during: Callable[[], None] | None = None,
    goal_after: Callable[[], Mapping[Any, int]] | None = None,
) -> None:
    """Toxics on ``streams`` for ``seconds``, then removed. Recovery is timed from the start
    (the report's column) and, in the notes, from the moment the fault cleared until Redis has
    applied everything Kafka held then. ``stalls``: the fault must stop the processors'
    progress (from 1 s in until it clears), or it did not really cut them off. ``during`` runs
    once the toxics are in place (e.g. the server closing the connections a slow close holds);
    ``goal_after``: recovery's goal for faults upstream of Kafka (see :meth:`FaultRun.inject`)."""
    applied: list[int] = []

    def action() -> None:
        names = [tp.add_toxic(proxy, kind, attributes, stream=s) for s in streams]
        if during is not None:
            during()
        run.pause(1.0)
        applied.append(sum(run.probe.applied().values()))
        run.pause(seconds - 1.0)
        applied.append(sum(run.probe.applied().values()))
        for name in names:
            tp.remove_toxic(proxy, name)

    run.inject(label, action, goal_after=goal_after)
    healed, goal = time.monotonic(), run.probe.ends()
    run.wait_recovered(timeout=180)
    wait_for(lambda: caught_up(run.probe.applied(), goal), 180, f"catching up after {label}")
    run.result.notes += (
        f" {label}: {applied[1] - applied[0]} offsets applied during it (from 1 s in), caught up "
        f"{time.monotonic() - healed:.1f}s after it cleared."
    )
    if stalls:
        assert applied[1] == applied[0], f"{label} did not stall the processors: {applied}"


def _processor_side_faults(run: FaultRun, tp: ToxiproxyClient, proxy: str) -> None:
    _fault(
        run,
        tp,
        proxy,
        f"{proxy}: latency 150±100 ms",
        "latency",
        {"latency": 150, "jitter": 100},
        6,
    )
    run.pause()
    _fault(run, tp, proxy, f"{proxy}: connection reset", "reset_peer", {"timeout": 0}, 2)
    run.pause()
    _fault(
        run,
        tp,
        proxy,
        f"{proxy}: bandwidth {BANDWIDTH_KBS} KB/s",
        "bandwidth",
        {"rate": BANDWIDTH_KBS},
        8,
    )
    run.pause()
    _fault(
        run,
        tp,
        proxy,
        f"{proxy}: black hole {BLACK_HOLE_S:.0f} s (replies)",
        "timeout",
        {"timeout": 0},
        BLACK_HOLE_S,
        streams=("downstream",),
        stalls=True,
    )
    run.pause()
    _fault(
        run,
        tp,
        proxy,
        f"{proxy}: black hole {BLACK_HOLE_S:.0f} s (both ways)",
        "timeout",
        {"timeout": 0},
        BLACK_HOLE_S,
        stalls=True,
    )


def _flowing(run: FaultRun) -> None:
    wait_for(
        lambda: run.assert_others_alive() or sum(run.probe.applied().values()) > 0,
        90,
        "the first records in Redis",
    )


def _finish_processor_side(run: FaultRun, load: SteadyProducer, settings: Settings) -> None:
    load.stop()
    run.wait_drained(timeout=180)
    result = run.finish(topic_trades(settings))
    assert load.acked == result.records_checked, (load.acked, result.records_checked)
    assert result.ok, f"{result.verdict()}: {result.notes}"


def test_processor_redis_network_faults(isolated: Env, toxiproxy: Toxi) -> None:
    """Two processors reach Redis only through the proxy."""
    redis_addr = urlsplit(isolated.settings.redis_url).netloc
    proxy = toxiproxy.client.create_proxy("redis", redis_addr)
    proxied = isolated.settings.redis_url.replace(redis_addr, proxy.listen)
    pipeline = Pipeline(
        isolated.workdir,
        isolated.settings.kafka_bootstrap,
        isolated.settings.redis_url,
        SYMBOLS,
        extra_env=isolated.env,
    )
    load = SteadyProducer(isolated.settings, SYMBOLS, NETWORK.rate, seed=41)
    try:
        run = FaultRun("net-processor-redis", NETWORK, pipeline, isolated.settings)
        for _ in range(2):
            pipeline.start_processor(CSP_REDIS_URL=proxied)
        load.start()
        _flowing(run)
        _processor_side_faults(run, toxiproxy.client, "redis")
        run.pause()
        _slow_close(run, toxiproxy.client, isolated.settings.redis_url)
        _finish_processor_side(run, load, isolated.settings)
    finally:
        load._stop.set()
        pipeline.stop()


def _kill_redis_clients(redis_url: str) -> None:
    """Redis closes every other client connection (the proxied ones and the probes', which
    reconnect): the server-side close that a ``slow_close`` toxic then holds open."""
    with redis.Redis.from_url(redis_url) as direct:
        direct.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")


def _slow_close(
    run: FaultRun,
    tp: ToxiproxyClient,
    redis_url: str,
    seconds: float = 8,
    goal_after: Callable[[], Mapping[Any, int]] | None = None,
) -> None:
    """Redis drops its clients and the proxy delays passing the close on by SLOW_CLOSE_MS: the
    clients sit on a connection whose server is gone, then see it close."""
    _fault(
        run,
        tp,
        "redis",
        f"redis: server closes, slow close {SLOW_CLOSE_MS / 1000:.0f} s",
        "slow_close",
        {"delay": SLOW_CLOSE_MS},
        seconds,
        streams=("downstream",),
        during=lambda: _kill_redis_clients(redis_url),
        goal_after=goal_after,
    )


_PROXIED_LISTENER = """\
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport},PROXIED://127.0.0.1:{pport}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport},PROXIED://127.0.0.1:{xport}
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,PROXIED:PLAINTEXT
"""


@contextlib.contextmanager
def _proxied_broker(
    tmp_path: Path, tp: ToxiproxyClient, idle_ms: int | None = None
) -> Iterator[tuple[KafkaBroker, str]]:
    """A broker of its own with a second listener, ``PROXIED``, that advertises the proxy's
    address (yielded with the broker): a client bootstrapping through the proxy reaches the
    partition leaders and the group coordinator through it too; the direct listener stays for
    the load, the probes and the checker. ``idle_ms``: its ``connections.max.idle.ms`` (Kafka
    4.3 reads it broker-wide only; a ``listener.name.proxied.`` prefix is ignored)."""
    settings = Settings()
    lib = resolve_kafka_jars(settings.cache_dir, settings.kafka_version)
    port, cport, pport, xport = free_port(), free_port(), free_port(), free_port()
    broker = KafkaBroker(
        tmp_path / "kafka",
        lib,
        heap="384m",
        port=port,
        controller_port=cport,
        extra_properties=_PROXIED_LISTENER.format(port=port, cport=cport, pport=pport, xport=xport)
        + ("" if idle_ms is None else f"connections.max.idle.ms={idle_ms}\n"),
    )
    try:
        broker.start(timeout=settings.start_timeout_s)
        tp.create_proxy("kafka", f"127.0.0.1:{pport}", listen=f"127.0.0.1:{xport}")
        yield broker, f"127.0.0.1:{xport}"
    finally:
        broker.stop()


def test_processor_kafka_network_faults(isolated: Env, toxiproxy: Toxi, tmp_path: Path) -> None:
    """Two processors reach Kafka only through the proxy; the load is produced directly."""
    pipeline: Pipeline | None = None
    load: SteadyProducer | None = None
    with _proxied_broker(tmp_path, toxiproxy.client) as (broker, proxied):
        try:
            env = {**isolated.env, "CSP_KAFKA_BOOTSTRAP": broker.bootstrap}
            own = isolated.settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
            create_topics(own.kafka, required_topics(own))
            pipeline = Pipeline(
                isolated.workdir, broker.bootstrap, own.redis_url, SYMBOLS, extra_env=env
            )
            run = FaultRun("net-processor-kafka", NETWORK, pipeline, own)
            for _ in range(2):
                pipeline.start_processor(CSP_KAFKA_BOOTSTRAP=proxied)
            load = SteadyProducer(own, SYMBOLS, NETWORK.rate, seed=42).start()
            _flowing(run)
            _processor_side_faults(run, toxiproxy.client, "kafka")
            _finish_processor_side(run, load, own)
        finally:
            if load is not None:
                load._stop.set()
            if pipeline is not None:
                pipeline.stop()


def _start_upstream(
    pipeline: Pipeline,
    tp: ToxiproxyClient,
    seconds: float,
    proxy_ws: bool = True,
    sim_args: tuple[str, ...] = (),
    before_ingest: Callable[[], object] | None = None,
    **ingest_env: str,
) -> SimulatorHandle:
    """The simulator (``sim_args``: its faults), two processors and ingest (its WebSocket
    through the ``ws`` proxy if ``proxy_ws``); ``before_ingest`` runs just before ingest
    connects (e.g. a toxic that must be in place before a timed simulator fault)."""
    total = int(NETWORK.rate * seconds)
    sim = pipeline.start_simulator(
        [
            "--symbols",
            ",".join(UPSTREAM_SYMBOLS),
            "--rate",
            str(NETWORK.rate),
            "--seed",
            "43",
            "--max-trades",
            str(total),
            "--history",
            "1000000",
            "--wait-for-subscribers",
            "1",
            "--rest-weight-limit",
            "0",
            *sim_args,
        ]
    )
    ws_url = sim.ws_url
    if proxy_ws:
        address = urlsplit(ws_url).netloc
        ws_url = ws_url.replace(address, tp.create_proxy("ws", address).listen)
    for _ in range(2):
        pipeline.start_processor()
    if before_ingest is not None:
        before_ingest()
    env = {"CSP_INGEST_TAIL_CHECK_S": "2", "CSP_INGEST_SILENCE_S": "3", **ingest_env}
    pipeline.start_ingest(ws_url, CSP_BINANCE_REST_URL=sim.rest_url, **env)
    return sim


def _ingest_metrics(port: int) -> dict[str, float]:
    """Ingest's counters by sample (``csp_ingest_errors_total{kind="connection_silent"}``...)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if m := re.match(r"^(csp_ingest_[a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", line):
            out[m.group(1)] = float(m.group(2))
    return out


SILENT = 'csp_ingest_errors_total{kind="connection_silent"}'
CLOSED = 'csp_ingest_errors_total{kind="connection_closed"}'


def _ws_slow_close(run: FaultRun, tp: ToxiproxyClient, sim: SimulatorHandle, port: int) -> None:
    """The simulator drops ingest's first connection (``--fault-drop-after-seconds``: it aborts
    the TCP connection) while a ``slow_close`` toxic, in place since before ingest connected,
    holds the close back SLOW_CLOSE_MS: ingest sits on a connection whose server is gone. Its
    silence watchdog (3 s) must replace it; a close that arrived at once would be counted as
    ``connection_closed`` instead, so ``connection_silent`` moving proves the close was held."""
    before = _ingest_metrics(port)
    stats: Any = sim.stats()
    assert stats["connections_total"] == 1 and before.get(SILENT, 0) == 0, (
        f"ingest's first connection was gone before the scenario watched: raise "
        f"WS_DROP_AFTER_S ({stats['connections_total']} connections, {before.get(SILENT)})"
    )

    def dropped() -> bool:
        run.assert_others_alive()
        now: Any = sim.stats()
        return bool(now["connections"] == 0 or now["connections_total"] > 1)

    wait_for(dropped, WS_DROP_AFTER_S + 60, "the simulator dropping ingest's first connection")

    def action() -> None:
        at = time.monotonic()
        wait_for(lambda: sim.stats()["connections_total"] > 1, 60, "ingest reconnecting")  # type: ignore[operator]
        # the held close must pass before the toxic goes: removing it would swallow the close
        time.sleep(max(0.0, at + SLOW_CLOSE_MS / 1000 + 1 - time.monotonic()))
        tp.remove_toxic("ws", "slow_close_downstream")

    label = f"ws: simulator drops the connection, slow close {SLOW_CLOSE_MS / 1000:.0f} s"
    run.inject(label, action, goal_after=lambda: sim_last_ids(sim))
    run.wait_recovered(timeout=120)
    after = _ingest_metrics(port)
    silent, closed = (after.get(k, 0) - before.get(k, 0) for k in (SILENT, CLOSED))
    run.result.notes += f" {label}: ingest saw {silent:.0f} silent, {closed:.0f} closed."
    assert silent >= 1, f"the close was not held: ingest saw it at once ({closed} closed)"


def test_ingest_simulator_network_faults(isolated: Env, toxiproxy: Toxi) -> None:
    """The simulator's close of the WebSocket is held back (slow close), then the WebSocket is
    slowed (latency with jitter, then a bandwidth limit below the stream's rate), reset, then
    black-holed (ingest's silence watchdog replaces it; new connections hang too until the
    fault clears); the gaps are recorded and backfilled."""
    pipeline = Pipeline(
        isolated.workdir,
        isolated.settings.kafka_bootstrap,
        isolated.settings.redis_url,
        UPSTREAM_SYMBOLS,
        extra_env=isolated.env,
    )
    try:
        tp, port = toxiproxy.client, free_port()
        sim = _start_upstream(
            pipeline,
            tp,
            seconds=100,
            sim_args=(
                "--fault-drop-after-seconds",
                str(WS_DROP_AFTER_S),
                "--fault-connections",
                "1",
            ),
            before_ingest=lambda: tp.add_toxic("ws", "slow_close", {"delay": SLOW_CLOSE_MS}),
            CSP_INGEST_METRICS_PORT=str(port),
        )
        run = FaultRun("net-ingest-simulator", NETWORK, pipeline, isolated.settings)
        run.progress = lambda: run.probe.latest_ids(UPSTREAM_SYMBOLS)
        wait_for(
            lambda: run.assert_others_alive() or run.probe.latest_ids(UPSTREAM_SYMBOLS),
            60,
            "the first trades in Redis",
        )
        _ws_slow_close(run, tp, sim, port)
        for label, kind, attributes, seconds in (
            ("ws: latency 150±100 ms", "latency", {"latency": 150, "jitter": 100}, 6.0),
            ("ws: connection reset", "reset_peer", {"timeout": 0}, 2.0),
            ("ws: bandwidth 8 KB/s", "bandwidth", {"rate": 8}, 8.0),  # below the stream's rate
            ("ws: black hole 8 s", "timeout", {"timeout": 0}, 8.0),
        ):
            run.pause()

            def action(
                kind: str = kind, attributes: dict[str, int] = attributes, seconds: float = seconds
            ) -> None:
                names = [tp.add_toxic("ws", kind, attributes, stream=s) for s in BOTH]
                time.sleep(seconds)
                for name in names:
                    tp.remove_toxic("ws", name)

            run.inject(label, action, goal_after=lambda: sim_last_ids(sim))
            run.wait_recovered(timeout=120)
        gaps = gap_summary(isolated.settings)
        result = settle_and_finish(run, sim, isolated.settings)
        assert result.ok, f"{result.verdict()}: {result.notes}"
        assert gaps is not None and gaps.detected > 0, "the faults caused no gap: not tested"
        assert result.gaps_reported == 0, f"unrecoverable gaps with REST up: {result.notes}"
    finally:
        pipeline.stop()


PRODUCED, ACKED = "csp_ingest_produced_total", "csp_ingest_acked_total"


def _kafka_slow_close(run: FaultRun, tp: ToxiproxyClient, sim: SimulatorHandle, port: int) -> None:
    """The stream of ingest's first connection stalls (``--fault-stall-after-seconds``) for
    KAFKA_STALL_S, so ingest produces nothing and the broker closes its idle connection after
    KAFKA_IDLE_MS; a ``slow_close`` toxic, in place since before ingest started, holds that
    close back KAFKA_SLOW_CLOSE_MS, past the stall's end. The trades produced once the stream
    resumes go into the dead connection: 1.5 s after the stall, ingest must have produced but
    Kafka acknowledged nothing (without the broker's close, or with the close passed on at
    once, the acks would follow within milliseconds); then the close arrives, the producer
    reconnects and retries (idempotent: nothing doubled)."""

    def stalled() -> int:
        faults: Any = sim.stats()["faults"]
        return int(faults.get("0", {}).get("stalled", 0))

    assert stalled() == 0, "the stream stalled before the scenario watched: raise the stall's delay"
    wait_for(
        lambda: run.assert_others_alive() or stalled() > 0,
        KAFKA_STALL_AFTER_S + 60,
        "the stall of ingest's stream",
    )
    seen: dict[str, dict[str, float]] = {}

    def action() -> None:
        at = time.monotonic()
        time.sleep(1.0)  # the last deliveries before the stall settle
        seen["start"] = _ingest_metrics(port)
        time.sleep(max(0.0, at + KAFKA_STALL_S + 1.5 - time.monotonic()))
        seen["resumed"] = _ingest_metrics(port)
        wait_for(
            lambda: _ingest_metrics(port)[ACKED] > seen["resumed"][ACKED],
            60,
            "Kafka acknowledging ingest's trades again",
        )
        seen["acked"] = _ingest_metrics(port)
        # the held close must pass before the toxic goes: removing it would swallow the close
        held_until = at + (KAFKA_IDLE_MS + KAFKA_SLOW_CLOSE_MS) / 1000 + 1
        time.sleep(max(0.0, held_until - time.monotonic()))
        tp.remove_toxic("kafka", "slow_close_downstream")

    label = (
        f"kafka: stream stalls {KAFKA_STALL_S:.0f} s, the broker closes the idle connection, "
        f"slow close {KAFKA_SLOW_CLOSE_MS / 1000:.0f} s"
    )
    run.inject(label, action, goal_after=lambda: sim_last_ids(sim))
    run.wait_recovered(timeout=180)
    start, resumed, acked = seen["start"], seen["resumed"], seen["acked"]
    kafka = 'csp_ingest_errors_total{kind="kafka"}'
    run.result.notes += (
        f" {label}: {resumed[PRODUCED] - start[PRODUCED]:.0f} trades produced after the stall "
        f"waited for the close; Kafka client errors {start.get(kafka, 0):.0f} -> "
        f"{acked.get(kafka, 0):.0f}."
    )
    assert resumed[PRODUCED] > start[PRODUCED], f"the stream did not resume: {resumed}"
    assert resumed[ACKED] == start[ACKED], (
        "trades were acknowledged during the held close: the broker did not close the idle "
        f"connection, or its close was not held ({start[ACKED]} -> {resumed[ACKED]})"
    )


def test_ingest_kafka_network_faults(isolated: Env, toxiproxy: Toxi, tmp_path: Path) -> None:
    """Ingest produces through the proxy (the simulator, the processors and the checker go
    direct): a slow close of a connection the broker closed, latency, resets, a bandwidth limit
    and a black hole between ingest and Kafka. The producer's retries must neither lose nor
    double a trade in ``raw.trades``."""
    tp, port = toxiproxy.client, free_port()
    with _proxied_broker(tmp_path, tp, idle_ms=KAFKA_IDLE_MS) as (broker, proxied):
        env = {**isolated.env, "CSP_KAFKA_BOOTSTRAP": broker.bootstrap}
        own = isolated.settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
        create_topics(own.kafka, required_topics(own))
        pipeline = Pipeline(
            isolated.workdir, broker.bootstrap, own.redis_url, UPSTREAM_SYMBOLS, extra_env=env
        )
        try:
            sim = _start_upstream(
                pipeline,
                tp,
                100,
                proxy_ws=False,
                sim_args=(
                    "--fault-stall-after-seconds",
                    str(KAFKA_STALL_AFTER_S),
                    "--fault-stall-seconds",
                    str(KAFKA_STALL_S),
                    "--fault-connections",
                    "1",
                ),
                before_ingest=lambda: tp.add_toxic(
                    "kafka", "slow_close", {"delay": KAFKA_SLOW_CLOSE_MS}
                ),
                CSP_KAFKA_BOOTSTRAP=proxied,
                CSP_INGEST_METRICS_PORT=str(port),
                # neither the watchdog nor the quiet-symbol check may act during the stall: the
                # producer must stay idle (the stall's gap is found when the stream resumes)
                CSP_INGEST_SILENCE_S="20",
                CSP_INGEST_TAIL_CHECK_S="20",
            )
            run = FaultRun("net-ingest-kafka", NETWORK, pipeline, own)
            run.progress = lambda: run.probe.latest_ids(UPSTREAM_SYMBOLS)
            wait_for(
                lambda: run.assert_others_alive() or run.probe.latest_ids(UPSTREAM_SYMBOLS),
                60,
                "the first trades in Redis",
            )
            _kafka_slow_close(run, tp, sim, port)
            fresh = lambda: sim_last_ids(sim)  # noqa: E731
            for label, kind, attributes, seconds, streams in (
                ("kafka: latency 150±100 ms", "latency", {"latency": 150, "jitter": 100}, 6, BOTH),
                ("kafka: connection reset", "reset_peer", {"timeout": 0}, 2, BOTH),
                (
                    f"kafka: bandwidth {BANDWIDTH_KBS} KB/s",
                    "bandwidth",
                    {"rate": BANDWIDTH_KBS},
                    8,
                    BOTH,
                ),
                (
                    f"kafka: black hole {BLACK_HOLE_S:.0f} s",
                    "timeout",
                    {"timeout": 0},
                    BLACK_HOLE_S,
                    BOTH,
                ),
            ):
                run.pause()
                _fault(
                    run, tp, "kafka", label, kind, attributes, seconds, streams, goal_after=fresh
                )
            result = settle_and_finish(run, sim, own)
            assert result.ok, f"{result.verdict()}: {result.notes}"
            assert result.topic_missing == result.topic_duplicated == 0, result.notes
            assert result.gaps_reported == 0, f"unrecoverable gaps with REST up: {result.notes}"
        finally:
            pipeline.stop()


@dataclass
class _Poller:
    """GET /price/{symbol} every 50 ms on its own thread: what each answer was and how long it
    took (the query API must answer 200 or a quick 503, never hang or serve a wrong price)."""

    url: str
    answers: list[tuple[float, int, float, float | None]]  # (t, status, seconds, price)
    ok: int = 0

    def run(self, stop: threading.Event) -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    response = client.get(self.url)
                    status = response.status_code
                except httpx.HTTPError:
                    status = 0  # no answer at all: a hang or a dropped connection
                elapsed = time.monotonic() - t0
                price = response.json().get("price") if status == 200 else None
                self.answers.append((t0, status, elapsed, price))
                self.ok += status == 200
                stop.wait(0.05)


def test_query_redis_network_faults(isolated: Env, toxiproxy: Toxi) -> None:
    """The query API reaches Redis through the proxy (processors and the load go direct). Under
    latency and a bandwidth limit it answers; reset, black-holed or slow-closed, it answers 503
    within its Redis deadline, never hangs and never serves a price the symbol never had; it
    recovers after each fault (recovery = first 200 after the fault cleared)."""
    redis_addr = urlsplit(isolated.settings.redis_url).netloc
    proxy = toxiproxy.client.create_proxy("redis", redis_addr)
    pipeline = Pipeline(
        isolated.workdir,
        isolated.settings.kafka_bootstrap,
        isolated.settings.redis_url,
        SYMBOLS,
        extra_env=isolated.env,
    )
    load = SteadyProducer(isolated.settings, SYMBOLS, NETWORK.rate, seed=44)
    stop = threading.Event()
    try:
        run = FaultRun("net-query-redis", NETWORK, pipeline, isolated.settings)
        pipeline.start_processor()
        load.start()
        _flowing(run)
        query = pipeline.start_query(
            CSP_REDIS_URL=isolated.settings.redis_url.replace(redis_addr, proxy.listen)
        )
        poller = _Poller(f"{query.base_url}/price/{SYMBOLS[0]}", [])
        wait_for(lambda: httpx.get(poller.url).status_code == 200, 60, "a first price")
        thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
        thread.start()
        run.progress = lambda: {"query": poller.ok}
        after = lambda: {"query": poller.ok + 1}  # noqa: E731
        tp, windows = toxiproxy.client, {}
        for label, kind, attributes, seconds in (
            ("query-redis: latency 150±100 ms", "latency", {"latency": 150, "jitter": 100}, 6),
            ("query-redis: connection reset", "reset_peer", {"timeout": 0}, 2),
            ("query-redis: bandwidth 4 KB/s", "bandwidth", {"rate": 4}, 6),
            ("query-redis: black hole 8 s", "timeout", {"timeout": 0}, 8),
        ):
            run.pause()
            start = time.monotonic()
            _fault(run, tp, "redis", label, kind, attributes, seconds, goal_after=after)
            windows[kind] = (start, start + seconds)
        run.pause()
        _slow_close(run, tp, isolated.settings.redis_url, seconds=6, goal_after=after)
        run.pause(3)
        stop.set()
        thread.join(15)
        load.stop()
        run.wait_drained(timeout=180)
        truth = topic_trades(isolated.settings)
        result = run.finish(truth)
        assert result.ok, f"{result.verdict()}: {result.notes}"
        deadline = isolated.settings.query_redis_timeout_s + 1.5
        statuses = {status for _, status, _, _ in poller.answers}
        assert statuses <= {200, 503}, f"answers other than 200/503: {statuses}"
        slowest = max(elapsed for _, _, elapsed, _ in poller.answers)
        assert slowest <= deadline, f"an answer took {slowest:.2f}s (deadline {deadline:.2f}s)"
        hole = windows["timeout"]
        assert any(
            status == 503 and hole[0] + 1 <= t <= hole[1] for t, status, _, _ in poller.answers
        ), "the black hole never made the query API answer 503: not tested"
        prices = {float(t.price) for t in truth if t.symbol == SYMBOLS[0]}
        wrong = [p for _, status, _, p in poller.answers if status == 200 and p not in prices]
        assert not wrong, f"prices {SYMBOLS[0]} never had: {wrong[:5]}"
        assert poller.answers[-1][1] == 200, "the query API did not recover"
    finally:
        stop.set()
        load._stop.set()
        pipeline.stop()


def test_toxics_really_happen(toxiproxy: Toxi) -> None:
    """The faults the scenarios rely on, on a plain TCP echo server: latency delays, a black
    hole swallows bytes without closing, reset_peer resets, and removal heals."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    echo_port = listener.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return

            def echo(conn: socket.socket = conn) -> None:
                with conn, contextlib.suppress(OSError):
                    while data := conn.recv(1024):
                        conn.sendall(data)

            threading.Thread(target=echo, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    tp = toxiproxy.client
    proxy = tp.create_proxy("echo", f"127.0.0.1:{echo_port}")

    def round_trip() -> float:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=1.5) as sock:
            t0 = time.monotonic()
            sock.sendall(b"ping")
            assert sock.recv(16) == b"ping"
            return time.monotonic() - t0

    try:
        assert round_trip() < 0.1
        latency = tp.add_toxic("echo", "latency", {"latency": 300, "jitter": 0})
        assert round_trip() >= 0.29
        tp.remove_toxic("echo", latency)
        hole = tp.add_toxic("echo", "timeout", {"timeout": 0})
        with pytest.raises(TimeoutError):
            round_trip()
        tp.remove_toxic("echo", hole)
        assert round_trip() < 0.1
        reset = tp.add_toxic("echo", "reset_peer", {"timeout": 0}, stream="upstream")
        with pytest.raises((ConnectionResetError, AssertionError, BrokenPipeError)):
            round_trip()
        tp.remove_toxic("echo", reset)
        assert round_trip() < 0.1
        # 64 KB through 32 KB/s takes about 2 s instead of a few ms
        limit = tp.add_toxic("echo", "bandwidth", {"rate": 32}, stream="downstream")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            t0, payload, got = time.monotonic(), b"x" * 65536, 0
            sock.sendall(payload)
            while got < len(payload):
                got += len(sock.recv(65536))
            assert time.monotonic() - t0 >= 1.5
        tp.remove_toxic("echo", limit)
        # the server's close reaches the client only after the slow close's delay
        slow = tp.add_toxic("echo", "slow_close", {"delay": 800}, stream="downstream")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            assert round_trip() < 0.1  # a second connection still echoes at full speed
            sock.shutdown(socket.SHUT_WR)  # the echo server sees EOF and closes its side
            t0 = time.monotonic()
            assert sock.recv(16) == b""
            assert time.monotonic() - t0 >= 0.7
        tp.remove_toxic("echo", slow)
    finally:
        listener.close()
