"""Run an experiment on the local stack (or given Kafka/Redis) and write results.json.

For every repetition and processor count the runner uses a fresh topic and consumer group and an
empty Redis, starts the processors, waits until the group is stable with every partition
assigned, then runs the fixed-rate trials (open-model load; latency, lag, throughput, CPU and
memory sampled over time), drains, takes a checksum of the views, and finally searches for the
highest rate the processors sustain (lag not growing). Replays run the full path, one fresh group
per speed. Every child process belongs to a process group stopped on every exit path (Ctrl-C,
SIGTERM, errors).
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import redis
from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cryptostream.config import Settings
from cryptostream.core.keys import price_key
from cryptostream.kafka_connection import KafkaConnection
from cryptostream.stack.kafka import resolve_kafka_jars
from cryptostream.stack.local import LocalStack
from cryptostream.stack.pipeline import Pipeline, wait_for
from cryptostream.stack.supervisor import (
    ProcessGroup,
    StackError,
    sigterm_as_keyboard_interrupt,
)
from cryptostream.topics import create_topics, required_topics
from cryptostream_lab.harness import ceilings, environment, stats
from cryptostream_lab.harness.cgroups import PERIOD_US, CpuBudgets, open_budgets, throttled_share
from cryptostream_lab.harness.drivers import (
    GroupRun,
    LocalWorkers,
    TrialDriver,
    TrialOptions,
    WorkerProcess,
    Workers,
)
from cryptostream_lab.harness.model import Experiment, Trial, plan_fixed
from cryptostream_lab.harness.progress import locust_live, trial_status, wrap
from cryptostream_lab.harness.results import RESULTS_FILE, dumps
from cryptostream_lab.harness.samplers import (
    LatencyListener,
    OffsetProbe,
    Sampler,
    Series,
    views_checksum,
)
from cryptostream_lab.harness.schedule import (
    TRADE_TIME_BASE_MS,
    OpenSchedule,
    SyntheticTrades,
    VisibilityTracker,
    symbol_names,
    symbol_sequence,
)
from cryptostream_lab.harness.search import Outcome, RateSearch, lag_verdict

RESULTS_SCHEMA = 1
ID_STRIDE = 1_000_000_000  # trade ids of trial k start after k * ID_STRIDE (deterministic)


@dataclass
class RunOptions:
    experiment: Experiment
    experiment_text: str
    reports_dir: Path = Path("reports")
    kafka_bootstrap: str | None = None  # external cluster instead of the local stack
    redis_url: str | None = None
    replay_file: Path | None = None
    progress: bool = True
    out_dir: Path | None = None


def report_dir(reports: Path, name: str, today: dt.date | None = None) -> Path:
    """``reports/<date>-<experiment>``, suffixed -2, -3 ... when it exists already."""
    base = reports / f"{(today or dt.date.today()).isoformat()}-{name}"
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


@dataclass
class Context:
    settings: Settings
    workdir: Path
    console: Console
    progress: Progress
    children: ProcessGroup = field(default_factory=ProcessGroup)
    server_pids: dict[str, int] = field(default_factory=dict)  # local Kafka and Redis
    budgets: CpuBudgets | None = None  # cgroups of the budgeted processes

    def budget(self, role: str, cores: float | None, pid: int | None) -> None:
        if self.budgets is not None:
            self.budgets.budget(role, cores, pid)

    def release(self, role: str) -> None:
        if self.budgets is not None:
            self.budgets.release(role)

    def cpu_stats(self) -> dict[str, dict[str, int]]:
        """cpu.stat of every budgeted process's cgroup, by role (throttling per trial)."""
        if self.budgets is None:
            return {}
        prefix = f"csp-harness-{self.budgets.owner}-"
        return {name.removeprefix(prefix): g.cpu_stat() for name, g in self.budgets.groups.items()}


