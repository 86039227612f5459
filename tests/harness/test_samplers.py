"""Resource accounting: a process's CPU includes its children's (uvicorn workers, Locust)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from cryptostream_lab.harness import rendering
from cryptostream_lab.harness.samplers import Sampler

BUSY = "import time\nend = time.monotonic() + 20\nwhile time.monotonic() < end: pass\n"


class _NoProbe:
    def produced(self) -> dict[int, int]:
        return {}

    def applied(self) -> dict[int, int]:
        return {}


def test_cpu_of_a_process_counts_its_children() -> None:
    # An idle parent whose only work is done by a child it forked, like uvicorn's supervisor.
    script = f"import subprocess, sys, time\nsubprocess.Popen([sys.executable, '-c', {BUSY!r}])\ntime.sleep(20)\n"
    parent = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    try:
        sampler = Sampler(_NoProbe(), 0.5, lambda: {"query": parent.pid})  # type: ignore[arg-type]
        time.sleep(0.5)  # the child exists
        for _ in range(4):
            sampler.sample()
            time.sleep(0.5)
        cpu = sampler.series.cpu["query"]
        # The busy child's CPU (a whole core when the machine is idle, less on a busy one),
        # although the parent itself only sleeps (~0 %).
        assert max(cpu[1:]) > 10, cpu
        assert max(sampler.series.rss_mb["query"]) > 10  # both processes' memory
        assert len(sampler.series.machine_cpu) == 4
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()


def test_query_report_sets_server_rps_beside_locust_and_names_a_saturated_generator() -> None:
    trial: dict[str, Any] = {
        "cpu_percent_mean": {"query-1": 140.0, "locust": 97.0, "processor-1": 20.0},
        "query_load": {
            "stats": [{"Name": "Aggregated", "Requests/s": "4030.5"}],
            "server_requests": 80_000,
            "server_seconds": 20.0,
        },
    }
    text = rendering._query_accounting(trial)
    assert "counted 4,000 req/s itself" in text and "Locust's 4,030 req/s" in text
    assert "query API 140 %" in text and "Locust 97 %" in text
    assert "load generator was the bottleneck" in text
    trial["cpu_percent_mean"]["locust"] = 40.0
    assert "bottleneck" not in rendering._query_accounting(trial)


def test_query_cpu_is_averaged_over_locusts_own_run() -> None:
    # Locust ran from 0.5 s to 2.5 s of a 4-sample trial: the trial mean (46 %) hides that it
    # used a whole core while it ran.
    trial: dict[str, Any] = {
        "cpu_percent_mean": {"query-1": 30.0, "locust": 46.0},
        "series": {
            "t": [0.0, 1.0, 2.0, 3.0],
            "cpu_percent": {"query-1": [5.0, 55.0, 60.0, 0.0], "locust": [0.0, 90.0, 94.0, 0.0]},
        },
        "query_load": {"stats": [], "window_s": [0.5, 2.5]},
    }
    text = rendering._query_accounting(trial)
    assert "over Locust's run: query API 58 %" in text and "Locust 92 %" in text
    assert "load generator was the bottleneck" in text
