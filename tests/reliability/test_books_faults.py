"""Faults downstream of Kafka with order books in the path (issue 16): the simulator's synthetic
market (books on by default) -> ingest with depth on every symbol -> ``raw.trades`` and
``raw.depth`` -> processors with books on -> Redis.

Verdict of every scenario: the trades exactly as :func:`~tests.reliability.harness.
settle_and_finish` says (the simulator's truth, nothing lost, duplicated or wrong), and zero
divergence of the books: every ``book:{SYMBOL}`` in Redis equals ``check_books``'s rebuild from
the depth topic, level by level. Scenarios: SIGKILL of processors at random moments, a
rebalance storm, a Kafka broker restart, a Redis restart that comes back empty (the processors
re-apply both topics from Kafka by themselves).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cryptostream.stack.local import LocalStack
from cryptostream.stack.pipeline import Pipeline, SimulatorHandle, wait_for
from cryptostream.stack.redis_server import RedisServer
from cryptostream.stack.supervisor import ManagedProcess
from tests.conftest import Env
from tests.reliability.harness import FAST, FULL, FaultRun, Profile, settle_books_and_finish

pytestmark = pytest.mark.reliability

SYMBOLS = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT"]
PROFILES = [pytest.param(FAST, id="fast"), pytest.param(FULL, id="full", marks=pytest.mark.slow)]
BOOKS_ENV = {"CSP_PROCESSOR_BOOKS": "true", "CSP_DEPTH_SYMBOLS": "*"}


def _pipeline(env: Env) -> Pipeline:
    return Pipeline(
        env.workdir,
        env.settings.kafka_bootstrap,
        env.settings.redis_url,
        SYMBOLS,
        extra_env={**env.env, **BOOKS_ENV},
    )


@pytest.fixture
def pipeline(isolated: Env) -> Iterator[Pipeline]:
    pipe = _pipeline(isolated)
    try:
        yield pipe
    finally:
        pipe.stop()


def _market(pipeline: Pipeline, profile: Profile, seconds: float, seed: int) -> SimulatorHandle:
    """The synthetic market for ``seconds`` at the profile's rate, and ingest with depth on."""
    sim = pipeline.start_simulator(
        [
            "--symbols",
            ",".join(SYMBOLS),
            "--rate",
            str(profile.rate),
            "--seed",
            str(seed),
            "--max-trades",
            str(int(profile.rate * seconds)),
            "--history",
            "1000000",
            "--wait-for-subscribers",
            "1",
            "--rest-weight-limit",
            "0",
        ]
    )
    pipeline.start_ingest(sim.ws_url, CSP_INGEST_TAIL_CHECK_S="2")
    return sim


def _flowing(run: FaultRun) -> None:
    """Wait until trades are being applied (and so the books have their snapshots)."""
    wait_for(
        lambda: run.assert_others_alive() or sum(run.probe.applied().values()) > 0,
        60,
        "the first records in Redis",
    )


def _verdict(run: FaultRun, sim: SimulatorHandle, env: Env) -> None:
    result, books = settle_books_and_finish(run, sim, env.settings)
    assert books.ok, books.summary()
    assert books.symbols == len(SYMBOLS) and books.records > 0, books.summary()
    assert result.ok, f"{result.verdict()}: {result.notes}"


def _seconds(profile: Profile) -> float:
    return 20 if profile is FAST else 90


@pytest.mark.parametrize("profile", PROFILES)
def test_sigkill_processor_at_random_moments(
    isolated: Env, pipeline: Pipeline, profile: Profile
) -> None:
    """Three processors; one at a time is SIGKILLed at a random moment and a new one started."""
    run = FaultRun("books-sigkill-processor", profile, pipeline, isolated.settings)
    members = [pipeline.start_processor() for _ in range(3)]
    sim = _market(pipeline, profile, _seconds(profile), seed=31)
    _flowing(run)
    for _ in range(profile.faults):
        run.pause()
        victim = run.rng.choice([p for p in members if id(p) not in run.victims])

        def kill_and_replace(victim: ManagedProcess = victim) -> None:
            run.kill(victim)
            members.append(pipeline.start_processor())

        run.inject("SIGKILL processor", kill_and_replace)
        run.wait_recovered()
    _verdict(run, sim, isolated)


@pytest.mark.parametrize("profile", PROFILES)
def test_rebalance_storm(isolated: Env, pipeline: Pipeline, profile: Profile) -> None:
    """Processors join and leave (SIGTERM) every few seconds, between one and four members."""
    run = FaultRun("books-rebalance-storm", profile, pipeline, isolated.settings)
    members = [pipeline.start_processor() for _ in range(2)]
    sim = _market(pipeline, profile, profile.storm_s + 10, seed=32)
    _flowing(run)
    storm_ends = time.monotonic() + profile.storm_s
    while time.monotonic() < storm_ends:
        run.pause()
        alive = [p for p in members if id(p) not in run.victims]
        if len(alive) <= 1 or (len(alive) < 4 and run.rng.random() < 0.5):
            run.inject("processor joins", lambda: members.append(pipeline.start_processor()))
        else:
            victim = run.rng.choice(alive)
            run.inject("processor leaves", lambda victim=victim: run.stop(victim))
    run.wait_recovered()
    _verdict(run, sim, isolated)


# (fast variant slow too: ~36 s, and the processor's consumer meets a broker restart in
# test_processor_faults.py in every run)
@pytest.mark.parametrize(
    "profile",
    [pytest.param(FAST, id="fast", marks=pytest.mark.slow), PROFILES[1]],
)
def test_kafka_broker_restart(
    isolated: Env, local_stack: LocalStack, pipeline: Pipeline, profile: Profile
) -> None:
    """The broker is stopped (SIGTERM, controlled shutdown) and started again mid-stream, while
    ingest produces both topics and the processors apply them."""
    if local_stack.kafka_bootstrap != isolated.settings.kafka_bootstrap:
        pytest.skip("the session stack is not restartable (containers)")
    assert local_stack.kafka is not None
    broker = local_stack.kafka
    run = FaultRun("books-kafka-restart", profile, pipeline, isolated.settings)
    for _ in range(2):
        pipeline.start_processor()
    sim = _market(pipeline, profile, _seconds(profile), seed=33)
    _flowing(run)
    for _ in range(max(1, profile.faults // 3)):
        run.pause()
        run.inject("Kafka broker stop+start", broker.restart)
        run.wait_recovered(timeout=120)
    _verdict(run, sim, isolated)


@pytest.mark.parametrize("profile", PROFILES)
def test_redis_restart_empty(isolated: Env, tmp_path: Path, profile: Profile) -> None:
    """Redis restarts mid-stream without its data: the processors notice that the stored
    offsets went back and re-apply their partitions of both topics from Kafka, the books from
    the depth topic's first snapshot on."""
    server = RedisServer(tmp_path / "redis").start()
    env = Env(
        isolated.settings.model_copy(update={"redis_url": server.url}),
        {**isolated.env, "CSP_REDIS_URL": server.url},
        isolated.redis,
        isolated.workdir,
    )
    pipeline = _pipeline(env)
    run = FaultRun("books-redis-restart-empty", profile, pipeline, env.settings)
    try:
        for _ in range(2):
            pipeline.start_processor()
        sim = _market(pipeline, profile, _seconds(profile), seed=34)
        _flowing(run)
        for _ in range(max(1, profile.faults // 2)):
            run.pause()
            run.inject("Redis restart (empty)", server.restart)
            run.wait_recovered()
        _verdict(run, sim, env)
    finally:
        pipeline.stop()
        server.stop()
