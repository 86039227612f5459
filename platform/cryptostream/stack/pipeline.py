"""Launch the pipeline's services as supervised child processes (demo, tests, experiments)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from cryptostream.stack.supervisor import ManagedProcess, ProcessGroup, StackError, free_port


@dataclass
class SimulatorHandle:
    process: ManagedProcess
    ws_url: str
    rest_url: str

    def stats(self) -> dict[str, object]:
        reply = httpx.get(f"{self.rest_url}/sim/stats", timeout=5)
        reply.raise_for_status()
        result: dict[str, object] = reply.json()
        return result


@dataclass
class QueryHandle:
    process: ManagedProcess
    base_url: str


@dataclass
class Pipeline:
    """The services of one run, sharing Kafka/Redis addresses and a log folder."""

    workdir: Path
    kafka_bootstrap: str
    redis_url: str
    symbols: list[str]
    extra_env: dict[str, str] = field(default_factory=dict)
    group: ProcessGroup = field(default_factory=ProcessGroup)
    _counter: int = 0

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "CSP_KAFKA_BOOTSTRAP": self.kafka_bootstrap,
            "CSP_REDIS_URL": self.redis_url,
            "CSP_SYMBOLS": ",".join(self.symbols),
            "CSP_RUN_DIR": str(self.workdir),  # never pick up another stack's file
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        env.update(extra)
        return env

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> ManagedProcess:
        self._counter += 1
        log_path = self.workdir / "logs" / f"{name}.log"
        return self.group.add(ManagedProcess(name, argv, log_path=log_path, env=env).start())

    def start_simulator(self, args: list[str], timeout: float = 30.0) -> SimulatorHandle:
        ready = self.workdir / f"simulator-{self._counter}.ready.json"
        ready.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "marketsim", "--port", "0", "--ready-file", str(ready), *args]
        process = self._spawn(f"simulator-{self._counter}", argv, self.env())
        process.wait_until(ready.exists, timeout=timeout, what="listening (ready file)")
        doc = orjson.loads(ready.read_bytes())
        return SimulatorHandle(process, doc["ws_url"], doc["rest_url"])

    def start_ingest(self, ws_url: str, **env: str) -> ManagedProcess:
        argv = [sys.executable, "-m", "cryptostream", "ingest"]
        return self._spawn(
            f"ingest-{self._counter}", argv, self.env(CSP_BINANCE_WS_URL=ws_url, **env)
        )

    def start_processor(self, **env: str) -> ManagedProcess:
        argv = [sys.executable, "-m", "cryptostream", "processor"]
        return self._spawn(f"processor-{self._counter}", argv, self.env(**env))

    def start_query(
        self, port: int = 0, timeout: float = 30.0, args: Sequence[str] = (), **env: str
    ) -> QueryHandle:
        port = port or free_port()
        argv = [sys.executable, "-m", "cryptostream", "query", *args]
        process = self._spawn(
            f"query-{self._counter}", argv, self.env(CSP_QUERY_PORT=str(port), **env)
        )
        base_url = f"http://127.0.0.1:{port}"
        process.wait_until(
            lambda: httpx.get(f"{base_url}/health", timeout=1).status_code == 200,
            timeout=timeout,
            what="an answer on /health",
        )
        return QueryHandle(process, base_url)

    def check_alive(self) -> None:
        """Raise if any service died on its own (a crash must never go unnoticed)."""
        for process in self.group.processes:
            if process.proc is not None and not process.alive():
                raise StackError(
                    f"{process.name} exited with code {process.returncode()}; last lines of "
                    f"{process.log_path}:\n{process.log_tail()}"
                )

    def stop(self) -> None:
        self.group.stop_all()


def wait_for(condition: object, timeout: float, what: str, interval: float = 0.2) -> None:
    """Poll ``condition()`` until truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if condition():  # type: ignore[operator]
                return
        except Exception as exc:  # the condition may probe a service that is still starting
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(
        f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error!r})"
    )
