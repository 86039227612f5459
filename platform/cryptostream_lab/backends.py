"""Where the tests' Kafka and Redis run: local child processes, or containers (testcontainers).

``CSP_TEST_BACKEND`` chooses: ``local`` (the embedded stack: Kafka from Maven + ``redis-server``),
``docker`` (``apache/kafka`` and ``redis`` containers through testcontainers; fails clearly when
no Docker engine answers) or ``auto`` (the default: containers when a Docker engine answers,
local processes otherwise, saying why). Both backends offer the same ``kafka_bootstrap`` and
``redis_url``, so the integration and end-to-end tests run unchanged on either.

The decision (:func:`choose_backend`) is pure; probing the engine is the only I/O before start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from cryptostream.config import Settings
from cryptostream.kafka_connection import KafkaConnection
from cryptostream.stack.local import LocalStack
from cryptostream.stack.supervisor import StackError, free_port

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

BackendName = Literal["auto", "local", "docker"]
REDIS_IMAGE = "redis:7.4-alpine"


class BackendError(RuntimeError):
    """The requested backend cannot be used; the message says why and what to do."""


class Stack(Protocol):
    """What the test fixtures need from a running Kafka + Redis, whichever backend runs them."""

    @property
    def kafka_bootstrap(self) -> str: ...

    @property
    def kafka_connection(self) -> KafkaConnection: ...

    @property
    def redis_url(self) -> str: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class EngineProbe:
    available: bool
    detail: str


@dataclass(frozen=True)
class BackendChoice:
    backend: Literal["local", "docker"]
    reason: str


def probe_docker_engine(timeout_s: float = 2.0) -> EngineProbe:
    """Ask the Docker engine (DOCKER_HOST or the default socket) for a ping, briefly."""
    try:
        import docker
        from docker.errors import DockerException
    except ImportError:
        return EngineProbe(False, "the 'docker' package is missing (pip install -e '.[dev]')")
    try:
        client = docker.from_env(timeout=max(1, int(timeout_s)))
    except DockerException as exc:
        return EngineProbe(False, f"no Docker engine answers: {_first_line(exc)}")
    try:
        client.ping()
        version = client.version().get("Version", "?")
    except Exception as exc:  # requests/urllib3 errors of all kinds surface here
        return EngineProbe(False, f"no Docker engine answers: {_first_line(exc)}")
    finally:
        client.close()
    return EngineProbe(True, f"Docker engine {version} answers")


def choose_backend(requested: str, probe: Callable[[], EngineProbe]) -> BackendChoice:
    """The backend to use for ``CSP_TEST_BACKEND=requested`` (probe is only called if needed)."""
    if requested == "local":
        return BackendChoice("local", "CSP_TEST_BACKEND=local: Kafka and Redis as child processes")
    if requested not in ("auto", "docker"):
        raise BackendError(f"CSP_TEST_BACKEND must be auto, local or docker, not {requested!r}")
    engine = probe()
    if engine.available:
        return BackendChoice(
            "docker",
            f"CSP_TEST_BACKEND={requested}: {engine.detail}; Kafka and Redis run as containers",
        )
    if requested == "docker":
        raise BackendError(
            f"CSP_TEST_BACKEND=docker, but {engine.detail}. Start Docker (or point DOCKER_HOST "
            "at an engine), or use CSP_TEST_BACKEND=local (or auto) for local child processes."
        )
    return BackendChoice(
        "local",
        f"CSP_TEST_BACKEND=auto: {engine.detail}; falling back to local Kafka and Redis child "
        "processes (set CSP_TEST_BACKEND=local to skip this probe)",
    )


@dataclass
class ContainerStack:
    """Kafka (official ``apache/kafka`` image, KRaft, no topic auto-creation) and Redis as
    containers. The broker advertises a host port chosen before start, so clients on the host
    reach it directly. Servers cannot be restarted here: tests that restart them use LocalStack.
    """

    settings: Settings
    containers: list[DockerContainer] = field(default_factory=list)
    _kafka_bootstrap: str = ""
    _redis_url: str = ""

    def start(self) -> ContainerStack:
        from testcontainers.core.container import DockerContainer

        try:
            redis = DockerContainer(REDIS_IMAGE).with_exposed_ports(6379)
            self.containers.append(redis.start())
            host = redis.get_container_host_ip()
            self._redis_url = f"redis://{host}:{redis.get_exposed_port(6379)}/0"
            port = free_port()
            kafka = DockerContainer(f"apache/kafka:{self.settings.kafka_version}")
            kafka.with_bind_ports(9092, port)
            kafka.with_envs(**kafka_container_env(advertised=f"{host}:{port}"))
            self.containers.append(kafka.start())
            self._kafka_bootstrap = f"{host}:{port}"
            _wait_for_kafka(self._kafka_bootstrap, self.settings.start_timeout_s)
            _wait_for_redis(self._redis_url, 30.0)
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def kafka_bootstrap(self) -> str:
        return self._kafka_bootstrap

    @property
    def kafka_connection(self) -> KafkaConnection:
        """The broker container runs without authentication."""
        return KafkaConnection(self._kafka_bootstrap)

    @property
    def redis_url(self) -> str:
        return self._redis_url

    def stop(self) -> None:
        while self.containers:
            self.containers.pop().stop()


def kafka_container_env(advertised: str) -> dict[str, str]:
    """Settings of a one-node KRaft broker in the ``apache/kafka`` image (docker-compose.yml
    configures the same, with an in-network listener besides)."""
    return {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://{advertised}",
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
    }


def _wait_for_kafka(bootstrap: str, timeout_s: float) -> None:
    from cryptostream.stack.kafka import metadata_ready
    from cryptostream.topics import TopicError

    deadline = time.monotonic() + timeout_s
    while True:
        error: Exception | None = None
        try:
            if metadata_ready(KafkaConnection(bootstrap), timeout=2):
                return
        except Exception as exc:
            error = exc
        if time.monotonic() > deadline:
            raise TopicError(f"the Kafka container at {bootstrap} never served metadata") from error
        time.sleep(0.2)


def _wait_for_redis(url: str, timeout_s: float) -> None:
    import redis

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client = redis.Redis.from_url(url, socket_timeout=2)
            client.ping()
            client.close()
            return
        except redis.RedisError as exc:
            if time.monotonic() > deadline:
                raise StackError(f"the Redis container at {url} never answered PING") from exc
            time.sleep(0.1)


def start_stack(
    settings: Settings,
    workdir: Path,
    *,
    probe: Callable[[], EngineProbe] = probe_docker_engine,
    report: Callable[[str], Any] = print,
) -> LocalStack | ContainerStack:
    """Start Kafka + Redis on the backend ``settings.test_backend`` names; report the choice."""
    choice = choose_backend(settings.test_backend, probe)
    report(choice.reason)
    if choice.backend == "docker":
        return ContainerStack(settings).start()
    return LocalStack(settings, workdir).start()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
