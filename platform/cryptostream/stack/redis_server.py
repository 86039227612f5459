"""A real ``redis-server`` child process on 127.0.0.1."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from cryptostream.stack.supervisor import ManagedProcess, StackError, free_port, port_in_use


def check_redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError(
            "`redis-server` is not on PATH; install Debian's package: "
            "sudo apt-get install redis-server (the tests and the demo start their own server)."
        )
    return binary


@dataclass
class RedisServer:
    workdir: Path
    port: int = 0
    password: str | None = None
    extra_args: list[str] = field(default_factory=list)
    process: ManagedProcess | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> RedisServer:
        binary = check_redis_server()
        if self.port and port_in_use(self.port):
            raise StackError(f"Redis port {self.port} on 127.0.0.1 is already in use.")
        self.port = self.port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            *(["--requirepass", self.password] if self.password else []),
            *self.extra_args,
        ]
        self.process = ManagedProcess("redis", argv, log_path=self.workdir / "redis.log").start()
        self.process.wait_until(self.ping, timeout=timeout, what="a PING reply")
        return self

    def ping(self) -> bool:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=10)

    def restart(self, timeout: float = 20.0) -> None:
        assert self.process is not None
        self.process.stop(timeout=10)
        self.process.start()
        self.process.wait_until(self.ping, timeout=timeout, what="a PING reply")
