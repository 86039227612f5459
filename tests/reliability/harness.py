"""The I/O side of the reliability scenarios: steady load, probes, fault bookkeeping, verdict.

A scenario builds a :class:`FaultRun` around a :class:`~cryptostream.stack.pipeline.Pipeline`,
injects faults through it (each one timed until the pipeline has recovered), and finishes with
:meth:`FaultRun.finish`: lag back to zero, the checker's comparison of Redis with the truth,
and the exit codes of every supervised child that was not a victim. The outcome is a
:class:`~cryptostream_lab.reliability.model.ScenarioResult`, appended to the report when
``RELIABILITY_REPORT_DIR`` is set (``nox -s reliability``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from cryptostream.config import Settings
from cryptostream.core.codec import decode_trade, encode_key, encode_trade
from cryptostream.core.keys import price_key
from cryptostream.core.trades import Trade
from cryptostream.kafka_clients import producer_config
from cryptostream.redisconn import RETRYABLE, make_client, stored_offsets
from cryptostream.stack.pipeline import Pipeline, SimulatorHandle, wait_for
from cryptostream.stack.supervisor import ManagedProcess
from cryptostream_lab.checker import CheckReport, check, check_books
from cryptostream_lab.reliability.gaps import GapSummary, expected_trades, id_audit, summarize
from cryptostream_lab.reliability.model import ScenarioResult
from cryptostream_lab.reliability.recovery import RecoveryTimer, caught_up
from cryptostream_lab.reliability.report import append_result
from tests.kafka_helpers import read_all

REPORT_DIR_ENV = "RELIABILITY_REPORT_DIR"
ACTIVE: list[FaultRun] = []  # runs of the current test (tests/reliability/conftest.py)
_quiet = logging.getLogger("tests.reliability.kafka")
_quiet.setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class Profile:
    """How long and how hard a scenario runs: ``fast`` in the default test run, ``full`` in
    ``nox -s reliability``."""

    name: str
    faults: int  # fault episodes
    rate: float  # trades/s of the steady load
    spacing: tuple[float, float]  # random pause between faults (s)
    storm_s: float = 10.0  # rebalance storm length


FAST = Profile("fast", faults=2, rate=400, spacing=(1.0, 3.0), storm_s=10)
FULL = Profile("full", faults=6, rate=800, spacing=(2.0, 6.0), storm_s=60)


# --- load ---------------------------------------------------------------------------------------


class SteadyProducer:
    """Trades at a steady rate straight into the topic (processor-side scenarios), from a
    thread; unique ids per symbol. Deliveries are counted, failures too (never expected)."""

    def __init__(self, settings: Settings, symbols: list[str], rate: float, seed: int = 1) -> None:
        self.settings = settings
        self.symbols = symbols
        self.rate = rate
        self.rng = random.Random(seed)
        self.producer = Producer(producer_config(settings, logger=_quiet))
        self.next_id = dict.fromkeys(symbols, 1)
        self.produced = 0
        self.acked = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-producer", daemon=True)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.acked += 1
        else:
            self.failed.append(str(err))

    def _trade(self) -> Trade:
        symbol = self.rng.choice(self.symbols)
        trade_id = self.next_id[symbol]
        self.next_id[symbol] += 1
        now_ms = time.time_ns() // 1_000_000
        return Trade(
            symbol,
            trade_id,
            f"{self.rng.uniform(1, 70000):.8f}",
            f"{self.rng.uniform(0.001, 5):.8f}",
            now_ms,
            now_ms + 1,
            self.rng.random() < 0.5,
        )

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            due = int((time.monotonic() - started) * self.rate) - self.produced
            for _ in range(max(0, due)):
                trade = self._trade()
                value = encode_trade(trade, time.time_ns() // 1000)
                while True:
                    try:
                        self.producer.produce(
                            self.settings.topic,
                            value,
                            encode_key(trade.symbol),
                            on_delivery=self._on_delivery,
                        )
                        break
                    except BufferError:
                        self.producer.poll(0.05)
                self.produced += 1
            self.producer.poll(0)
            self._stop.wait(0.02)

    def start(self) -> SteadyProducer:
        self._thread.start()
        return self

    def stop(self, flush_timeout: float = 120.0) -> None:
        """Stop producing and wait for every acknowledgement (idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        left = self.producer.flush(flush_timeout)
        assert left == 0, f"{left} trades still unacknowledged after {flush_timeout}s"
        assert not self.failed, f"{len(self.failed)} trades failed: {self.failed[:3]}"


# --- probes -------------------------------------------------------------------------------------


class Probe:
    """Kafka end offsets, the offsets Redis says were applied, the group's committed offsets."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.consumer = Consumer(
            settings.kafka.librdkafka(
                {
                    "group.id": "reliability-probe",
                    "logger": _quiet,
                }
            )
        )
        self.redis = make_client(
            settings.redis_url,
            settings.redis_cluster,
            decode_responses=True,
            socket_timeout=3,
            socket_connect_timeout=2,
        )

    def ends(self) -> dict[int, int]:
        topic = self.settings.topic
        return {
            p: self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(self.settings.partitions)
        }

    def applied(self, topic: str | None = None) -> dict[int, int]:
        """Partition -> the last applied offset the processors stored in Redis."""
        n = self.settings.partitions
        return stored_offsets(self.redis, topic or self.settings.topic, range(n), n)

    def committed(self) -> dict[int, int]:
        consumer = Consumer(
            self.settings.kafka.librdkafka(
                {
                    "group.id": self.settings.group_id,
                    "logger": _quiet,
                }
            )
        )
        try:
            tps = [TopicPartition(self.settings.topic, p) for p in range(self.settings.partitions)]
            return {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
        finally:
            consumer.close()

    def latest_ids(self, symbols: Iterable[str]) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        for symbol in symbols:
            pipe.hget(price_key(symbol, self.settings.partitions), "trade_id")
        return {s: int(v) for s, v in zip(symbols, pipe.execute(), strict=True) if v is not None}

    def close(self) -> None:
        self.consumer.close()
        self.redis.close()


def topic_trades(settings: Settings, topic: str | None = None) -> list[Trade]:
    trades = []
    for value in read_all(settings, topic or settings.topic):
        with contextlib.suppress(ValueError):  # poison records are not part of the views
            trades.append(decode_trade(value).trade)
    return trades


def gap_summary(settings: Settings) -> GapSummary | None:
    """The gap records ingest reported (None when there is no gap topic yet)."""
    topic = getattr(settings, "gap_topic", None)
    if not topic:
        return None
    try:
        return summarize(read_all(settings, topic))
    except (KafkaException, KeyError):
        return None


def simulator_truth(sim: SimulatorHandle) -> list[Trade]:
    """Every trade the simulator generated, from its REST history (run it with a ``--history``
    larger than the orders per symbol)."""
    stats: Any = sim.stats()
    trades: list[Trade] = []
    with httpx.Client(base_url=sim.rest_url, timeout=30) as client:
        for symbol, truth in stats["symbols"].items():
            if not truth["count"]:
                continue
            next_id, last_id = truth["first_trade_id"], truth["last_trade_id"]
            while next_id <= last_id:
                rows = client.get(
                    "/api/v3/historicalTrades",
                    params={"symbol": symbol, "fromId": next_id, "limit": 1000},
                ).json()
                assert rows and rows[0]["id"] == next_id, f"history of {symbol} starts later"
                for row in rows:
                    trades.append(
                        Trade(
                            symbol,
                            row["id"],
                            row["price"],
                            row["qty"],
                            row["time"],
                            row["time"],
                            row["isBuyerMaker"],
                        )
                    )
                next_id = rows[-1]["id"] + 1
    return trades


# --- the run ------------------------------------------------------------------------------------


@dataclass
class FaultRun:
    """One scenario: fault injection with recovery timing, then the verdict."""

    scenario: str
    profile: Profile
    pipeline: Pipeline
    settings: Settings
    result: ScenarioResult = field(init=False)
    probe: Probe = field(init=False)
    timer: RecoveryTimer[Any] = field(default_factory=RecoveryTimer)
    victims: set[int] = field(default_factory=set)  # ids of processes we killed or stopped
    started: float = field(default_factory=time.monotonic)
    recorded: bool = False
    stopped: bool = False
    # what recovery is measured on: Redis's applied offsets per partition by default; faults
    # upstream of Kafka use each symbol's latest trade id in Redis
    progress: Callable[[], Mapping[Any, int]] | None = None
    before_stop: list[Callable[[], None]] = field(default_factory=list)  # e.g. scrape metrics

    def __post_init__(self) -> None:
        self.result = ScenarioResult(self.scenario, self.profile.name)
        ACTIVE.append(self)
        self.probe = Probe(self.settings)
        self.rng = random.Random(f"{self.scenario}/{self.profile.name}")

    def abort(self, why: str) -> None:
        """A scenario that failed half-way still gets its row in the report."""
        if self.recorded:
            return
        self.result.notes = f"{self.result.notes} aborted: {why[:300]}".strip()
        with contextlib.suppress(Exception):
            self.stop_all()
        self.result.duration_s = round(time.monotonic() - self.started, 1)
        self.result.recovery_s = [round(d, 2) for d in self.timer.durations]
        self.recorded = True
        record(self.result)

    # faults
    def pause(self, seconds: float | None = None) -> None:
        """A (random) pause between faults, watching that nobody died and timing recovery."""
        until = time.monotonic() + (
            seconds if seconds is not None else self.rng.uniform(*self.profile.spacing)
        )
        while time.monotonic() < until:
            self.assert_others_alive()
            self.observe()
            time.sleep(0.1)

    def current(self) -> Mapping[Any, int]:
        return self.progress() if self.progress is not None else self.probe.applied()

    def observe(self) -> None:
        if self.timer.pending:
            with contextlib.suppress(redis.RedisError, *RETRYABLE):
                self.timer.observe(time.monotonic(), self.current())

    def inject(
        self,
        kind: str,
        action: Callable[[], None],
        goal_after: Callable[[], Mapping[Any, int]] | None = None,
    ) -> None:
        """Run ``action`` (the fault); recovery is timed from here until the goal is reached:
        by default every record in Kafka now applied; with ``goal_after``, what it returns once
        the action is done (upstream faults: trades generated after the restart are visible)."""
        goal = None if goal_after is not None else self.probe.ends()
        now = time.monotonic()
        action()
        if goal_after is not None:
            goal = goal_after()
        assert goal is not None
        self.timer.start(now, goal)
        self.result.add_fault(kind)

    def kill(self, process: ManagedProcess) -> None:
        self.victims.add(id(process))
        process.kill()

    def stop(self, process: ManagedProcess) -> None:
        """A graceful stop (SIGTERM): the process must exit with code 0."""
        self.victims.add(id(process))
        process.stop()
        if process.returncode() not in (0, -signal.SIGTERM):
            self.result.unexpected_exits.append(f"{process.name}: {process.returncode()}")

    def wait_recovered(self, timeout: float = 90.0) -> None:
        def recovered() -> bool:
            self.assert_others_alive()
            return not self.timer.pending or self.timer.observe(time.monotonic(), self.current())

        if not self.timer.pending:
            return

        wait_for(recovered, timeout, f"{self.scenario}: recovery after the fault", interval=0.1)

    def assert_others_alive(self) -> None:
        for process in self.pipeline.group.processes:
            if id(process) not in self.victims and process.proc is not None and not process.alive():
                raise AssertionError(
                    f"{process.name} died (exit code {process.returncode()}) though it was not a "
                    f"victim; last lines of {process.log_path}:\n{process.log_tail()}"
                )

    # verdict
    def wait_drained(self, timeout: float = 120.0) -> None:
        """Lag back to zero: Redis applied everything in Kafka, and the group committed it."""

        def drained() -> bool:
            self.assert_others_alive()
            ends = self.probe.ends()
            if not caught_up(self.probe.applied(), ends):
                return False
            committed = self.probe.committed()
            return all(committed.get(p) == end for p, end in ends.items() if end > 0)

        try:
            wait_for(drained, timeout, f"{self.scenario}: consumer lag back to zero", 0.25)
            self.result.lag_zero = True
        except TimeoutError as exc:
            self.result.notes += f" {exc}"

    def finish(
        self,
        truth: list[Trade],
        gaps: GapSummary | None = None,
        topic_ids: list[tuple[str, int]] | None = None,
    ) -> ScenarioResult:
        """Compare Redis with the truth (minus unrecoverable gaps), stop every process and
        check that only the victims died; record and return the result."""
        expected = expected_trades(truth, gaps) if gaps is not None else truth
        if gaps is not None:
            self.result.gaps_reported = gaps.unrecoverable_count
            self.result.gaps_unresolved = len(gaps.unresolved)
            self.result.gaps_invalid = gaps.invalid
            if gaps.unresolved:
                self.result.notes += (
                    f" {len(gaps.unresolved)} gaps detected but never resolved, e.g. "
                    f"{gaps.unresolved[:3]}."
                )
            if gaps.invalid:
                self.result.notes += f" {gaps.invalid} invalid gap records: {gaps.problems[:3]}."
        report = check(self.probe.redis, expected, self.settings.candle_history_minutes)
        self.result.records_checked = report.records
        self.result.lost = report.lost
        self.result.duplicated = report.duplicated
        self.result.wrong = len(report.discrepancies)
        if report.discrepancies:
            self.result.notes += " " + "; ".join(map(str, report.discrepancies[:3]))
        if topic_ids is not None:
            wanted: dict[str, list[int]] = {}
            for trade in expected:
                wanted.setdefault(trade.symbol, []).append(trade.trade_id)
            missing, doubled, unexpected = id_audit(wanted, topic_ids)
            self.result.topic_missing = missing
            self.result.topic_duplicated = doubled
            self.result.topic_unexpected = unexpected
            if missing or doubled or unexpected:
                self.result.notes += (
                    f" raw.trades vs truth: {missing} missing, {doubled} duplicated, "
                    f"{unexpected} unexpected."
                )
        self.observe()
        self.stop_all()
        self.result.duration_s = round(time.monotonic() - self.started, 1)
        self.result.recovery_s = [round(d, 2) for d in self.timer.durations]
        if self.timer.pending:
            self.result.unrecovered = True
            self.result.notes += " the last fault episode never recovered."
        self.result.notes = self.result.notes.strip()
        self.recorded = True
        record(self.result)
        return self.result

    def stop_all(self) -> None:
        """Graceful stop (SIGTERM) of every child; survivors must exit with code 0."""
        if self.stopped:
            return
        self.stopped = True
        for hook in self.before_stop:
            hook()
        survivors = [p for p in self.pipeline.group.processes if id(p) not in self.victims]
        dead_before = {id(p) for p in survivors if p.proc is not None and not p.alive()}
        self.pipeline.stop()
        self.probe.close()
        for process in survivors:
            rc = process.returncode()
            # 0, or death by the SIGTERM itself after a graceful shutdown (uvicorn re-raises it)
            if id(process) in dead_before or rc not in (0, -signal.SIGTERM, None):
                self.result.unexpected_exits.append(f"{process.name}: {rc}")


def sim_last_ids(sim: SimulatorHandle) -> dict[str, int]:
    """Each symbol's last generated trade id + 1 (a recovery goal: fresh up to here)."""
    stats: Any = sim.stats()
    return {s: t["last_trade_id"] + 1 for s, t in stats["symbols"].items() if t["count"]}


def settle_and_finish(run: FaultRun, sim: SimulatorHandle, settings: Settings) -> ScenarioResult:
    """Wait for the simulator to finish, for ingest to resolve its gaps and for the views to be
    as fresh as the simulator's last trade; then the verdict."""
    wait_for(
        lambda: run.assert_others_alive() or sim.stats()["done"],
        300,
        "the simulator to emit all its trades",
    )
    done_at = time.monotonic()
    goal = sim_last_ids(sim)

    def settled() -> bool:
        run.assert_others_alive()
        gaps = gap_summary(settings)
        if gaps is not None and gaps.unresolved:
            return False
        latest = run.probe.latest_ids(goal)
        excused = gaps.excused if gaps is not None else (lambda s, i: False)
        return all(latest.get(s, 0) >= last - 1 or excused(s, last - 1) for s, last in goal.items())

    try:
        wait_for(settled, 120, "gaps resolved and the views up to the last trade", 0.5)
    except TimeoutError as exc:
        run.result.settle_timeout = True
        run.result.notes += f" {exc}."
    run.result.notes += f" views complete {time.monotonic() - done_at:.1f}s after the last trade."
    seen: list[dict[int, int]] = []

    def idle() -> bool:  # no record produced for 2 s (a late backfill would race the topic read)
        ends = run.probe.ends()
        unchanged = bool(seen) and seen[-1] == ends
        seen.append(ends)
        return unchanged

    wait_for(idle, 60, "ingest to go idle (topic end offsets unchanged for 2 s)", interval=2.0)
    run.wait_drained()
    topic_ids = []
    for value in read_all(settings, settings.topic):
        trade = decode_trade(value).trade
        topic_ids.append((trade.symbol, trade.trade_id))
    return run.finish(simulator_truth(sim), gap_summary(settings), topic_ids)


# --- order books (raw.depth) --------------------------------------------------------------------


def depth_ends(probe: Probe) -> dict[int, int]:
    topic = probe.settings.depth_topic
    return {
        p: probe.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
        for p in range(probe.settings.partitions)
    }


def depth_applied(probe: Probe) -> dict[int, int]:
    return probe.applied(probe.settings.depth_topic)


def books_verdict(run: FaultRun, timeout: float = 120.0) -> CheckReport:
    """Once ingest stopped producing depth records and Redis applied all of them, every book in
    Redis against ``check_books``'s rebuild from the depth topic; a divergence counts as wrong
    entries of the run's result (with the first ones in its notes)."""
    seen: list[tuple[dict[int, int], bool]] = []

    def drained() -> bool:
        run.assert_others_alive()
        ends = depth_ends(run.probe)
        done = caught_up(depth_applied(run.probe), ends)
        seen.append((ends, done))
        # idle for two polls in a row (1 s apart) and all of it applied
        return len(seen) >= 2 and seen[-2] == (ends, True) and done

    try:
        wait_for(drained, timeout, f"{run.scenario}: every depth record applied", interval=1.0)
    except TimeoutError as exc:
        run.result.notes += f" books: {exc}."
    report = check_books(run.probe.redis, read_all(run.settings, run.settings.depth_topic))
    run.result.wrong += len(report.discrepancies)
    run.result.notes += f" books: {report.records} depth records, {report.symbols} symbols"
    run.result.notes += f", {len(report.discrepancies)} wrong." if report.discrepancies else "."
    if report.discrepancies:
        run.result.notes += " " + "; ".join(map(str, report.discrepancies[:3]))
    return report


def settle_books_and_finish(
    run: FaultRun, sim: SimulatorHandle, settings: Settings
) -> tuple[ScenarioResult, CheckReport]:
    """:func:`settle_and_finish` (the trades verdict), with the books verdict taken just before
    the processes stop, in the same result row."""
    reports: list[CheckReport] = []
    armed = [True]

    def books() -> None:
        if armed[0]:  # not on an aborted run's way out
            reports.append(books_verdict(run))

    run.before_stop.insert(0, books)
    try:
        result = settle_and_finish(run, sim, settings)
    except BaseException:
        armed[0] = False
        raise
    (report,) = reports
    return result, report


def record(result: ScenarioResult) -> None:
    folder = os.environ.get(REPORT_DIR_ENV)
    if folder:
        append_result(Path(folder) / "results.jsonl", result)
