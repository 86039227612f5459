"""Broker faults on a replicated cluster (issue 20): three KRaft nodes, topics at replication
factor 3 with ``min.insync.replicas=2``, simulator -> ingest -> Kafka -> two processors -> Redis.

Truth: every trade the simulator generated (its REST history). The verdict is the one every
upstream scenario has (``settle_and_finish``: the checker's view comparison, the raw.trades id
audit, lag back to zero, no unexpected exit), made stricter: a broker fault on a replicated
cluster must cost nothing, so not one trade may be excused as an unrecoverable gap either.

Scenarios (``nox -s reliability``; each starts its own cluster):

- the broker leading most partitions of raw.trades is SIGKILLed mid-stream, twice (restarted
  in between): new leaders are elected among the in-sync replicas;
- a broker (not the active controller) is down for a while and comes back: the ISR of every
  partition shrinks to the two survivors, then grows back to three (both asserted through the
  Admin API's metadata);
- the active controller (the KRaft quorum leader, from its ``quorum-state``) is SIGKILLed: the
  two other voters elect a new one. In combined mode it is a broker too, so its partitions also
  fail over.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cryptostream.stack.cluster import KafkaCluster, PartitionState
from cryptostream.stack.pipeline import Pipeline, SimulatorHandle, wait_for
from tests.reliability.cluster_stack import ClusterEnv, cluster_env
from tests.reliability.harness import FaultRun, Profile, settle_and_finish, sim_last_ids

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.integration]

SYMBOLS = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT"]
# Lighter than FULL: three JVMs share the two cores with the pipeline.
CLUSTER = Profile("full", faults=2, rate=300, spacing=(3.0, 6.0))
FAILOVER_TIMEOUT_S = 45.0  # fencing (6 s session) + election, with slack for a loaded machine


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterEnv]:
    with cluster_env(tmp_path) as ce:
        yield ce


@pytest.fixture
def pipeline(cluster: ClusterEnv) -> Iterator[Pipeline]:
    env = cluster.env
    pipe = Pipeline(
        env.workdir,
        env.settings.kafka_bootstrap,
        env.settings.redis_url,
        SYMBOLS,
        extra_env=env.env,
    )
    try:
        yield pipe
    finally:
        pipe.stop()


def _start(pipeline: Pipeline, seconds: float, seed: int) -> SimulatorHandle:
    total = int(CLUSTER.rate * seconds)
    sim = pipeline.start_simulator(
        [
            "--symbols",
            ",".join(SYMBOLS),
            "--rate",
            str(CLUSTER.rate),
            "--seed",
            str(seed),
            "--max-trades",
            str(total),
            "--history",
            "1000000",
            "--wait-for-subscribers",
            "1",
            "--rest-weight-limit",
            "0",
        ]
    )
    for _ in range(2):
        pipeline.start_processor()
    pipeline.start_ingest(sim.ws_url, CSP_INGEST_TAIL_CHECK_S="2")
    return sim


def _run(cluster: ClusterEnv, pipeline: Pipeline, name: str) -> FaultRun:
    run = FaultRun(name, CLUSTER, pipeline, cluster.env.settings)
    run.progress = lambda: run.probe.latest_ids(SYMBOLS)
    wait_for(
        lambda: run.assert_others_alive() or run.probe.latest_ids(SYMBOLS),
        90,
        "the first trades in Redis",
    )
    return run


def _topics(cluster: ClusterEnv) -> list[str]:
    s = cluster.env.settings
    return [s.topic, s.dlq_topic, s.gap_topic]


def _wait_partitions(
    cluster: ClusterEnv,
    condition: Callable[[PartitionState], bool],
    what: str,
    run: FaultRun,
    timeout: float = FAILOVER_TIMEOUT_S,
) -> float:
    """Until ``condition`` holds for every partition of the three topics; the seconds it took."""
    t0 = time.monotonic()
    last: dict[str, dict[int, PartitionState]] = {}

    def holds() -> bool:
        run.assert_others_alive()
        for topic in _topics(cluster):
            last[topic] = cluster.cluster.partitions(topic)
        return all(condition(s) for states in last.values() for s in states.values())

    try:
        wait_for(holds, timeout, what, interval=0.25)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; partitions: {last}") from None
    return time.monotonic() - t0


def _finish(run: FaultRun, sim: SimulatorHandle, cluster: ClusterEnv) -> None:
    result = settle_and_finish(run, sim, cluster.env.settings)
    assert result.ok, f"{result.verdict()}: {result.notes}"
    assert result.gaps_reported == 0, (
        f"{result.gaps_reported} trades reported unrecoverable: a broker fault on a replicated "
        f"cluster must lose nothing ({result.notes})"
    )


def _restart(run: FaultRun, kafka: KafkaCluster, node: int, cluster: ClusterEnv) -> None:
    """Start the node again; every partition gets its three in-sync replicas back."""
    kafka.start_node(node)
    took = _wait_partitions(
        cluster, lambda s: len(s.isr) == 3, f"node {node} back in every ISR", run, timeout=90
    )
    run.result.notes += f" node {node} back in every ISR {took:.1f}s after its start."


def test_sigkill_partition_leader(cluster: ClusterEnv, pipeline: Pipeline) -> None:
    """SIGKILL of the broker that leads most raw.trades partitions, mid-stream, twice."""
    kafka, topic = cluster.cluster, cluster.env.settings.topic
    sim = _start(pipeline, seconds=70, seed=31)
    run = _run(cluster, pipeline, "cluster-sigkill-leader")
    for _ in range(CLUSTER.faults):
        run.pause()
        leaders = Counter(kafka.leaders(topic).values())
        victim, led = leaders.most_common(1)[0]
        run.inject(
            f"SIGKILL partition leader ({led} of {sum(leaders.values())} partitions)",
            lambda victim=victim: kafka.kill(victim),
            goal_after=lambda: sim_last_ids(sim),
        )
        took = _wait_partitions(
            cluster,
            lambda s, v=victim: s.leader not in (v, -1) and v not in s.isr,
            f"new leaders and ISR without node {victim}",
            run,
        )
        run.result.notes += f" node {victim} killed: new leaders after {took:.1f}s."
        run.wait_recovered(timeout=120)
        _restart(run, kafka, victim, cluster)
    _finish(run, sim, cluster)


def test_broker_down_and_back(cluster: ClusterEnv, pipeline: Pipeline) -> None:
    """A broker (not the controller) crashes and stays down for 12 s while the pipeline runs on
    two replicas (min.insync.replicas=2 still met); the ISR shrinks, then expands on its return."""
    kafka = cluster.cluster
    sim = _start(pipeline, seconds=60, seed=32)
    run = _run(cluster, pipeline, "cluster-broker-down-and-back")
    run.pause()
    controller = kafka.active_controller()
    victim = next(n for n in (3, 2, 1) if n != controller)
    run.inject(
        f"broker down 12 s (node {victim})",
        lambda: kafka.kill(victim),
        goal_after=lambda: sim_last_ids(sim),
    )
    took = _wait_partitions(
        cluster,
        lambda s: victim not in s.isr and len(s.isr) == 2,
        f"ISR shrunk to the two survivors of node {victim}",
        run,
    )
    run.result.notes += f" ISR shrank to 2 after {took:.1f}s."
    assert kafka.live_brokers() == {1, 2, 3} - {victim}
    run.wait_recovered(timeout=120)  # the views keep up while the broker is still down
    run.pause(max(0.0, 12.0 - took))
    _restart(run, kafka, victim, cluster)
    assert kafka.live_brokers() == {1, 2, 3}
    _finish(run, sim, cluster)


def test_controller_failover(cluster: ClusterEnv, pipeline: Pipeline) -> None:
    """SIGKILL of the active KRaft controller; the other two voters elect a new one."""
    kafka = cluster.cluster
    sim = _start(pipeline, seconds=60, seed=33)
    run = _run(cluster, pipeline, "cluster-controller-failover")
    run.pause()
    old = kafka.active_controller()
    run.inject(
        f"SIGKILL active controller (node {old})",
        lambda: kafka.kill(old),
        goal_after=lambda: sim_last_ids(sim),
    )
    t0 = time.monotonic()
    new: list[int] = []

    def elected() -> bool:
        run.assert_others_alive()
        new[:] = [kafka.active_controller()]
        return new[0] != old

    wait_for(elected, FAILOVER_TIMEOUT_S, f"a new controller after node {old}", interval=0.25)
    run.result.notes += f" controller {old} -> {new[0]} in {time.monotonic() - t0:.1f}s."
    _wait_partitions(cluster, lambda s: s.leader not in (old, -1), f"leaders off node {old}", run)
    run.wait_recovered(timeout=120)
    _restart(run, kafka, old, cluster)
    _finish(run, sim, cluster)
