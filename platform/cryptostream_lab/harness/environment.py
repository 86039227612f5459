"""Where a run happened: machine, OS, versions, git commit (recorded in results.json)."""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

LIBRARIES = (
    "confluent-kafka",
    "redis",
    "hiredis",
    "orjson",
    "pydantic",
    "fastapi",
    "uvicorn",
    "websockets",
    "hdrhistogram",
    "matplotlib",
    "locust",
    "psutil",
)


def _cmd(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (done.stdout + done.stderr).strip()


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def os_release() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.platform()


def collect(kafka_version: str, repo: Path | None = None) -> dict[str, Any]:
    repo = repo or Path.cwd()
    java = _cmd([shutil.which("java") or "java", "-version"]).splitlines()
    redis_version = re.search(r"v=(\S+)", _cmd(["redis-server", "--version"]))
    versions = {}
    for name in LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    dirty = _cmd(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"])
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": os_release(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "java": java[0] if java else "unknown",
        "kafka": kafka_version,
        "redis": redis_version.group(1) if redis_version else "unknown",
        "libraries": versions,
        "git_commit": _cmd(["git", "-C", str(repo), "rev-parse", "HEAD"]) or "unknown",
        "git_dirty": bool(dirty),
        "load_average": list(os.getloadavg()),
    }
