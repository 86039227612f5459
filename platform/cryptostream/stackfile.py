"""Where a running ``csp stack up`` publishes its addresses for the other commands.

The contract between the stack and the settings (``config.py`` reads it as its lowest-priority
source), so it sits beside ``config.py``, below both, not inside ``stack/``."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import orjson


def write_stack_file(
    path: Path,
    *,
    kafka_bootstrap: str,
    redis_url: str,
    redis_cluster: bool = False,
    redis_cluster_nodes: list[str] | None = None,
) -> None:
    """``redis_cluster_nodes``: every node of a Redis Cluster as host:port, the seeds a process
    started while ``redis_url``'s node is down reaches the cluster through."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "pid": os.getpid(),
        "kafka_bootstrap": kafka_bootstrap,
        "redis_url": redis_url,
    }
    if redis_cluster:  # the services started in other terminals must know
        doc["redis_cluster"] = True
    if redis_cluster_nodes:
        doc["redis_cluster_nodes"] = redis_cluster_nodes
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    tmp.replace(path)


def remove_stack_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if orjson.loads(path.read_bytes()).get("pid") == os.getpid():
            path.unlink()


def live_stack_pid(path: Path) -> int | None:
    """The pid of the ``csp stack up`` that wrote the file, if it is still running."""
    try:
        pid = int(orjson.loads(path.read_bytes())["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return None
    return pid


def read_live_stack_file(path: Path) -> dict[str, Any]:
    """The published addresses, or nothing if the file is absent or its stack has died."""
    try:
        doc = orjson.loads(path.read_bytes())
        os.kill(int(doc["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return {}
    return {
        key: doc[key]
        for key in ("kafka_bootstrap", "redis_url", "redis_cluster", "redis_cluster_nodes")
        if key in doc
    }
