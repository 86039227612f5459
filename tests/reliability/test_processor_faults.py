"""Faults downstream of Kafka, under a steady load produced straight into the topic.

Truth: the topic's content (every trade in it must be applied exactly once). Scenarios: SIGKILL
of processors at random moments, a rebalance storm, a broker restart, a Redis restart with and
without its data.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cryptostream.stack.local import LocalStack
from cryptostream.stack.pipeline import Pipeline, wait_for
from cryptostream.stack.redis_server import RedisServer
from cryptostream.stack.supervisor import ManagedProcess
from tests.conftest import Env
from tests.reliability.harness import FAST, FULL, FaultRun, Profile, SteadyProducer, topic_trades

pytestmark = pytest.mark.reliability

SYMBOLS = [f"REL{i}USDT" for i in range(24)]  # spread over all 8 partitions
PROFILES = [pytest.param(FAST, id="fast"), pytest.param(FULL, id="full", marks=pytest.mark.slow)]


def _pipeline(env: Env, **extra: str) -> Pipeline:
    return Pipeline(
        env.workdir,
        env.settings.kafka_bootstrap,
        env.settings.redis_url,
        SYMBOLS,
        extra_env={**env.env, **extra},
    )


def _flowing(run: FaultRun) -> None:
    """Wait until records are being applied before the first fault."""
    wait_for(
        lambda: run.assert_others_alive() or sum(run.probe.applied().values()) > 0,
        60,
        "the first records in Redis",
    )


@pytest.fixture
def scenario(isolated: Env) -> Iterator[tuple[Pipeline, list[SteadyProducer]]]:
    """A pipeline and a slot for the load, both cleaned up on every exit path."""
    pipeline = _pipeline(isolated)
    loads: list[SteadyProducer] = []
    try:
        yield pipeline, loads
    finally:
        for load in loads:
            load._stop.set()
        pipeline.stop()


def _finish(run: FaultRun, load: SteadyProducer, env: Env) -> None:
    load.stop()
    run.wait_drained()
    result = run.finish(topic_trades(env.settings))
    assert load.acked == result.records_checked, (load.acked, result.records_checked)
    assert result.ok, f"{result.verdict()}: {result.notes}"


@pytest.mark.parametrize("profile", PROFILES)
def test_sigkill_processor_at_random_moments(
    isolated: Env, scenario: tuple[Pipeline, list[SteadyProducer]], profile: Profile
) -> None:
    """Three processors; one at a time is SIGKILLed at a random moment and a new one started."""
    pipeline, loads = scenario
    run = FaultRun("sigkill-processor", profile, pipeline, isolated.settings)
    members = [pipeline.start_processor() for _ in range(3)]
    load = SteadyProducer(isolated.settings, SYMBOLS, profile.rate, seed=11).start()
    loads.append(load)
    _flowing(run)
    for _ in range(profile.faults):
        run.pause()
        victim = run.rng.choice([p for p in members if id(p) not in run.victims])

        def kill_and_replace(victim: ManagedProcess = victim) -> None:
            run.kill(victim)
            members.append(pipeline.start_processor())

        run.inject("SIGKILL processor", kill_and_replace)
        run.wait_recovered()
    _finish(run, load, isolated)


@pytest.mark.parametrize("profile", PROFILES)
def test_rebalance_storm(
    isolated: Env, scenario: tuple[Pipeline, list[SteadyProducer]], profile: Profile
) -> None:
    """Processors join and leave (SIGTERM) every few seconds, between one and four members."""
    pipeline, loads = scenario
    run = FaultRun("rebalance-storm", profile, pipeline, isolated.settings)
    members = [pipeline.start_processor() for _ in range(2)]
    load = SteadyProducer(isolated.settings, SYMBOLS, profile.rate, seed=12).start()
    loads.append(load)
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
    _finish(run, load, isolated)


@pytest.mark.parametrize("profile", PROFILES)
def test_kafka_broker_restart(
    isolated: Env,
    local_stack: LocalStack,
    scenario: tuple[Pipeline, list[SteadyProducer]],
    profile: Profile,
) -> None:
    """The broker is stopped (SIGTERM, controlled shutdown) and started again mid-stream."""
    if local_stack.kafka_bootstrap != isolated.settings.kafka_bootstrap:
        pytest.skip("the session stack is not restartable (containers)")
    assert local_stack.kafka is not None
    broker = local_stack.kafka
    pipeline, loads = scenario
    run = FaultRun("kafka-restart", profile, pipeline, isolated.settings)
    for _ in range(2):
        pipeline.start_processor()
    load = SteadyProducer(isolated.settings, SYMBOLS, profile.rate, seed=13).start()
    loads.append(load)
    _flowing(run)
    for _ in range(max(1, profile.faults // 3)):
        run.pause()
        run.inject("Kafka broker stop+start", broker.restart)
        run.wait_recovered(timeout=120)
    _finish(run, load, isolated)


@pytest.mark.parametrize(
    ("persistent", "profile"),
    [
        pytest.param(False, FAST, id="empty-fast"),
        pytest.param(True, FULL, id="persistent-full", marks=pytest.mark.slow),
        pytest.param(False, FULL, id="empty-full", marks=pytest.mark.slow),
    ],
)
def test_redis_restart(isolated: Env, tmp_path: Path, persistent: bool, profile: Profile) -> None:
    """Redis restarts mid-stream: from its append-only file (nothing lost), or empty, in which
    case the processors notice that the stored offsets went back and re-apply their partitions
    from the topic by themselves (no `csp rebuild` needed)."""
    extra = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else []
    server = RedisServer(tmp_path / "redis", extra_args=extra).start()
    env = Env(
        isolated.settings.model_copy(update={"redis_url": server.url}),
        {**isolated.env, "CSP_REDIS_URL": server.url},
        isolated.redis,
        isolated.workdir,
    )
    pipeline = _pipeline(env)
    name = "redis-restart-" + ("persistent" if persistent else "empty")
    run = FaultRun(name, profile, pipeline, env.settings)
    load = SteadyProducer(env.settings, SYMBOLS, profile.rate, seed=14)
    try:
        for _ in range(2):
            pipeline.start_processor()
        load.start()
        _flowing(run)
        for i in range(max(1 if persistent else 2, profile.faults // 2)):
            run.pause()
            if not persistent and i % 2 == 1:
                # Idle partitions too: no new record arrives to reveal the loss.
                load.stop()
                run.inject("Redis restart (empty), load stopped", server.restart)
                run.wait_recovered()
                load = SteadyProducer(env.settings, SYMBOLS, profile.rate, seed=100 + i)
                load.next_id = {s: 10_000_000 * i for s in SYMBOLS}
                load.start()
                continue
            kind = "Redis restart " + ("(AOF)" if persistent else "(empty)")
            run.inject(kind, server.restart)
            run.wait_recovered()
        load.stop()
        run.wait_drained()
        result = run.finish(topic_trades(env.settings))
        assert result.ok, f"{result.verdict()}: {result.notes}"
    finally:
        load._stop.set()
        pipeline.stop()
        server.stop()