class Runner:
    def __init__(self, options: RunOptions) -> None:
        self.o = options
        self.x = options.experiment
        self.console = Console(stderr=True)
        self.results: dict[str, Any] = {}
        self.drivers: dict[str, TrialDriver] = {}  # by Trial.kind, set once the context exists
        self.run_id = uuid.uuid4().hex[:6]
        self._trials_done = self._trials_total = 0
        self._started = time.monotonic()

    # --- entry point ---------------------------------------------------------------------------
    def run(self) -> Path:
        # Before anything starts or is written: a budgeted run never runs unbudgeted silently.
        budgets = open_budgets() if self.x.budgets.any else None
        out = self.o.out_dir or report_dir(self.o.reports_dir, self.x.name)
        out.mkdir(parents=True, exist_ok=True)
        workdir = out / "run"
        base = Settings(run_dir=workdir)
        self.results = {
            "schema": RESULTS_SCHEMA,
            "experiment": self.x.model_dump(mode="json"),
            "experiment_file": self.o.experiment_text,
            "seed": self.x.workload.seed,
            "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "environment": environment.collect(base.kafka_version),
            "ceilings": {},
            "groups": [],
            "complete": False,
        }
        stack: LocalStack | None = None
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self.o.progress,
        )
        ctx: Context | None = None
        if budgets is not None:
            self.results["budgets"] = {
                **self.x.budgets.model_dump(),
                "cgroup_version": budgets.hierarchy.version,
                "cgroup_base": str(budgets.hierarchy.base),
                "period_us": PERIOD_US,
            }
        with sigterm_as_keyboard_interrupt():
            try:
                if self.o.kafka_bootstrap and self.o.redis_url:
                    settings = base.model_copy(
                        update={
                            "kafka_bootstrap": self.o.kafka_bootstrap,
                            "redis_url": self.o.redis_url,
                        }
                    )
                else:
                    self.console.print("starting the local stack (Kafka + Redis)")
                    stack = LocalStack(base, workdir / "stack").start()
                    settings = base.model_copy(
                        update={
                            "kafka_bootstrap": stack.kafka_bootstrap,
                            "redis_url": stack.redis_url,
                        }
                    )
                ctx = Context(settings, workdir, self.console, progress, budgets=budgets)
                # The load runs on this machine; another Workers would run it elsewhere.
                direct = DirectLoad(self.x, LocalWorkers(ctx.children))
                self.drivers = {kind: direct for kind in DirectLoad.kinds}
                self.drivers["replay"] = FullPathReplay(self.x)
                if stack is not None:
                    for name, server in (("kafka", stack.kafka), ("redis", stack.redis)):
                        if server is not None and server.process and server.process.pid:
                            ctx.server_pids[name] = server.process.pid
                    ctx.budget("kafka", self.x.budgets.kafka_cpu, ctx.server_pids.get("kafka"))
                    ctx.budget("redis", self.x.budgets.redis_cpu, ctx.server_pids.get("redis"))
                elif self.x.budgets.kafka_cpu or self.x.budgets.redis_cpu:
                    self.console.print(
                        "[yellow]external Kafka/Redis: their CPU budgets are not "
                        "applied (the harness did not start them)"
                    )
                with progress:
                    if self.x.ceilings:
                        self.results["ceilings"] = self._ceilings(ctx)
                    self._experiment(ctx)
                self.results["complete"] = True
            except KeyboardInterrupt:
                self.console.print("[yellow]interrupted: stopping every process of the run")
                self.results["interrupted"] = True
                raise
            finally:
                if ctx is not None:
                    ctx.children.stop_all()
                if stack is not None:
                    stack.stop()
                if budgets is not None:
                    budgets.close()  # after every process stopped: no cgroup outlives the run
                if stack is not None:
                    # Keep the servers' logs, drop their data (hundreds of MB after a search).
                    shutil.rmtree(workdir / "stack" / "kafka" / "data", ignore_errors=True)
                self.results["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
                (out / RESULTS_FILE).write_bytes(dumps(self.results))  # harness/results.py
        return out

    # --- ceilings ------------------------------------------------------------------------------
    def _ceilings(self, ctx: Context) -> dict[str, Any]:
        task = ctx.progress.add_task("ceilings", total=2, info="kafka perf tools")
        lib = resolve_kafka_jars(ctx.settings.cache_dir, ctx.settings.kafka_version)
        out: dict[str, Any] = {}
        out["kafka"] = ceilings.kafka_ceilings(lib, ctx.settings.kafka, self.x.topology.partitions)
        ctx.progress.update(task, advance=1, info="redis-benchmark")
        url = urlsplit(ctx.settings.redis_url)
        out["redis"] = ceilings.redis_ceilings(url.hostname or "127.0.0.1", url.port or 6379)
        ctx.progress.update(task, advance=1, info="done")
        k, r = out["kafka"], out["redis"]
        self.console.print(
            f"ceilings: Kafka produce {k['produce']['records_per_s']:,.0f} rec/s, consume "
            f"{k['consume']['records_per_s']:,.0f} rec/s ({k['record_size']} B records); Redis "
            f"SET {r['requests_per_s'].get('SET', 0):,.0f}/s, pipelined "
            f"{r['set_pipelined_16_per_s']:,.0f}/s"
        )
        return out

    # --- the experiment ------------------------------------------------------------------------
    def _experiment(self, ctx: Context) -> None:
        w = self.x.workload
        replay_file = self.o.replay_file or w.file
        if w.source == "replay" and replay_file is None:
            replay_file = write_synthetic_archive(ctx.workdir / "replay", w.seed)
            self.console.print(f"no replay file given: recorded a synthetic one: {replay_file}")
        self._trials_total = self._planned_trials()
        self._started = time.monotonic()
        overall = ctx.progress.add_task("experiment", total=self._trials_total, info="")
        for rep in range(self.x.repetitions):
            for processors in self.x.topology.processors:
                trials = plan_fixed(self.x, rep, processors)
                if w.source == "replay":
                    assert replay_file is not None
                    for trial in trials:
                        group = self._group(ctx, rep, processors, [trial], overall, replay_file)
                        self.results["groups"].append(group)
                else:
                    self.results["groups"].append(
                        self._group(ctx, rep, processors, trials, overall, None)
                    )

    def _planned_trials(self) -> int:
        s = self.x.search
        searched = s.max_trials + (s.max_confirmations if s.capacity_trial else 0)
        per_count = len(plan_fixed(self.x, 0, 1)) + (searched if s.enabled else 0)
        return self.x.repetitions * len(self.x.topology.processors) * per_count

    def _group(
        self,
        ctx: Context,
        rep: int,
        processors: int,
        trials: list[Trial],
        overall: Any,
        replay_file: Path | None,
    ) -> dict[str, Any]:
        index = len(self.results["groups"])
        topic = f"harness.{self.run_id}.g{index}.trades"  # unique: a cluster may be reused
        group_id = f"harness-{self.run_id}-g{index}"
        topo = self.x.topology
        settings = ctx.settings.model_copy(
            update={
                "topic": topic,
                "dlq_topic": f"harness.{self.run_id}.g{index}.dlq",
                # its own too: required_topics creates it with this group's partitions
                "depth_topic": f"harness.{self.run_id}.g{index}.depth",
                "group_id": group_id,
                "partitions": topo.partitions,
            }
        )
        create_topics(settings.kafka, required_topics(settings))
        client = redis.Redis.from_url(settings.redis_url)
        client.flushdb()  # every group starts from empty views (the harness owns this Redis)
        extra_env = {
            "CSP_TOPIC": topic,
            "CSP_DLQ_TOPIC": settings.dlq_topic,
            "CSP_DEPTH_TOPIC": settings.depth_topic,
            "CSP_GROUP_ID": group_id,
            "CSP_PARTITIONS": str(topo.partitions),
            "CSP_LOG_LEVEL": "WARNING",
        }
        if topo.batch_max:
            extra_env["CSP_BATCH_MAX"] = str(topo.batch_max)
        max_symbols = max(self.x.workload.symbol_counts)
        names = symbol_names(max_symbols)
        if replay_file is not None:
            names = replay_symbols(replay_file)
        pipeline = Pipeline(
            ctx.workdir / f"g{index}",
            settings.kafka_bootstrap,
            settings.redis_url,
            names[:50],
            extra_env=extra_env,
        )
        if replay_file is not None:
            pipeline.symbols = names
        result: dict[str, Any] = {
            "index": index,
            "repetition": rep,
            "processors": processors,
            "topic": topic,
            "trials": [],
        }
        probe = OffsetProbe(settings.kafka, settings.redis_url, topic, topo.partitions)
        try:
            t0 = time.monotonic()
            for i in range(processors):
                proc = pipeline.start_processor()
                ctx.budget(f"g{index}-processor-{i + 1}", self.x.budgets.processor_cpu, proc.pid)
            wait_group_stable(
                settings.kafka,
                group_id,
                processors,
                topic,
                topo.partitions,
                pipeline.check_alive,
            )
            result["assign_s"] = round(time.monotonic() - t0, 2)
            query_url = None
            if topo.query_workers:
                query = pipeline.start_query(args=["--workers", str(topo.query_workers)])
                ctx.budget(f"g{index}-query", self.x.budgets.query_cpu, query.process.pid)
                query_url = query.base_url
            trial_no = 0
            run = GroupRun(ctx, pipeline, probe)
            for trial in trials:
                self._describe(ctx, overall, trial, index)
                options = TrialOptions(trial_no, query_url, replay_file=replay_file)
                record = self.drivers[trial.kind].run(run, trial, options)
                trial_no += 1
                result["trials"].append(record)
                self._advance(ctx, overall)
            result["checksum"] = views_checksum(client, names)
            result["symbols_checked"] = len(names)
            if self.x.search.enabled and self.x.workload.source == "synthetic":
                result["search"] = self._search(run, processors, trial_no, overall, index, rep)
        finally:
            pipeline.stop()
            for role in [r for r in ctx.cpu_stats() if r.startswith(f"g{index}-")]:
                ctx.release(role)
            probe.close()
            client.close()
        self._print_group(result)
        return result

    def _advance(self, ctx: Context, overall: Any, trials: int = 1) -> None:
        self._trials_done += trials
        ctx.progress.advance(overall, trials)

    def _describe(self, ctx: Context, overall: Any, trial: Trial, index: int) -> None:
        what = f"speed x{trial.speed:g}" if trial.speed else f"{trial.rate:,.0f}/s"
        if trial.kind == "replay" and not trial.speed:
            what = "max speed"
        status = trial_status(
            self._trials_done, self._trials_total, time.monotonic() - self._started
        )
        ctx.progress.update(
            overall,
            info=f"{status}: rep {trial.repetition + 1}, {trial.processors} proc, "
            f"{trial.kind} {what}, group {index}",
        )

    # --- sustainable-rate search ---------------------------------------------------------------
    def _search(
        self,
        run: GroupRun,
        processors: int,
        trial_no: int,
        overall: Any,
        index: int,
        rep: int,
    ) -> dict[str, Any]:
        s, ctx = self.x.search, run.ctx
        start = s.start_rate * (processors if s.start_per_processor else 1)
        search = RateSearch(
            start,
            s.max_rate,
            s.max_trials,
            s.resolution,
            s.max_confirmations if s.capacity_trial else 0,
        )
        symbols = max(self.x.workload.symbol_counts)
        trials: list[dict[str, Any]] = []
        confirmations: list[dict[str, Any]] = []
        capacity: dict[str, Any] | None = None
        while (step := search.next_step()) is not None:
            if step.confirm:
                # The confirmation: a longer trial at the best rate, measured like the fixed-rate
                # trials (latency too). Only a sustained confirmation makes a capacity.
                trial = Trial(
                    kind="capacity",
                    repetition=rep,
                    processors=processors,
                    symbols=symbols,
                    rate=step.rate,
                    duration_s=self.x.workload.duration_s,
                )
                self._describe(ctx, overall, trial, index)
                options = TrialOptions(trial_no, drain_timeout=20)
                record = self.drivers[trial.kind].run(run, trial, options)
                confirmations.append(record)
                if record["sustained"] and record["produced_rate"] >= 0.9 * step.rate:
                    capacity = record
            else:
                trial = Trial(
                    kind="search",
                    repetition=rep,
                    processors=processors,
                    symbols=symbols,
                    rate=step.rate,
                    duration_s=s.trial_s,
                )
                self._describe(ctx, overall, trial, index)
                options = TrialOptions(trial_no, drain_timeout=15, latency=False)
                record = self.drivers[trial.kind].run(run, trial, options)
                trials.append(record)
            self._advance(ctx, overall)
            trial_no += 1
            outcome = trial_outcome(record)
            record["outcome"] = outcome
            search.record(
                step.rate, outcome, confirm=step.confirm, processed=record["processed_rate"]
            )
        skipped = s.max_trials + search.max_confirmations - len(trials) - len(confirmations)
        if skipped > 0:
            self._advance(ctx, overall, skipped)
        return {
            "capacity_rate": search.capacity,
            "lower_bound": search.lower_bound,
            "resolved": search.resolved,
            "upper_rate": search.upper,
            "max_sustained_rate": search.capacity,  # the confirmed capacity (older readers)
            "lowest_failed_rate": search.failed,
            "generator_limited": any(t["outcome"] == "limited" for t in trials),
            "start_rate": start,
            "trials": trials,
            "confirmations": confirmations,
            "capacity": capacity,
        }

    def _print_group(self, group: dict[str, Any]) -> None:
        parts = [f"group {group['index']}: {group['processors']} processor(s)"]
        for t in group["trials"]:
            lat = t.get("latency_ms", {})
            parts.append(
                f"{t['kind']} {t.get('rate', 0):,.0f}/s -> processed {t['processed_rate']:,.0f}/s"
                + (f", p99 {lat['p99']:.1f} ms" if lat.get("count") else "")
            )
        if "search" in group:
            parts.append(f"max sustained {group['search']['max_sustained_rate']}/s")
        for line in wrap(parts):
            self.console.print(line, soft_wrap=True)


# --- the trial drivers (drivers.TrialDriver) -----------------------------------------------------


class DirectLoad:
    """The fixed-rate, search and capacity trials: the Kafka load generator at an open-model
    rate (and Locust against the query API, if the experiment asks), started by ``workers``."""

    kinds = ("fixed", "search", "capacity")

    def __init__(self, experiment: Experiment, workers: Workers) -> None:
        self.x = experiment
        self.workers = workers

    def run(self, group: GroupRun, trial: Trial, options: TrialOptions) -> dict[str, Any]:
        ctx, pipeline, probe = group.ctx, group.pipeline, group.probe
        trial_no, query_url = options.trial_no, options.query_url
        drain_timeout, latency = options.drain_timeout, options.latency
        w, m = self.x.workload, self.x.measurements
        count = max(1, int(trial.rate * trial.duration_s))
        id_base = trial_no * ID_STRIDE
        seed = w.seed + trial_no
        names = symbol_names(trial.symbols)
        tracker = None
        if latency and m.latency:  # the same seeded sequence the generator will send
            sequence = symbol_sequence(count, trial.symbols, w.zipf, seed)
            tracker = VisibilityTracker(
                names, sequence, OpenSchedule(trial.rate, count, 0.0), id_base
            )
        # Record 0 is due 1.5 s from now (the generator's start-up); every later send time
        # follows from it, on both sides.
        start_wall = time.time() + 1.5
        if tracker is not None:
            tracker.schedule = OpenSchedule(trial.rate, count, start_wall)
        out_file = ctx.workdir / f"loadgen-{pipeline.extra_env['CSP_TOPIC']}-{trial_no}.json"
        argv = [
            sys.executable,
            "-m",
            "cryptostream_lab.harness.loadgen",
            "--topic",
            pipeline.extra_env["CSP_TOPIC"],
            "--rate",
            str(trial.rate),
            "--count",
            str(count),
            "--symbols",
            str(trial.symbols),
            "--zipf",
            str(w.zipf),
            "--seed",
            str(seed),
            "--id-base",
            str(id_base),
            "--start-wall",
            repr(start_wall),
            "--out",
            str(out_file),
        ]
        loadgen = self.workers.process(
            f"loadgen-{trial_no}",
            argv,
            env=pipeline.env(),
            log_path=pipeline.workdir / "logs" / f"loadgen-{trial_no}.log",
        )
        listener = (
            LatencyListener(pipeline.redis_url, tracker, start_wall + w.warmup_s)
            if tracker is not None
            else None
        )
        extra_pids: dict[str, int] = {}  # load generators started during the trial (Locust)
        sampler = Sampler(
            probe,
            m.sample_interval_s,
            lambda: {**process_pids(ctx, pipeline, loadgen), **extra_pids},
            resources=m.resources,
        )
        sampler.t0 = time.monotonic() + (start_wall - time.time())
        baseline = sum(probe.produced().values())
        if listener is not None:
            listener.start()
        loadgen.start()  # in ctx.children through the workers: stopped on every exit path
        ctx.budget("loadgen", self.x.budgets.loadgen_cpu, loadgen.pid)
        cpu_before = ctx.cpu_stats()
        sampler.start()
        task = ctx.progress.add_task(
            f"  {trial.processors}p {trial.kind} {trial.rate:,.0f}/s",
            total=trial.duration_s,
            info="load",
        )
        locust: dict[str, Any] | None = None
        try:
            locust_proc = None
            served_before: tuple[float, float | None] = (0.0, None)
            locust_from = 0.0
            wants_locust = bool(query_url and m.query_load is not None)
            while loadgen.alive():
                pipeline.check_alive()
                elapsed = time.time() - start_wall
                # Locust starts once every symbol has a price (a 404 for a traded symbol counts
                # as a failure), or at half the trial at the latest.
                if (
                    wants_locust
                    and locust_proc is None
                    and elapsed >= w.warmup_s
                    and (
                        elapsed >= trial.duration_s / 2
                        or prices_present(probe.redis, names, len(probe.partitions))
                    )
                ):
                    assert query_url is not None
                    served_before = (time.monotonic(), server_requests(query_url))
                    locust_from = served_before[0] - sampler.t0  # on the series' clock
                    locust_proc = self._start_locust(pipeline, query_url, trial.symbols)
                    if locust_proc[0].pid is not None:
                        extra_pids["locust"] = locust_proc[0].pid
                live = locust_live(locust_proc[1]) if locust_proc is not None else None
                ctx.progress.update(
                    task, completed=max(0.0, min(elapsed, trial.duration_s)), info=live or "load"
                )
                time.sleep(0.2)
            load_end = time.monotonic()
            if loadgen.returncode() != 0:
                raise StackError(f"load generator failed:\n{loadgen.log_tail()}")
            gen = orjson.loads(out_file.read_bytes())
            ctx.progress.update(task, info="drain")
            drained_s = drain(probe, drain_timeout or w.drain_timeout_s, pipeline.check_alive)
            if drained_s is not None:
                drained_s = round(time.monotonic() - load_end, 2)
            if locust_proc is not None:
                locust = self._finish_locust(locust_proc)
                assert query_url is not None
                # What the server itself counted, beside what Locust says it sent.
                t_end, after = time.monotonic(), server_requests(query_url)
                t_start, before = served_before
                if before is not None and after is not None and t_end > t_start:
                    locust["server_requests"] = after - before
                    locust["server_seconds"] = round(t_end - t_start, 2)
                # CPU is compared over Locust's own run, not the whole trial.
                locust["window_s"] = [round(locust_from, 2), round(t_end - sampler.t0, 2)]
        finally:
            series = sampler.stop()
            cpu_after = ctx.cpu_stats()
            if listener is not None:
                listener.stop()
            loadgen.stop()
            ctx.release("loadgen")
            ctx.progress.remove_task(task)
        produced = sum(probe.produced().values()) - baseline
        record = summarize_trial(trial, series, w.warmup_s, self.x.search.slope_tolerance)
        throttled = {
            role: throttled_share(cpu_before.get(role, {}), after)
            for role, after in cpu_after.items()
        }
        if throttled:  # share of CFS periods in which each budgeted process hit its quota
            record["throttled_share"] = {
                k: round(v, 3) for k, v in throttled.items() if v is not None
            }
        record |= {
            "records": count,
            "produced": produced,
            "loadgen": gen,
            "drain_s": drained_s,
            "id_base": id_base,
            "seed": seed,
            "series": series.as_dict(),
        }
        if listener is not None:
            record["latency_ms"] = stats.percentile_summary(listener.histogram)
            record["latency_hdr"] = stats.encode(listener.histogram)
            record["latency_updates"] = listener.updates
        if locust is not None:
            record["query_load"] = locust
        return record

    # --- Locust --------------------------------------------------------------------------------
    def _start_locust(
        self, pipeline: Pipeline, url: str, symbols: int
    ) -> tuple[WorkerProcess, Path]:
        q = self.x.measurements.query_load
        assert q is not None
        prefix = pipeline.workdir / "locust"
        locustfile = Path(__file__).resolve().with_name("locustfile.py")  # shipped in the package
        argv = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(locustfile),
            "--host",
            url,
            "--headless",
            "-u",
            str(q.users),
            "-r",
            str(q.spawn_rate),
            "-t",
            f"{q.duration_s:g}s",
            "--csv",
            str(prefix),
            "--csv-full-history",
            "--only-summary",
            "--loglevel",
            "WARNING",
        ]
        env = {
            **os.environ,
            "LOCUST_SYMBOLS": str(symbols),
            "LOCUST_ZIPF_S": str(q.zipf),
            "LOCUST_UNKNOWN_SHARE": str(q.unknown_share),
        }
        proc = self.workers.process(
            "locust", argv, env=env, log_path=pipeline.workdir / "logs" / "locust.log"
        ).start()
        return proc, prefix

    def _finish_locust(self, started: tuple[WorkerProcess, Path]) -> dict[str, Any]:
        proc, prefix = started
        q = self.x.measurements.query_load
        assert q is not None
        code = proc.wait(q.duration_s + 60)
        if code is None:
            proc.stop()
        return read_locust_csv(prefix) | {"exit_code": code}


