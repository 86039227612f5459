"""The runner on the tiny experiment: real Kafka, Redis, processor and load generator, seconds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from cryptostream.stack.local import LocalStack
from cryptostream_lab.backends import ContainerStack
from cryptostream_lab.harness.model import load_experiment
from cryptostream_lab.harness.report import write_report
from cryptostream_lab.harness.results import load_results
from cryptostream_lab.harness.runner import RunOptions, report_dir, run_experiment

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _run(stack: LocalStack | ContainerStack, out: Path, seed: int | None = None) -> dict[str, Any]:
    experiment, text = load_experiment("tiny")
    if seed is not None:
        experiment = experiment.model_copy(
            update={"workload": experiment.workload.model_copy(update={"seed": seed})}
        )
    folder = run_experiment(
        RunOptions(
            experiment,
            text,
            kafka_bootstrap=stack.kafka_bootstrap,
            redis_url=stack.redis_url,
            progress=False,
            out_dir=out,
        )
    )
    assert folder == out
    raw = dict(orjson.loads((out / "results.json").read_bytes()))
    assert load_results(out).as_dict() == raw  # what the runner writes fits harness/results.py
    return raw


def test_tiny_experiment_measures_every_stage_and_is_reproducible(
    stack: LocalStack | ContainerStack, tmp_path: Path
) -> None:
    first = _run(stack, tmp_path / "first")
    assert first["complete"] is True
    assert first["experiment"]["name"] == "tiny"
    assert "rate = 500" in first["experiment_file"]
    env = first["environment"]
    assert env["cores"] >= 1 and env["git_commit"] and env["kafka"] and env["redis"]
    [group] = first["groups"]
    [trial] = group["trials"]
    # Every record the open-model generator was scheduled to send arrived and was applied.
    assert trial["records"] == 1000
    assert trial["loadgen"]["sent"] == 1000 and trial["loadgen"]["errors"] == 0
    assert trial["produced"] == 1000
    assert trial["drain_s"] is not None
    assert trial["processed_rate"] == pytest.approx(500, rel=0.25)
    series = trial["series"]
    assert series["applied"][-1] - series["applied"][0] == 1000
    assert set(series["lag_per_partition"]) == {"0", "1"}
    assert {"harness", "processor-1", "loadgen"} <= set(series["cpu_percent"])
    # Latency of every record after the warm-up (1.5 s of 2 s at 500/s = 750 records).
    latency = trial["latency_ms"]
    assert latency["count"] == pytest.approx(750, abs=5)
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"] < 5000

    again = _run(stack, tmp_path / "again")
    other_seed = _run(stack, tmp_path / "other", seed=2)
    assert again["groups"][0]["checksum"] == group["checksum"]
    assert other_seed["groups"][0]["checksum"] != group["checksum"]

    lines = write_report(tmp_path / "first")
    assert (tmp_path / "first" / "report.html").exists()
    assert any("500" in line for line in lines)


def test_report_dirs_never_overwrite(tmp_path: Path) -> None:
    import datetime as dt

    day = dt.date(2026, 1, 2)
    first = report_dir(tmp_path, "scaling", day)
    assert first.name == "2026-01-02-scaling"
    first.mkdir()
    assert report_dir(tmp_path, "scaling", day).name == "2026-01-02-scaling-2"


BUDGETED = """
[budgets]
processor_cpu = 0.5
loadgen_cpu = 0.5
kafka_cpu = 1.0
redis_cpu = 0.5
"""


@pytest.mark.parametrize("budgeted", [False, True], ids=["unbudgeted", "budgeted"])
def test_ctrl_c_stops_every_process_and_keeps_the_partial_results(
    tmp_path: Path, budgeted: bool
) -> None:
    """SIGINT mid-run (as Ctrl-C): the CLI exits 130, no child outlives it, results.json says
    the run was interrupted; with CPU budgets, every cgroup existed during the run and none is
    left afterwards."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from cryptostream_lab.harness import cgroups

    # tiny's 2-s load, stretched, so the interrupt always lands while the load runs
    tiny = (Path(cgroups.__file__).with_name("experiments") / "tiny.toml").read_text()
    assert "duration_s = 2\n" in tiny
    toml = tiny.replace("duration_s = 2\n", "duration_s = 120\n")
    base: Path | None = None
    if budgeted:
        found = cgroups.find_hierarchy()
        if isinstance(found, cgroups.BudgetError):
            pytest.skip(str(found))
        base = found.base
        toml += BUDGETED
    name = str(tmp_path / "tiny-long.toml")
    Path(name).write_text(toml)
    out = tmp_path / "report"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cryptostream",
            "experiment",
            name,
            "--out",
            str(out),
            "--no-progress",
            "--no-report",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "CSP_RUN_DIR": str(tmp_path)},
        # Ctrl-C as at a terminal: a test run started in the background (`cmd &` in a script)
        # ignores SIGINT, Python then installs no KeyboardInterrupt handler, and the child
        # would inherit that
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 120
        # Wait until the load generator runs: Kafka, Redis, processor and loadgen are children.
        while not any("loadgen" in _cmdline(c) for c in _children(proc.pid)):
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            assert time.monotonic() < deadline, "the experiment never started its load"
            time.sleep(0.05)
        children = {c.pid for c in _children(proc.pid)}
        assert len(children) >= 4
        if base is not None:  # the loadgen's cgroup follows its start by a moment
            want, roles = {"kafka", "redis", "g0-processor-1", "loadgen"}, set()
            until = time.monotonic() + 2
            while not want <= roles and time.monotonic() < until:
                roles = {
                    p.name.split("-", 3)[3]
                    for p in base.iterdir()
                    if cgroups.owner_of(p.name) == proc.pid
                }
                time.sleep(0.02)
            assert want <= roles, roles
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    alive = [
        pid
        for pid in children
        if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    ]
    assert alive == []
    results = orjson.loads((out / "results.json").read_bytes())
    assert results["complete"] is False and results["interrupted"] is True
    if base is not None:
        left = [p.name for p in base.iterdir() if cgroups.owner_of(p.name) == proc.pid]
        assert left == [], f"cgroups left after Ctrl-C: {left}"
        assert results["budgets"]["processor_cpu"] == 0.5


def _children(pid: int) -> list[Any]:
    import psutil

    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.NoSuchProcess:
        return []


def _cmdline(process: Any) -> str:
    import psutil

    try:
        return " ".join(process.cmdline())
    except psutil.Error:
        return ""
