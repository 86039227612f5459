"""CPU budgets per process, as Kubernetes CPU limits do it: one cgroup per process, a CFS quota.

A budget of ``c`` cores is a quota of ``c x period`` microseconds of CPU per period (100 ms), for
all threads and children of the process together, with a high CFS weight so that the budget is
also a guarantee on a machine shared with other work (a Kubernetes "Guaranteed" pod: request =
limit). cgroup v1 (``cpu.cfs_quota_us`` and
``cpu.cfs_period_us`` under the ``cpu`` hierarchy) and v2 (``cpu.max``) are both handled.

The harness creates the cgroups (named ``csp-harness-<owner pid>-<role>``), moves a process (and
its children) in right after starting it, and removes every cgroup on every exit path; cgroups
left by a run that was SIGKILLed are removed at the next start (their owner pid is dead). Where no
cgroup is writable, :func:`open_budgets` raises :class:`BudgetError`: a budgeted experiment never
runs unbudgeted silently.

The pure parts (quota arithmetic, names, stale detection, ``cpu.stat`` parsing) are separate from
the file-system shell so that they can be tested without root.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

PREFIX = "csp-harness"
PERIOD_US = 100_000
# Kubernetes' "Guaranteed" class: the limit is also a request. A high CFS weight lets a budgeted
# process run whenever it is under its quota, even on a machine busy with other work; the quota
# still caps it, so it can never take more than its budget from anyone.
SHARES_V1 = 16 * 1024  # cpu.shares (default 1024, one ordinary process)
WEIGHT_V2 = 10_000  # cpu.weight (default 100, maximum 10000)
MIN_QUOTA_US = 1_000  # the kernel refuses quotas below 1 ms
_NAME = re.compile(rf"^{PREFIX}-(\d+)-[A-Za-z0-9_.-]+$")


class BudgetError(RuntimeError):
    """CPU budgets were asked for but cannot be enforced here; the message says why."""


# --- pure -----------------------------------------------------------------------------------------


def quota_us(cores: float, period_us: int = PERIOD_US) -> int:
    """CFS quota (µs per period) of a budget in cores; at least the kernel's 1 ms minimum."""
    if not cores > 0:
        raise ValueError(f"a CPU budget must be positive, got {cores!r} cores")
    return max(MIN_QUOTA_US, round(cores * period_us))


def cpu_max_line(cores: float, period_us: int = PERIOD_US) -> str:
    """cgroup v2 ``cpu.max`` content: ``"<quota> <period>"``."""
    return f"{quota_us(cores, period_us)} {period_us}"