class FullPathReplay:
    """A replay trial: the simulator replays a file, the ingest feeds Kafka (the full path)."""

    kinds = ("replay",)

    def __init__(self, experiment: Experiment) -> None:
        self.x = experiment

    def run(self, group: GroupRun, trial: Trial, options: TrialOptions) -> dict[str, Any]:
        ctx, pipeline, probe = group.ctx, group.pipeline, group.probe
        assert options.replay_file is not None
        file = options.replay_file
        w, m = self.x.workload, self.x.measurements
        expected = count_replay_trades(file)
        args = ["--wait-for-subscribers", "1"]
        for path in _replay_paths(file):  # several files are merged in time order
            args += ["--replay", str(path.resolve())]
        args += ["--fast"] if not trial.speed else ["--speed", str(trial.speed)]
        sim = pipeline.start_simulator(args)
        listener = LatencyListener(pipeline.redis_url, None, time.time() + w.warmup_s)
        sampler = Sampler(
            probe, m.sample_interval_s, lambda: process_pids(ctx, pipeline), resources=m.resources
        )
        listener.start()
        sampler.start()
        pipeline.start_ingest(sim.ws_url)
        task = ctx.progress.add_task(f"  replay x{trial.speed or 0:g}", total=expected, info="")
        t0 = time.monotonic()
        first_visible: float | None = None
        done_at: float | None = None
        try:
            deadline = t0 + trial.duration_s + w.drain_timeout_s
            while time.monotonic() < deadline:
                pipeline.check_alive()
                applied = sum(probe.applied().values())
                if applied and first_visible is None:
                    first_visible = time.monotonic()
                ctx.progress.update(task, completed=applied)
                if applied >= expected:
                    done_at = time.monotonic()
                    break
                if time.monotonic() - t0 > trial.duration_s and not trial.speed:
                    pass  # max speed: let it finish within the drain allowance
                elif time.monotonic() - t0 > trial.duration_s:
                    break  # a paced replay longer than the trial: measure what arrived
                time.sleep(0.2)
        finally:
            series = sampler.stop()
            listener.stop()
            ctx.progress.remove_task(task)
        applied = sum(probe.applied().values())
        record = summarize_trial(trial, series, w.warmup_s, self.x.search.slope_tolerance)
        span = (done_at or time.monotonic()) - (first_visible or t0)
        record |= {
            "file": str(file),
            "records": expected,
            "applied": applied,
            "complete": applied >= expected,
            "seconds": round(span, 2),
            "replay_rate": applied / span if span > 0 else 0.0,
            "series": series.as_dict(),
            "simulator": sim.stats(),
        }
        record["latency_ms"] = stats.percentile_summary(listener.histogram)
        record["latency_hdr"] = stats.encode(listener.histogram)
        return record


