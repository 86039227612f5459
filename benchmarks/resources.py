"""What the parts of a benchmark run used while it ran: CPU per process and the broker JVM's
JIT and GC work, so that a slow round can be told apart by what it paid for."""

from __future__ import annotations

import subprocess
import time

import psutil


class RoundResources:
    """CPU of the parts during one latency round (percent of one core), and the broker JVM's
    JIT compilations and GC time (jstat): what a slow round paid for, next to its latency."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items() if pid is not None}
        self.broker = pids.get("broker")
        self.start = self._sample()

    def _sample(self) -> dict[str, float]:
        out = {"wall": time.monotonic()}
        for name, proc in self.procs.items():
            try:
                times = proc.cpu_times()
                out[name] = times.user + times.system
            except psutil.Error:
                pass
        if self.broker is not None:
            out |= _jstat(self.broker)
        return out

    def finish(self) -> dict[str, float]:
        end = self._sample()
        wall = end["wall"] - self.start["wall"]
        out = {
            f"{name}_cpu_pct": round(100 * (end[name] - self.start[name]) / wall, 1)
            for name in self.procs
            if name in end and name in self.start
        }
        for key in ("jit_compilations", "jit_s", "gc_s"):
            if key in end and key in self.start:
                out[f"broker_{key}"] = round(end[key] - self.start[key], 3)
        return out


def _jstat(pid: int) -> dict[str, float]:
    """The JVM's compiled-method count and compile time, and its total GC time (jstat)."""
    out: dict[str, float] = {}
    try:
        compiler = subprocess.run(
            ["jstat", "-compiler", str(pid)], capture_output=True, text=True, timeout=10
        ).stdout.split()
        gc = subprocess.run(
            ["jstat", "-gcutil", str(pid)], capture_output=True, text=True, timeout=10
        ).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return out
    # -compiler: Compiled Failed Invalid Time FailedType FailedMethod; -gcutil: ... GCT last
    if len(compiler) >= 10 and compiler[0] == "Compiled":
        out["jit_compilations"] = float(compiler[6])
        out["jit_s"] = float(compiler[9])
    if gc and "GCT" in gc:
        half = len(gc) // 2
        out["gc_s"] = float(gc[half + gc.index("GCT")])
    return out
