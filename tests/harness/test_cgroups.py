"""CPU budgets: quota arithmetic, names, stale detection (pure), then a real cgroup (root)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from cryptostream_lab.harness import cgroups
from cryptostream_lab.harness.cgroups import (
    BudgetError,
    CpuBudgets,
    Hierarchy,
    cgroup_name,
    cpu_max_line,
    find_hierarchy,
    open_budgets,
    owner_of,
    parse_cpu_stat,
    quota_us,
    stale_names,
    throttled_share,
)
from cryptostream_lab.harness.model import parse_experiment

# --- pure ----------------------------------------------------------------------------------------


def test_quota_is_cores_times_the_period_with_the_kernel_minimum() -> None:
    assert quota_us(0.1) == 10_000
    assert quota_us(1.5) == 150_000
    assert quota_us(0.2, period_us=50_000) == 10_000
    assert quota_us(0.001) == 1_000  # the kernel refuses less than 1 ms
    assert cpu_max_line(0.25) == "25000 100000"
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            quota_us(bad)


def test_names_carry_the_owner_and_stale_ones_are_those_of_dead_owners() -> None:
    name = cgroup_name(4242, "g0-processor-1")
    assert name == "csp-harness-4242-g0-processor-1"
    assert owner_of(name) == 4242
    assert owner_of(cgroup_name(7, "a/b c")) == 7  # unsafe characters replaced, owner kept
    assert owner_of("system.slice") is None and owner_of("csp-harness-x-y") is None
    names = [cgroup_name(1, "kafka"), cgroup_name(2, "redis"), "docker", cgroup_name(3, "p")]
    assert stale_names(names, alive=lambda pid: pid == 2) == sorted(
        [cgroup_name(1, "kafka"), cgroup_name(3, "p")]
    )


def test_cpu_stat_and_throttled_share() -> None:
    before = parse_cpu_stat("nr_periods 100\nnr_throttled 10\nthrottled_time 5000\n")
    after = parse_cpu_stat("nr_periods 300\nnr_throttled 110\nthrottled_time 9000\nbogus\n")
    assert after["throttled_time"] == 9000
    assert throttled_share(before, after) == pytest.approx(0.5)
    assert throttled_share(after, after) is None  # no period elapsed: unknown, not 0


def test_budgets_section_of_an_experiment() -> None:
    x = parse_experiment("[workload]\nrate = 100\n[budgets]\nprocessor_cpu = 0.1\n")
    assert x.budgets.processor_cpu == 0.1 and x.budgets.any
    assert not parse_experiment("[workload]\nrate = 100\n").budgets.any
    with pytest.raises(ValueError):
        parse_experiment("[workload]\nrate = 100\n[budgets]\nprocessor_cpu = 0\n")


# --- the file-system shell on a fake hierarchy ---------------------------------------------------


def test_no_writable_cpu_controller_is_a_clear_error(tmp_path: Path) -> None:
    found = find_hierarchy(tmp_path)
    assert isinstance(found, BudgetError)
    assert "no cgroup cpu controller" in str(found)
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("memory pids\n")
    found = find_hierarchy(tmp_path)
    assert isinstance(found, BudgetError) and "has no cpu controller" in str(found)
    with pytest.raises(BudgetError, match="CPU budgets cannot be enforced here"):
        open_budgets(tmp_path)


def test_stale_cgroups_of_dead_owners_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine, theirs = cgroup_name(os.getpid(), "p"), cgroup_name(dead.pid, "p")
    for name in (mine, theirs, "unrelated"):
        (tmp_path / name).mkdir()
    budgets = CpuBudgets(Hierarchy(tmp_path, 1))
    assert budgets.remove_stale() == [theirs]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine, "unrelated"])


def test_a_budgeted_experiment_never_runs_unbudgeted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cryptostream_lab.harness import runner

    monkeypatch.setattr(runner, "open_budgets", lambda: cgroups.open_budgets(tmp_path / "none"))
    text = "[workload]\nrate = 100\nduration_s = 1\nwarmup_s = 0\n[budgets]\nprocessor_cpu = 0.1\n"
    options = runner.RunOptions(
        parse_experiment(text), text, out_dir=tmp_path / "out", progress=False
    )
    with pytest.raises(BudgetError, match="cannot be enforced"):
        runner.run_experiment(options)
    assert not (tmp_path / "out").exists()  # stopped before starting or writing anything


# --- a real cgroup (root on Linux) ---------------------------------------------------------------


def _real_budgets() -> CpuBudgets:
    try:
        return open_budgets()
    except BudgetError as exc:
        pytest.skip(str(exc))


BUSY = "import time\nend = time.monotonic() + 30\nwhile time.monotonic() < end: pass\n"


def test_a_busy_loop_under_a_fifth_of_a_core_gets_about_that() -> None:
    budgets = _real_budgets()
    child = subprocess.Popen([sys.executable, "-c", BUSY])
    try:
        group = budgets.budget("test-busy", 0.2, child.pid)
        assert group is not None
        assert str(child.pid) in (group.path / "cgroup.procs").read_text().split()
        if group.version == 1:  # the budget is also a guarantee: a high CFS weight
            assert int((group.path / "cpu.shares").read_text()) == cgroups.SHARES_V1
        proc = psutil.Process(child.pid)
        time.sleep(0.5)  # settle into the quota
        cpu0, wall0, stat0 = sum(proc.cpu_times()[:2]), time.monotonic(), group.cpu_stat()
        time.sleep(3.0)
        cores = (sum(proc.cpu_times()[:2]) - cpu0) / (time.monotonic() - wall0)
        share = throttled_share(stat0, group.cpu_stat())
        # A correctness check of the mechanism with a generous bound, not a speed claim: an
        # unbudgeted busy loop takes a whole core.
        assert cores <= 0.25, f"the busy loop used {cores:.2f} cores under a 0.2-core budget"
        assert cores > 0.05
        assert share is not None and share > 0.5  # it kept hitting its quota
    finally:
        child.kill()
        child.wait()
        budgets.close()
    assert not group.path.exists()
    assert not budgets.groups


def test_children_forked_before_and_after_the_move_are_budgeted_and_cleaned_up() -> None:
    budgets = _real_budgets()
    script = (
        "import subprocess, sys, time\n"
        f"c = subprocess.Popen([sys.executable, '-c', {BUSY!r}])\n"
        "time.sleep(30)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not psutil.Process(parent.pid).children() and time.monotonic() < deadline:
            time.sleep(0.05)
        group = budgets.budget("test-tree", 0.2, parent.pid)
        assert group is not None
        inside = set(group.procs())
        kids = {c.pid for c in psutil.Process(parent.pid).children(recursive=True)}
        assert kids and kids | {parent.pid} <= inside
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()
        budgets.close()
    assert not group.path.exists()


def test_a_sigkilled_harness_leaves_a_cgroup_the_next_run_removes() -> None:
    budgets = _real_budgets()
    # A "harness" that budgets a child, then dies by SIGKILL (no finally runs).
    script = (
        "import os, signal, subprocess, sys\n"
        "from cryptostream_lab.harness.cgroups import open_budgets\n"
        "b = open_budgets()\n"
        "c = subprocess.Popen([sys.executable, '-c', 'pass'])\n"
        "g = b.budget('crashed', 0.1, c.pid)\n"
        "c.wait()\n"
        "print(g.path, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    left = Path(done.stdout.strip())
    assert left.exists() and owner_of(left.name) is not None
    removed = budgets.remove_stale()
    assert left.name in removed
    assert not left.exists()