def process_pids(
    ctx: Context, pipeline: Pipeline, loadgen: WorkerProcess | None = None
) -> dict[str, int]:
    """The pids to sample, by role: the harness, the local servers, the group's processes."""
    pids = {"harness": os.getpid(), **ctx.server_pids}
    roles: dict[str, int] = {}
    for process in pipeline.group.processes:
        if process.pid is not None and process.alive():
            role = process.name.rsplit("-", 1)[0]
            roles[role] = roles.get(role, 0) + 1
            pids[f"{role}-{roles[role]}"] = process.pid
    if loadgen is not None and loadgen.pid is not None and loadgen.alive():
        pids["loadgen"] = loadgen.pid
    return pids


# --- helpers (module level: testable without a run) ----------------------------------------------


def summarize_trial(
    trial: Trial, series: Series, warmup_s: float, tolerance: float
) -> dict[str, Any]:
    """Rates and the lag verdict over the measured window [warm-up, end of load]."""
    window = [(i, t) for i, t in enumerate(series.t) if warmup_s <= t <= trial.duration_s + 1e-9]
    lags = series.lag()
    record: dict[str, Any] = {
        "kind": trial.kind,
        "repetition": trial.repetition,
        "processors": trial.processors,
        "symbols": trial.symbols,
        "rate": trial.rate,
        "duration_s": trial.duration_s,
        "speed": trial.speed,
    }
    if len(window) >= 2:
        (i0, t0), (i1, t1) = window[0], window[-1]
        span = t1 - t0
        produced = sum(series.produced[i1].values()) - sum(series.produced[i0].values())
        applied = sum(series.applied[i1].values()) - sum(series.applied[i0].values())
        record["produced_rate"] = produced / span if span > 0 else 0.0
        per_partition = {
            p: series.produced[i1][p] - series.produced[i0].get(p, 0) for p in series.produced[i1]
        }
        if produced > 0:  # the busiest partition's share bounds what more consumers can add
            record["partition_share"] = {
                str(p): round(n / produced, 4) for p, n in sorted(per_partition.items())
            }
        record["processed_rate"] = applied / span if span > 0 else 0.0
        points = [(t, float(sum(lags[i].values()))) for i, t in window]
        # Judged against the rate that actually arrived (the generator may fall short).
        verdict = lag_verdict(points, record["produced_rate"] or trial.rate, tolerance)
        record |= {
            "lag_slope": verdict.slope,
            "lag_threshold": verdict.threshold,
            "sustained": verdict.sustained,
            "max_lag": max(p[1] for p in points),
        }
    else:
        record |= {
            "produced_rate": 0.0,
            "processed_rate": 0.0,
            "lag_slope": 0.0,
            "lag_threshold": 0.0,
            "sustained": False,
            "max_lag": 0.0,
        }
    cpu = {name: sum(v) / len(v) for name, v in series.cpu.items() if v}
    record["cpu_percent_mean"] = {k: round(v, 1) for k, v in cpu.items()}
    record["rss_mb_max"] = {name: max(v) for name, v in series.rss_mb.items() if v}
    machine = [series.machine_cpu[i] for i, _ in window if i < len(series.machine_cpu)]
    if machine:
        record["machine_cpu_percent"] = {
            "mean": round(sum(machine) / len(machine), 1),
            "max": max(machine),
        }
    return record