def cgroup_name(owner_pid: int, role: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", role) or "x"
    return f"{PREFIX}-{owner_pid}-{safe}"


def owner_of(name: str) -> int | None:
    """The owner pid encoded in a harness cgroup's name, None for any other directory."""
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def stale_names(names: Iterable[str], alive: Callable[[int], bool]) -> list[str]:
    """Harness cgroups whose owner process is gone (left by a crashed run)."""
    return sorted(n for n in names if (pid := owner_of(n)) is not None and not alive(pid))


def parse_cpu_stat(text: str) -> dict[str, int]:
    """``cpu.stat`` lines (``key value``) as a dict; v1 and v2 name throttling differently."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def throttled_share(before: dict[str, int], after: dict[str, int]) -> float | None:
    """Fraction of CFS periods in which the group was throttled between two ``cpu.stat`` reads."""
    periods = after.get("nr_periods", 0) - before.get("nr_periods", 0)
    if periods <= 0:
        return None
    return (after.get("nr_throttled", 0) - before.get("nr_throttled", 0)) / periods


# --- file-system shell ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Hierarchy:
    """Where cgroups with a CPU controller can be made: the directory and its version."""

    base: Path  # the harness's own cgroup; new cgroups are made beneath it
    version: int  # 1 or 2


def _own_cgroup(version: int) -> str:
    """This process's cgroup path within the cpu (v1) or unified (v2) hierarchy."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return "/"
    for line in lines:
        hid, controllers, path = line.split(":", 2)
        if version == 1 and "cpu" in controllers.split(","):
            return path
        if version == 2 and hid == "0":
            return path
    return "/"


def find_hierarchy(root: Path = Path("/sys/fs/cgroup")) -> Hierarchy | BudgetError:
    """A writable cgroup hierarchy with the CPU controller, or why there is none."""
    reasons: list[str] = []
    candidates: list[tuple[Path, int]] = []
    for v1 in (root / "cpu", root / "cpu,cpuacct"):
        if (v1 / "cpu.cfs_quota_us").exists():
            candidates.append((v1, 1))
    for v2 in (root, root / "unified"):
        controllers = v2 / "cgroup.controllers"
        if controllers.exists():
            if "cpu" in controllers.read_text().split():
                candidates.append((v2, 2))
            else:
                reasons.append(f"{v2} (cgroup v2) has no cpu controller")
    if not candidates:
        reasons.append(f"no cgroup cpu controller mounted under {root}")
    for mount, version in candidates:
        own = _own_cgroup(version).lstrip("/")
        base = mount / own if own else mount
        if version == 2 and base != mount:
            # v2: a process may not live in a cgroup that has children with controllers
            # ("no internal processes"), so make the budget cgroups next to the root's.
            base = mount
        if not os.access(base, os.W_OK):
            reasons.append(f"{base} is not writable (CPU budgets need root or a delegated cgroup)")
            continue
        if version == 2 and not _enable_cpu_v2(base):
            reasons.append(f"cannot enable the cpu controller in {base}/cgroup.subtree_control")
            continue
        return Hierarchy(base, version)
    return BudgetError("CPU budgets cannot be enforced here: " + "; ".join(reasons))


def _enable_cpu_v2(base: Path) -> bool:
    """v2: children get the cpu controller only if their parent's subtree_control names it."""
    control = base / "cgroup.subtree_control"
    try:
        if "cpu" in control.read_text().split():
            return True
        control.write_text("+cpu")
        return "cpu" in control.read_text().split()
    except OSError:
        return False


@dataclass
class Cgroup:
    path: Path
    version: int
    cores: float

    def procs(self) -> list[int]:
        try:
            return [int(x) for x in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def cpu_stat(self) -> dict[str, int]:
        try:
            return parse_cpu_stat((self.path / "cpu.stat").read_text())
        except OSError:
            return {}


@dataclass
class CpuBudgets:
    """The cgroups of one harness run: created on demand, all removed by :meth:`close`."""

    hierarchy: Hierarchy
    owner: int = field(default_factory=os.getpid)
    groups: dict[str, Cgroup] = field(default_factory=dict)

    def remove_stale(self) -> list[str]:
        """Remove cgroups of earlier runs whose owner died (a SIGKILLed harness)."""
        names = [p.name for p in self.hierarchy.base.iterdir() if p.is_dir()]
        removed = []
        for name in stale_names(names, psutil.pid_exists):
            if _remove(
                Cgroup(self.hierarchy.base / name, self.hierarchy.version, 0), self.hierarchy.base
            ):
                removed.append(name)
        return removed

    def create(self, role: str, cores: float) -> Cgroup:
        name = cgroup_name(self.owner, role)
        path = self.hierarchy.base / name
        if name in self.groups:
            self.release(role)
        try:
            path.mkdir(exist_ok=True)
            if self.hierarchy.version == 1:
                (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (path / "cpu.cfs_quota_us").write_text(str(quota_us(cores)))
                (path / "cpu.shares").write_text(str(SHARES_V1))
            else:
                (path / "cpu.max").write_text(cpu_max_line(cores))
                (path / "cpu.weight").write_text(str(WEIGHT_V2))
        except OSError as exc:
            with contextlib.suppress(OSError):
                path.rmdir()
            raise BudgetError(f"cannot create the CPU budget cgroup {path}: {exc}") from exc
        group = Cgroup(path, self.hierarchy.version, cores)
        self.groups[name] = group
        return group

    def attach(self, group: Cgroup, pid: int) -> None:
        """Move a process and every descendant it has already forked into the cgroup."""
        pids = [pid]
        with contextlib.suppress(psutil.Error):
            pids += [c.pid for c in psutil.Process(pid).children(recursive=True)]
        for p in pids:
            try:
                (group.path / "cgroup.procs").write_text(str(p))
            except ProcessLookupError:
                continue  # exited meanwhile
            except OSError as exc:
                raise BudgetError(f"cannot move pid {p} into {group.path}: {exc}") from exc

    def budget(self, role: str, cores: float | None, pid: int | None) -> Cgroup | None:
        """``create`` + ``attach`` for a process with a budget; nothing for ``cores=None``."""
        if cores is None or pid is None:
            return None
        group = self.create(role, cores)
        self.attach(group, pid)
        return group

    def release(self, role: str) -> None:
        name = cgroup_name(self.owner, role)
        group = self.groups.pop(name, None)
        if group is not None:
            _remove(group, self.hierarchy.base)

    def close(self) -> None:
        """Remove every cgroup of this run (processes still inside go back to the base)."""
        for name in list(self.groups):
            _remove(self.groups.pop(name), self.hierarchy.base)


def _remove(group: Cgroup, base: Path, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        for pid in group.procs():
            with contextlib.suppress(OSError):
                (base / "cgroup.procs").write_text(str(pid))
        try:
            group.path.rmdir()
            return True
        except FileNotFoundError:
            return True
        except OSError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)  # an exiting process leaves the cgroup a moment later


def open_budgets(root: Path = Path("/sys/fs/cgroup")) -> CpuBudgets:
    """Budgets on this machine's writable CPU hierarchy (stale groups removed), or BudgetError."""
    found = find_hierarchy(root)
    if isinstance(found, BudgetError):
        raise found
    budgets = CpuBudgets(found)
    budgets.remove_stale()
    return budgets
