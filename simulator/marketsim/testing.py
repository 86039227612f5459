"""Helpers for tests: the simulator as a child process (and re-exports of the in-process API)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from marketsim.server import SimConfig, Simulator

__all__ = ["SimConfig", "Simulator", "SimulatorProcess"]


class SimulatorProcess:
    """``python -m marketsim`` in its own process group, on a free port unless ``--port`` is given.

    ``with SimulatorProcess(["--seed", "7"], tmp_path) as sim: sim.ws_url, sim.stats()``.
    """

    def __init__(
        self,
        args: list[str],
        workdir: Path,
        *,
        start_timeout: float = 20.0,
        python: str = sys.executable,
        name: str = "marketsim",
    ) -> None:
        self.args = list(args)
        self.workdir = Path(workdir)
        self.start_timeout = start_timeout
        self.python = python
        self.name = name
        self.ready_file = self.workdir / f"{name}.ready.json"
        self.log_path = self.workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self._log: IO[bytes] | None = None

    @property
    def ws_url(self) -> str:
        return str(self.info["ws_url"])

    @property
    def rest_url(self) -> str:
        return str(self.info["rest_url"])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> SimulatorProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ready_file.unlink(missing_ok=True)
        args = list(self.args)
        if "--port" not in args:
            args += ["--port", "0"]
        args += ["--ready-file", str(self.ready_file)]
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [self.python, "-m", "marketsim", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=self.workdir,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.ready_file.exists():
                try:
                    self.info = json.loads(self.ready_file.read_text())
                    return self
                except json.JSONDecodeError:  # pragma: no cover - replace is atomic
                    pass
            if self.proc.poll() is not None:
                self._fail(f"exited with code {self.proc.returncode} before it was ready")
            time.sleep(0.02)
        self._fail(f"not ready within {self.start_timeout:.0f} s")
        raise AssertionError("unreachable")

    def _fail(self, why: str) -> None:
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"marketsim {why}; log tail:\n{tail}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def get_json(self, path: str, timeout: float = 5.0) -> Any:
        with urllib.request.urlopen(self.rest_url + path, timeout=timeout) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        data = self.get_json("/sim/stats")
        assert isinstance(data, dict)
        return data

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process group, then SIGKILL after ``timeout``; returns the exit code."""
        proc = self.proc
        rc: int | None = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
            rc = proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        return rc

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
