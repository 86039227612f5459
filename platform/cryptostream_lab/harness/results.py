"""The typed model of results.json: what ``runner.py`` writes and ``report.py`` reads.

Every key the runner writes today is a field here with its type, so a results.json that does not
match (a renamed key, a string where a number belongs) fails on load with the path of the
mistake instead of somewhere inside a plot. The models allow extra keys and keep them: older and
newer files still load, and :meth:`Results.as_dict` gives back exactly the keys and values that
were read (no defaults added, ints stay ints), which the sans-I/O report code consumes.

Numbers are ``int | float`` where the runner writes either (pydantic keeps the JSON type), so a
report rendered from the model is the report rendered from the raw file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

Number = int | float
RESULTS_FILE = "results.json"


class _Open(BaseModel):
    """A section of results.json: typed fields, unknown keys kept as they are."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Series(_Open):
    """One trial's samples over time (``samplers.Series.as_dict``)."""

    t: list[Number] = []
    produced: list[Number] = []
    applied: list[Number] = []
    lag_per_partition: dict[str, list[Number]] = {}
    cpu_percent: dict[str, list[Number]] = {}
    rss_mb: dict[str, list[Number]] = {}
    machine_cpu_percent: list[Number] = []


class LoadGen(_Open):
    """What the Kafka load generator reported (``loadgen.py``)."""

    sent: int = 0
    errors: int = 0
    unflushed: int = 0
    elapsed_s: Number = 0.0
    achieved_rate: Number = 0.0
    late_start_s: Number = 0.0
    max_behind_s: Number = 0.0
    behind_over_10ms: int = 0


class Trial(_Open):
    """One trial record: a ``fixed``-rate one, a ``search`` step, the confirmed ``capacity``
    trial or a ``replay`` (``model.Trial.kind``)."""

    kind: Literal["fixed", "search", "capacity", "replay"]
    repetition: int
    processors: int
    symbols: int | None = None
    rate: Number | None = None
    duration_s: Number | None = None
    speed: Number | None = None
    # fixed, search and capacity trials (runner.summarize_trial and _direct_trial)
    produced_rate: Number | None = None
    processed_rate: Number | None = None
    partition_share: dict[str, Number] | None = None
    lag_slope: Number | None = None
    lag_threshold: Number | None = None
    sustained: bool | None = None
    max_lag: Number | None = None
    cpu_percent_mean: dict[str, Number] | None = None
    rss_mb_max: dict[str, Number] | None = None
    machine_cpu_percent: dict[str, Number] | None = None
    throttled_share: dict[str, Number] | None = None
    records: int | None = None
    produced: int | None = None
    loadgen: LoadGen | None = None
    drain_s: Number | None = None
    id_base: int | None = None
    seed: int | None = None
    series: Series | None = None
    latency_ms: dict[str, Number] | None = None
    latency_hdr: str | None = None
    latency_updates: int | None = None
    query_load: dict[str, Any] | None = None  # Locust's CSV statistics (runner.read_locust_csv)
    outcome: str | None = None  # search steps: search.Outcome
    generator_limited: bool | None = None
    # replay trials (runner._replay_trial)
    file: str | None = None
    applied: int | None = None
    complete: bool | None = None
    seconds: Number | None = None
    replay_rate: Number | None = None
    simulator: dict[str, Any] | None = None


class Search(_Open):
    """A group's capacity search (``runner._search``)."""

    capacity_rate: Number | None = None
    lower_bound: bool = False
    resolved: bool = False
    upper_rate: Number | None = None
    max_sustained_rate: Number | None = None  # = capacity_rate, for older readers
    lowest_failed_rate: Number | None = None
    generator_limited: bool = False
    start_rate: Number | None = None
    trials: list[Trial] = []
    confirmations: list[Trial] = []
    capacity: Trial | None = None


class Group(_Open):
    """One repetition at one processor count, on its own topic (``runner._group``)."""

    index: int
    repetition: int
    processors: int
    topic: str
    trials: list[Trial] = []
    assign_s: Number | None = None
    checksum: str | None = None
    symbols_checked: int | None = None
    search: Search | None = None


class Environment(_Open):
    """Where the run happened (``environment.collect``)."""

    cpu_model: str | None = None
    cores: int | None = None
    memory_gb: Number | None = None
    os: str | None = None
    kernel: str | None = None
    python: str | None = None
    java: str | None = None
    kafka: str | None = None
    redis: str | None = None
    libraries: dict[str, str] = {}
    git_commit: str | None = None
    git_dirty: bool | None = None
    load_average: list[Number] = []


class Budgets(_Open):
    """The CPU budgets applied (present only when the experiment has any)."""

    processor_cpu: Number | None = None
    loadgen_cpu: Number | None = None
    kafka_cpu: Number | None = None
    redis_cpu: Number | None = None
    query_cpu: Number | None = None
    cgroup_version: int | None = None
    cgroup_base: str | None = None
    period_us: int | None = None


class ExperimentEcho(_Open):
    """The experiment as run (``model.Experiment.model_dump``): its sections stay open, so a
    results.json written before a field was added to the experiment model still loads."""

    name: str
    description: str = ""
    repetitions: int = 1
    ceilings: bool = False
    topology: dict[str, Any] = {}
    workload: dict[str, Any] = {}
    search: dict[str, Any] = {}
    measurements: dict[str, Any] = {}
    budgets: dict[str, Any] = {}


class Results(_Open):
    """The whole of results.json."""

    schema_: int = Field(1, alias="schema")  # `schema` would shadow a BaseModel attribute
    experiment: ExperimentEcho
    experiment_file: str = ""
    seed: int | None = None
    started_at: str | None = None
    finished_at: str | None = None
    environment: Environment = Environment()
    ceilings: dict[str, Any] = {}
    groups: list[Group] = []
    complete: bool = False
    interrupted: bool | None = None
    budgets: Budgets | None = None

    def as_dict(self) -> dict[str, Any]:
        """The file as read: every key present in it (extra ones too), no defaults added."""
        return self.model_dump(mode="python", by_alias=True, exclude_unset=True)


def parse_results(data: bytes | str) -> Results:
    """Validate a results.json's text; ValueError with each mistake's path if it does not fit."""
    try:
        return Results.model_validate_json(data)
    except ValidationError as exc:
        raise ValueError(f"results.json does not match the results model:\n{exc}") from None


def load_results(folder_or_file: Path) -> Results:
    """``folder/results.json`` (or the file itself) through the model."""
    path = folder_or_file / RESULTS_FILE if folder_or_file.is_dir() else folder_or_file
    try:
        return parse_results(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def dumps(results: Results | dict[str, Any]) -> bytes:
    """results.json's bytes, as the runner writes them (indented, non-string keys allowed)."""
    data = results.as_dict() if isinstance(results, Results) else results
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS)
