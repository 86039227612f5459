"""py-spy around a service process, and its raw output summarised (shared by the benchmarks)."""

from __future__ import annotations

import collections
import re
import shutil
import sys
from pathlib import Path
from typing import Any

Groups = list[tuple[str, tuple[str, ...]]]


def py_spy_argv(output: Path, service: str) -> list[str]:
    """``csp <service>`` under py-spy (sampling, non-blocking: the process runs at full speed)."""
    return [
        shutil.which("py-spy") or "py-spy",
        "record",
        "--nonblocking",
        "--rate",
        "200",
        "--function",
        "--format",
        "raw",
        "-o",
        str(output),
        "--",
        sys.executable,
        "-m",
        "cryptostream",
        service,
    ]


def summarize_profile(path: Path, groups: Groups) -> dict[str, Any]:
    """Self time per function (leaf frames) and inclusive share per part of the process: a
    sample counts for the innermost frame that matches a group's keys."""
    leaf: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        n = int(count_text)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        total += n
        if any("importlib" in f for f in frames):
            inclusive["start-up (imports)"] += n
            continue
        leaf[frames[-1]] += n
        for frame in reversed(frames):
            group = next((g for g, keys in groups if any(k in frame for k in keys)), None)
            if group is not None:
                inclusive[group] += n
                break
        else:
            inclusive["other"] += n
    return {
        "samples": total,
        "share_by_part": {g: round(n / total, 3) for g, n in inclusive.most_common()},
        "top_self": [
            {"function": f[:140], "share": round(n / total, 3)} for f, n in leaf.most_common(15)
        ],
    }