def trial_outcome(record: dict[str, Any], delivered_share: float = 0.9) -> Outcome:
    """sustained / failed / limited (the generator delivered < 90 % of the rate, lag flat).

    Lag growing even at what the generator delivered is a failure of the pipeline; flat lag at a
    lower delivered rate says nothing about the tried rate.
    """
    if not record["sustained"]:
        return "failed"
    if record["produced_rate"] < delivered_share * record["rate"]:
        record["generator_limited"] = True
        return "limited"
    return "sustained"


def server_requests(base_url: str) -> float | None:
    """Requests the query API has answered (``csp_query_requests_total``, all workers summed)."""
    import httpx

    try:
        text = httpx.get(f"{base_url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    total = 0.0
    for line in text.splitlines():
        if line.startswith("csp_query_requests_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def prices_present(client: redis.Redis, symbols: list[str], partitions: int) -> bool:
    pipe = client.pipeline(transaction=False)
    for symbol in symbols:
        pipe.exists(price_key(symbol, partitions))
    return all(pipe.execute())


def drain(probe: OffsetProbe, timeout: float, check: Callable[[], None]) -> float | None:
    """Wait until every produced record is applied; seconds taken, or None on timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        check()
        produced, applied = probe.produced(), probe.applied()
        if all(applied.get(p, 0) >= high for p, high in produced.items()):
            return time.monotonic() - t0
        time.sleep(0.2)
    return None


def wait_group_stable(
    kafka: KafkaConnection,
    group: str,
    members: int,
    topic: str,
    partitions: int,
    check: Callable[[], None],
    timeout: float = 90,
) -> None:
    """Until the consumer group is STABLE with ``members`` members owning every partition."""
    quiet = logging.getLogger("cryptostream_lab.harness.admin")
    quiet.setLevel(logging.CRITICAL)
    admin = AdminClient(kafka.librdkafka({"logger": quiet}))

    def stable() -> bool:
        check()
        desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
        owned = [
            tp.partition
            for m in desc.members
            for tp in m.assignment.topic_partitions
            if tp.topic == topic
        ]
        return bool(
            desc.state == ConsumerGroupState.STABLE
            and len(desc.members) == members
            and sorted(owned) == list(range(partitions))
        )

    wait_for(stable, timeout, f"consumer group {group} stable with {members} members")


def read_locust_csv(prefix: Path) -> dict[str, Any]:
    """Locust's ``<prefix>_stats.csv`` rows and ``_stats_history.csv`` aggregate time series."""
    out: dict[str, Any] = {"stats": [], "history": []}
    stats_file = Path(f"{prefix}_stats.csv")
    if stats_file.exists():
        with stats_file.open() as fh:
            out["stats"] = list(csv.DictReader(fh))
    failures = Path(f"{prefix}_failures.csv")
    if failures.exists():
        with failures.open() as fh:
            out["failures"] = list(csv.DictReader(fh))
    history = Path(f"{prefix}_stats_history.csv")
    if history.exists():
        with history.open() as fh:
            out["history"] = [row for row in csv.DictReader(fh) if row.get("Name") == "Aggregated"]
    return out


def write_synthetic_archive(
    folder: Path, seed: int, symbols: int = 5, trades: int = 100_000, rate: float = 1000.0
) -> Path:
    """A Binance trade-archive CSV per symbol from the seeded generator (when no file is given).

    Returns the folder; the simulator replays every file in it merged in time order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"SIM{i}USDT" for i in range(symbols)]
    sequence = symbol_sequence(trades, symbols, 1.0, seed)
    gen = SyntheticTrades(names, sequence, rate, seed)
    rows: dict[str, list[str]] = {n: [] for n in names}
    for i in range(trades):
        t = gen.trade(i, 0)
        quote = float(t.price) * float(t.quantity)
        rows[t.symbol].append(
            f"{t.trade_id},{t.price},{t.quantity},{quote:.8f},{t.trade_time},"
            f"{t.buyer_is_maker},True"
        )
    day = dt.datetime.fromtimestamp(TRADE_TIME_BASE_MS / 1000, dt.UTC).date().isoformat()
    for name, lines in rows.items():
        (folder / f"{name}-trades-{day}.csv").write_text("\n".join(lines) + "\n")
    return folder


def _replay_paths(file: Path) -> list[Path]:
    return sorted(p for p in file.iterdir() if p.is_file()) if file.is_dir() else [file]


def replay_symbols(file: Path) -> list[str]:
    return sorted({s for path in _replay_paths(file) for s in _file_symbols(path)})


def _file_symbols(path: Path) -> Iterator[str]:
    from marketsim.replay import is_recorded, read_archive, read_recorded, symbol_from_name

    if is_recorded(path):
        seen: set[str] = set()
        for frame in read_recorded(path):
            if frame.trade is not None and frame.trade.symbol not in seen:
                seen.add(frame.trade.symbol)
                yield frame.trade.symbol
        return
    for order in read_archive(path, symbol_from_name(path)):
        yield order.symbol
        return


def count_replay_trades(file: Path) -> int:
    """Trades a replay will produce (the simulator's own reader, so the counts agree)."""
    from marketsim.replay import is_recorded, read_archive, read_recorded, symbol_from_name

    total = 0
    for path in _replay_paths(file):
        if is_recorded(path):
            total += sum(1 for f in read_recorded(path) if f.trade is not None)
        else:
            total += sum(
                o.last_id - o.first_id + 1 for o in read_archive(path, symbol_from_name(path))
            )
    return total


def run_experiment(options: RunOptions) -> Path:
    return Runner(options).run()
