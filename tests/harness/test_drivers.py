"""Every trial kind has a driver, and LocalWorkers' processes are stopped with the run's group."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import get_args

from cryptostream.stack.supervisor import ProcessGroup
from cryptostream_lab.harness.drivers import LocalWorkers, Workers
from cryptostream_lab.harness.model import Trial
from cryptostream_lab.harness.runner import DirectLoad, FullPathReplay


def test_every_trial_kind_has_exactly_one_driver() -> None:
    kinds = set(get_args(Trial.model_fields["kind"].annotation))
    driven = [*DirectLoad.kinds, *FullPathReplay.kinds]
    assert sorted(driven) == sorted(kinds)


def test_local_workers_run_here_and_stop_with_the_group(tmp_path: Path) -> None:
    group = ProcessGroup()
    workers: Workers = LocalWorkers(group)
    proc = workers.process(
        "sleeper",
        [sys.executable, "-c", "import time; time.sleep(60)"],
        env={},
        log_path=tmp_path / "sleeper.log",
    )
    assert proc.pid is None and len(group.processes) == 1  # in the group before it starts
    proc.start()
    try:
        assert proc.pid is not None and proc.alive()
    finally:
        group.stop_all()
    assert not proc.alive() and proc.returncode() is not None
