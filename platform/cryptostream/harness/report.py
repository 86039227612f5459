"""Report generation (placeholder, replaced below)."""

from __future__ import annotations

from pathlib import Path


def write_report(folder: Path) -> list[str]:
    return [str(folder)]
