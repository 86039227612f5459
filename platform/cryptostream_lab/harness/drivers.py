"""One interface for every kind of trial, and for where a trial's load runs.

OpenMessaging Benchmark's idea: the benchmark driver plans and judges, *workers* run the load.
Here a :class:`TrialDriver` runs one trial of its kinds (``runner.DirectLoad``: the fixed-rate,
search and capacity trials with the Kafka load generator and Locust; ``runner.FullPathReplay``:
simulator -> ingest -> Kafka) and returns the trial's record for results.json; the load
processes it starts come from :class:`Workers`. :class:`LocalWorkers` runs them as supervised
child processes on this machine, today's only kind; a ``Workers`` that starts them on other hosts
(and reports their pids for sampling, or none) plugs in without touching the drivers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cryptostream.stack.supervisor import ManagedProcess, ProcessGroup

if TYPE_CHECKING:
    from cryptostream.stack.pipeline import Pipeline
    from cryptostream_lab.harness.model import Trial
    from cryptostream_lab.harness.runner import Context
    from cryptostream_lab.harness.samplers import OffsetProbe


class WorkerProcess(Protocol):
    """A load process as a driver sees it, wherever it runs."""

    @property
    def pid(self) -> int | None:
        """The local pid (sampled and CPU-budgeted), or None if it does not run here."""

    def start(self) -> WorkerProcess: ...

    def alive(self) -> bool: ...

    def returncode(self) -> int | None: ...

    def wait(self, timeout: float) -> int | None: ...

    def stop(self, timeout: float = 15.0) -> None: ...

    def log_tail(self, lines: int = 25) -> str: ...


class Workers(Protocol):
    """Where a trial's load processes run; the run stops every one of them on every exit path."""

    def process(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str], log_path: Path
    ) -> WorkerProcess:
        """A load process, not yet started: ``argv`` is what runs it on this machine."""
        ...


class LocalWorkers:
    """Load processes as supervised children here (own process group, log file), each in
    ``group`` from the moment it exists, so stopping the group stops every one of them."""

    def __init__(self, group: ProcessGroup) -> None:
        self.group = group

    def process(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str], log_path: Path
    ) -> ManagedProcess:
        return self.group.add(ManagedProcess(name, argv, env=env, log_path=log_path))


@dataclass(frozen=True)
class GroupRun:
    """What the trials of one group share: the run's context, the group's pipeline (processors,
    query API) on its own topic, and the probe of its offsets."""

    ctx: Context
    pipeline: Pipeline
    probe: OffsetProbe


@dataclass(frozen=True)
class TrialOptions:
    """How to run one trial beyond the trial itself."""

    trial_no: int = 0  # the group's trial counter: id base and seed of generated load
    query_url: str | None = None  # the group's query API (Locust runs against it)
    drain_timeout: float | None = None  # None: the workload's drain_timeout_s
    latency: bool = True  # measure event -> visible latency (search steps do not)
    replay_file: Path | None = None  # replay trials


class TrialDriver(Protocol):
    """Runs one trial and returns its record for results.json (``results.Trial``)."""

    def run(self, group: GroupRun, trial: Trial, options: TrialOptions) -> dict[str, Any]: ...
