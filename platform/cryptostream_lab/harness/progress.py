"""What a long run shows while it runs (pure): trial k of N with an ETA, Locust's live request
rate, and summary lines that fit a 100-column terminal."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

WIDTH = 100


def eta_s(elapsed_s: float, done: int, total: int) -> float | None:
    """Time left for the run at the mean pace of the trials done so far; None before the first
    trial ends (nothing to extrapolate from: a guess from the planned durations would leave out
    start-up and drains, which dominate short trials)."""
    if done <= 0 or elapsed_s <= 0:
        return None
    return max(0.0, elapsed_s / done * max(0, total - done))


def duration_text(seconds: float | None) -> str:
    """``"45s"``, ``"4m10s"``, ``"1h02m"``; ``"?"`` when unknown."""
    if seconds is None:
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def trial_status(done: int, total: int, elapsed_s: float) -> str:
    """``"trial 3 of 12, ETA 4m10s"``: the trial about to run (done + 1) and the time left."""
    current = min(done + 1, total)
    return f"trial {current} of {total}, ETA {duration_text(eta_s(elapsed_s, done, total))}"


def wrap(parts: Sequence[str], width: int = WIDTH, sep: str = "; ") -> list[str]:
    """Join ``parts`` greedily into lines of at most ``width`` columns; continuation lines are
    indented two spaces. A part longer than a line is cut with an ellipsis, so no line is wider."""
    lines: list[str] = []
    current = ""
    for part in parts:
        indent = "  " if lines or current else ""
        room = width - len(indent)
        if len(part) > room:
            part = part[: room - 3] + "..."
        if current and len(current) + len(sep) + len(part) <= width:
            current += sep + part
        else:
            if current:
                lines.append(current)
            current = ("  " if lines or current else "") + part
    if current:
        lines.append(current)
    return lines


def locust_live(prefix: Path) -> str | None:
    """Locust's current aggregate rate from the newest row of ``<prefix>_stats_history.csv``
    (written every second while it runs); None before its first row."""
    history = Path(f"{prefix}_stats_history.csv")
    try:
        with history.open() as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("Name") == "Aggregated"]
    except OSError:
        return None
    if not rows:
        return None
    last = rows[-1]
    try:
        rate = float(last.get("Requests/s") or 0)
        failures = float(last.get("Failures/s") or 0)
        users = int(float(last.get("User Count") or 0))
    except ValueError:
        return None
    return f"locust {rate:,.0f} req/s, {failures:,.0f} failures/s, {users} users"
