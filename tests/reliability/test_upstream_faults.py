"""Faults with ingest in the path: simulator -> ingest -> Kafka -> processors -> Redis.

Truth: every trade the simulator generated (its REST history), minus the ranges ingest reported
as unrecoverable on the gap topic (the contract between ingest and everything downstream).
Scenarios: WebSocket faults from the simulator (drops, stalls, malformed frames, gaps,
duplicates), SIGKILL of ingest, and a broker restart while ingest produces.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cryptostream.stack.local import LocalStack
from cryptostream.stack.pipeline import Pipeline, SimulatorHandle, wait_for
from cryptostream.stack.supervisor import free_port
from tests.conftest import Env
from tests.reliability.harness import (
    FAST,
    FULL,
    FaultRun,
    Profile,
    settle_and_finish,
    sim_last_ids,
)

pytestmark = pytest.mark.reliability

SYMBOLS = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT"]
PROFILES = [pytest.param(FAST, id="fast"), pytest.param(FULL, id="full", marks=pytest.mark.slow)]
# The default test run keeps one upstream scenario (the WebSocket faults); the others run in full
# only (`nox -s reliability`), which keeps the default run's reliability share near 2 minutes.
FULL_ONLY = [pytest.param(FULL, id="full", marks=pytest.mark.slow)]


@pytest.fixture
def pipeline(isolated: Env) -> Iterator[Pipeline]:
    pipe = Pipeline(
        isolated.workdir,
        isolated.settings.kafka_bootstrap,
        isolated.settings.redis_url,
        SYMBOLS,
        extra_env=isolated.env,
    )
    try:
        yield pipe
    finally:
        pipe.stop()


def _start(
    pipeline: Pipeline,
    profile: Profile,
    seconds: float,
    sim_args: list[str],
    seed: int,
    **ingest_env: str,
) -> SimulatorHandle:
    """Simulator (a fixed number of trades at the profile's rate), ingest, two processors."""
    total = int(profile.rate * seconds)
    sim = pipeline.start_simulator(
        [
            "--symbols",
            ",".join(SYMBOLS),
            "--rate",
            str(profile.rate),
            "--seed",
            str(seed),
            "--max-trades",
            str(total),
            "--history",
            "1000000",
            "--wait-for-subscribers",
            "1",
            # REST limits off: the verdict reads the whole trade history back from the simulator's
            # REST API, from the same address as ingest, and would be limited and then banned
            "--rest-weight-limit",
            "0",
            *sim_args,
        ]
    )
    for _ in range(2):
        pipeline.start_processor()
    # A quick quiet-symbol check: a finite run ends, and no later trade reveals a loss at its end.
    pipeline.start_ingest(sim.ws_url, **{"CSP_INGEST_TAIL_CHECK_S": "2", **ingest_env})
    return sim


@pytest.mark.parametrize("profile", PROFILES)
def test_websocket_faults(isolated: Env, pipeline: Pipeline, profile: Profile) -> None:
    """Drops (TCP abort), malformed frames, skipped trades, reordered and duplicated frames on
    the first connections; ingest dedupes, reconnects, backfills over REST or reports the gap.

    The faulty connections carry at most half of the stream, so most losses are revealed by the
    next trade id of their symbol; a loss in the final seconds (the last reconnect may come after
    the simulator stopped: ingest's backoff grows with each drop) is found by ingest's
    quiet-symbol check against REST's newest id.
    """
    seconds = 15 if profile is FAST else 90
    faulty = 2 if profile is FAST else 4
    sim = _start(
        pipeline,
        profile,
        seconds,
        [
            "--fault-drop-after-messages",
            str(int(profile.rate * seconds / (2 * faulty))),
            "--fault-malformed-rate",
            "0.01",
            "--fault-duplicate-rate",
            "0.02",
            "--fault-gap-rate",
            "0.01",
            "--fault-reorder-rate",
            "0.01",
            "--fault-connections",
            str(faulty),
            "--fault-seed",
            "5",
        ],
        seed=21,
        CSP_INGEST_METRICS_PORT=str(port := free_port()),
    )
    run = FaultRun("websocket-faults", profile, pipeline, isolated.settings)
    _settle_and_finish_with_counts(run, sim, isolated, port)


def _settle_and_finish_with_counts(
    run: FaultRun, sim: SimulatorHandle, env: Env, metrics_port: int
) -> None:
    """The verdict, with the faults as ingest saw them (the simulator forgets the counts of
    connections that are gone): reconnects, duplicates dropped, malformed frames dead-lettered,
    skipped trade ids (gap trades) and how many of them were backfilled."""
    wait_for(lambda: sim.stats()["done"], 300, "the simulator to emit all its trades")
    stats: Any = sim.stats()
    run.result.add_fault("connections", int(stats["connections_total"]))

    def scrape() -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                label = sample.labels.get("status", "")
                out[sample.name + (f":{label}" if label else "")] = sample.value
        return out

    def count_faults() -> None:  # ingest's counters, read before the processes stop
        with contextlib.suppress(httpx.HTTPError):
            seen = scrape()
            for kind, name in (
                ("reconnects", "csp_ingest_reconnects_total"),
                ("duplicate trades dropped", "csp_ingest_duplicates_total"),
                ("frames to DLQ", "csp_ingest_dead_letters_total"),
                ("gap trades", "csp_ingest_gap_trades_total:detected"),
                ("trades backfilled", "csp_ingest_backfilled_trades_total"),
            ):
                if seen.get(name):
                    run.result.add_fault(kind, int(seen[name]))

    run.before_stop.append(count_faults)
    result = settle_and_finish(run, sim, env.settings)
    assert result.ok, f"{result.verdict()}: {result.notes}"


@pytest.mark.parametrize("profile", FULL_ONLY)
def test_websocket_stall(isolated: Env, pipeline: Pipeline, profile: Profile) -> None:
    """The stream stalls (connection open, nothing sent): ingest's silence watchdog replaces
    the connection and backfills what the stall skipped."""
    seconds = 20 if profile is FAST else 60
    sim = _start(
        pipeline,
        profile,
        seconds,
        [
            "--fault-stall-after-messages",
            str(int(profile.rate * 4)),
            "--fault-connections",
            "1" if profile is FAST else "3",
        ],
        seed=22,
        CSP_INGEST_SILENCE_S="3",
        CSP_INGEST_METRICS_PORT=str(port := free_port()),
    )
    run = FaultRun("websocket-stall", profile, pipeline, isolated.settings)
    _settle_and_finish_with_counts(run, sim, isolated, port)


@pytest.mark.parametrize("profile", FULL_ONLY)
def test_sigkill_ingest(isolated: Env, pipeline: Pipeline, profile: Profile) -> None:
    """Ingest is SIGKILLed at random moments and started again, with stream faults on every
    connection: it resumes from what raw.trades and raw.trades.gaps hold, so its downtime, the
    holes it had not reported yet and its unfinished backfills become backfilled (or reported)
    gaps."""
    seconds = 25 if profile is FAST else 90
    sim = _start(
        pipeline,
        profile,
        seconds,
        [
            "--fault-drop-after-messages",
            str(int(profile.rate * seconds / 8)),
            "--fault-malformed-rate",
            "0.01",
            "--fault-duplicate-rate",
            "0.02",
            "--fault-gap-rate",
            "0.01",
            "--fault-reorder-rate",
            "0.01",
            "--fault-seed",
            "6",
        ],
        seed=23,
    )
    run = FaultRun("sigkill-ingest", profile, pipeline, isolated.settings)
    run.progress = lambda: run.probe.latest_ids(SYMBOLS)
    ingest = pipeline.group.processes[-1]
    wait_for(
        lambda: run.assert_others_alive() or run.probe.latest_ids(SYMBOLS),
        60,
        "the first trades in Redis",
    )
    for _ in range(profile.faults):
        run.pause()
        if sim.stats()["done"]:
            break

        def kill_and_restart() -> None:
            nonlocal ingest
            run.kill(ingest)
            ingest = pipeline.start_ingest(sim.ws_url, CSP_INGEST_TAIL_CHECK_S="2")

        run.inject("SIGKILL ingest", kill_and_restart, goal_after=lambda: sim_last_ids(sim))
        run.wait_recovered()
    result = settle_and_finish(run, sim, isolated.settings)
    assert result.ok, f"{result.verdict()}: {result.notes}"


@pytest.mark.parametrize("profile", FULL_ONLY)
def test_kafka_restart_with_ingest(
    isolated: Env, local_stack: LocalStack, pipeline: Pipeline, profile: Profile
) -> None:
    """The broker restarts while ingest produces: its producer buffers and retries (idempotent),
    and whatever overflows is reported as a gap."""
    if local_stack.kafka_bootstrap != isolated.settings.kafka_bootstrap:
        pytest.skip("the session stack is not restartable (containers)")
    assert local_stack.kafka is not None
    broker = local_stack.kafka
    seconds = 30 if profile is FAST else 80
    sim = _start(pipeline, profile, seconds, [], seed=24)
    run = FaultRun("kafka-restart-ingest", profile, pipeline, isolated.settings)
    run.progress = lambda: run.probe.latest_ids(SYMBOLS)
    wait_for(
        lambda: run.assert_others_alive() or run.probe.latest_ids(SYMBOLS),
        60,
        "the first trades in Redis",
    )
    for _ in range(1 if profile is FAST else 2):
        run.pause()
        run.inject("Kafka broker stop+start", broker.restart, goal_after=lambda: sim_last_ids(sim))
        run.wait_recovered(timeout=120)
    result = settle_and_finish(run, sim, isolated.settings)
    assert result.ok, f"{result.verdict()}: {result.notes}"
