"""Experiment files (TOML) as typed models (sans-I/O apart from reading the file).

An experiment names a workload, a topology, what to measure and how often to repeat it. The
runner expands it into *trials*: every processor count x symbol count x rate, each at a fixed
open-model arrival rate, then (optionally) a sustainable-rate search per processor count.
See ``experiments/*.toml`` next to this module for the shipped ones (package data).
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

EXPERIMENTS_DIR = resources.files("cryptostream_lab.harness") / "experiments"  # package data


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Workload(_Strict):
    source: Literal["synthetic", "replay"] = "synthetic"
    # "direct": the harness's own Kafka load generator (open model, beyond one WebSocket's rate);
    # "full": simulator -> ingest -> Kafka (the real front of the pipeline).
    path: Literal["direct", "full"] = "direct"
    file: Path | None = Field(None, description="replay: a recording or archive file")
    speeds: list[float] = Field(
        default_factory=lambda: [1.0], description="replay: speed factors, 0 = as fast as possible"
    )
    symbols: int | list[int] = 100
    zipf: float = Field(1.0, ge=0, description="symbol weight 1/rank**zipf (0 = uniform)")
    rate: float | None = Field(None, gt=0, description="trades/s (one fixed rate)")
    rates: list[float] = Field(default_factory=list, description="a sweep of rates (trades/s)")
    duration_s: float = Field(20.0, gt=0)
    warmup_s: float = Field(3.0, ge=0, description="excluded from latency and lag-slope figures")
    drain_timeout_s: float = Field(60.0, gt=0)
    seed: int = 1

    @model_validator(mode="after")
    def _check(self) -> Workload:
        if self.source == "synthetic" and self.rate is None and not self.rates:
            raise ValueError("a synthetic workload needs `rate` or `rates`")
        if self.source == "replay" and self.path != "full":
            raise ValueError("a replay runs the full path (simulator -> ingest)")
        if self.warmup_s >= self.duration_s:
            raise ValueError("warmup_s must be shorter than duration_s")
        return self

    @property
    def rate_list(self) -> list[float]:
        return list(self.rates) if self.rates else ([self.rate] if self.rate else [])

    @property
    def symbol_counts(self) -> list[int]:
        return [self.symbols] if isinstance(self.symbols, int) else list(self.symbols)


class Topology(_Strict):
    processors: list[int] = Field(default_factory=lambda: [1], min_length=1)
    query_workers: int = Field(0, ge=0, description="0 = no query API")
    partitions: int = Field(8, ge=1)
    batch_max: int | None = Field(None, ge=1, description="CSP_BATCH_MAX of the processors")


class Search(_Strict):
    """Theodolite's load capacity: the highest rate whose consumer lag does not keep growing."""

    enabled: bool = False
    start_rate: float = Field(2000.0, gt=0)
    max_rate: float = Field(100_000.0, gt=0)
    trial_s: float = Field(12.0, gt=0)
    max_trials: int = Field(8, ge=1, description="search trials per processor count")
    max_confirmations: int = Field(2, ge=1, description="confirmation trials per processor count")
    resolution: float = Field(0.1, gt=0, lt=1, description="bisect until high/low - 1 <= this")
    start_per_processor: bool = Field(
        False, description="start at start_rate x processors (capacity grows with the count)"
    )
    slope_tolerance: float = Field(
        0.05, gt=0, description="sustained if lag grows slower than this fraction of the rate"
    )
    capacity_trial: bool = Field(
        True, description="confirm the highest sustained rate (and its latency) in a longer trial"
    )


class Budgets(_Strict):
    """CPU quotas in cores per process (a cgroup each, like Kubernetes CPU limits); None = none.

    A budgeted experiment needs a writable cgroup CPU controller (root on Linux) and stops with
    a clear message where there is none.
    """

    processor_cpu: float | None = Field(None, gt=0, le=64, description="cores per processor")
    loadgen_cpu: float | None = Field(None, gt=0, le=64, description="the Kafka load generator")
    kafka_cpu: float | None = Field(None, gt=0, le=64, description="the local Kafka broker")
    redis_cpu: float | None = Field(None, gt=0, le=64, description="the local Redis server")
    query_cpu: float | None = Field(None, gt=0, le=64, description="the query API (all workers)")

    @property
    def any(self) -> bool:
        return any(v is not None for v in self.model_dump().values())


class QueryLoad(_Strict):
    users: int = Field(32, ge=1)
    spawn_rate: float = Field(16.0, gt=0)
    duration_s: float = Field(20.0, gt=0)
    unknown_share: float = Field(0.05, ge=0, le=1)
    zipf: float = Field(1.1, ge=0)


class Measurements(_Strict):
    sample_interval_s: float = Field(1.0, gt=0)
    latency: bool = True
    resources: bool = True
    query_load: QueryLoad | None = None


class Experiment(_Strict):
    name: str
    description: str = ""
    repetitions: int = Field(1, ge=1)
    ceilings: bool = True
    workload: Workload
    topology: Topology = Field(default_factory=Topology)
    search: Search = Field(default_factory=Search)
    budgets: Budgets = Field(default_factory=Budgets)
    measurements: Measurements = Field(default_factory=Measurements)


class Trial(_Strict):
    """One fixed-rate run: what the runner executes and the report plots against."""

    kind: Literal["fixed", "search", "capacity", "replay"]
    repetition: int
    processors: int
    symbols: int
    rate: float  # trades/s; 0 = as fast as possible (replay)
    duration_s: float
    speed: float | None = None


def plan_fixed(experiment: Experiment, repetition: int, processors: int) -> list[Trial]:
    """The fixed-rate (or replay) trials of one processor count, in run order."""
    w = experiment.workload
    if w.source == "replay":
        return [
            Trial(
                kind="replay",
                repetition=repetition,
                processors=processors,
                symbols=0,
                rate=0.0,
                duration_s=w.duration_s,
                speed=speed,
            )
            for speed in w.speeds
        ]
    return [
        Trial(
            kind="fixed",
            repetition=repetition,
            processors=processors,
            symbols=symbols,
            rate=rate,
            duration_s=w.duration_s,
        )
        for symbols in w.symbol_counts
        for rate in w.rate_list
    ]


def shipped_experiments() -> dict[str, str]:
    """The experiments shipped as package data (name -> one-line description), any install."""
    out = {}
    for entry in sorted(EXPERIMENTS_DIR.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".toml"):
            data = tomllib.loads(entry.read_text())
            out[entry.name.removesuffix(".toml")] = str(data.get("description", ""))
    return out


def load_experiment(name_or_path: str | Path) -> tuple[Experiment, str]:
    """An experiment by file path or by the name of a shipped one (``experiments/<name>.toml``
    in this package, found from any directory and any install).

    Returns the model and the file's text (kept verbatim in results.json).
    """
    path = Path(name_or_path)
    if path.exists():
        text = path.read_text()
        return parse_experiment(text, default_name=path.stem), text
    shipped = EXPERIMENTS_DIR / f"{name_or_path}.toml"
    if path.suffix or not shipped.is_file():
        available = ", ".join(shipped_experiments()) or "none"
        raise FileNotFoundError(f"no experiment {str(name_or_path)!r}; available: {available}")
    text = shipped.read_text()
    return parse_experiment(text, default_name=str(name_or_path)), text


def parse_experiment(text: str, default_name: str = "experiment") -> Experiment:
    data = tomllib.loads(text)
    data.setdefault("name", default_name)
    return Experiment.model_validate(data)
