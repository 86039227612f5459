"""A real Apache Kafka broker (KRaft, one combined node) from Maven Central's artifacts."""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from cryptostream.kafka_connection import KafkaConnection
from cryptostream.stack.supervisor import ManagedProcess, StackError, free_port, port_in_use

MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"  # not org.apache.kafka.tools: that one does not exist
_READY_MARKER = ".resolved"


def check_java() -> str:
    """Return the java executable; fail clearly if it is missing or older than 17."""
    java = shutil.which("java")
    if java is None:
        raise StackError(
            "Java 17+ is required to run the Kafka broker, and `java` is not on PATH "
            "(Debian: apt-get install openjdk-17-jre-headless)."
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    major = int(match.group(1)) if match else 0
    if major == 1 and match and match.group(2):  # "1.8.0_x" style
        major = int(match.group(2))
    if major < 17:
        raise StackError(f"Kafka needs Java 17 or newer, but `java -version` says: {out.strip()}")
    return java


def resolve_kafka_jars(cache_dir: Path, version: str) -> Path:
    """Resolve the broker's jars with Maven once into ``cache_dir``; reuse them afterwards."""
    lib = cache_dir.resolve() / f"kafka-{version}" / "lib"
    if (lib / _READY_MARKER).exists():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError(
            "Maven (`mvn`) is needed once to fetch the Kafka jars from Maven Central and is not "
            "on PATH (Debian: apt-get install maven)."
        )
    lib.parent.mkdir(parents=True, exist_ok=True)
    pom = resources.files("cryptostream.stack").joinpath("kafka-runtime.pom.xml").read_text()
    with tempfile.TemporaryDirectory(dir=lib.parent, prefix="resolve-") as tmp:
        pom_path = Path(tmp) / "pom.xml"
        pom_path.write_text(pom.replace("@KAFKA_VERSION@", version))
        staging = Path(tmp) / "lib"
        result = subprocess.run(
            [
                mvn,
                "-B",
                "-q",
                "-f",
                str(pom_path),
                "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies",
                "-DincludeScope=runtime",
                f"-DoutputDirectory={staging}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0 or not any(staging.glob("kafka_2.13-*.jar")):
            output = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
            raise StackError(f"Maven could not resolve Apache Kafka {version}:\n{output}")
        (staging / _READY_MARKER).write_text(version)
        if lib.exists():  # a concurrent resolver won the race; theirs is as good as ours
            return lib
        staging.rename(lib)
    return lib


_SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id={node_id}
{quorum}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={data}
auto.create.topics.enable=false
num.partitions=1
num.recovery.threads.per.data.dir=1
offsets.topic.replication.factor={internal_rf}
offsets.topic.num.partitions=1
transaction.state.log.replication.factor={internal_rf}
transaction.state.log.min.isr={internal_isr}
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor={internal_rf}
share.coordinator.state.topic.min.isr={internal_isr}
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=2
"""

_JVM_FLAGS = [
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
]


def sasl_plain_properties(users: dict[str, str]) -> str:
    """Broker properties turning the client listener into SASL_PLAINTEXT with PLAIN users
    (tests of the clients' SASL settings; loopback only, so no TLS)."""
    admin_user, admin_password = next(iter(users.items()))
    accounts = " ".join(f'user_{u}="{pw}"' for u, pw in users.items())
    jaas = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{admin_user}" password="{admin_password}" {accounts};'
    )
    return (
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:SASL_PLAINTEXT\n"
        "sasl.enabled.mechanisms=PLAIN\n"
        "sasl.mechanism.inter.broker.protocol=PLAIN\n"
        f"listener.name.plaintext.plain.sasl.jaas.config={jaas}\n"
    )


def new_cluster_id() -> str:
    """A random cluster id as Kafka makes them: URL-safe base64 of a UUID, never starting with
    '-' (the storage tool's argument parser would take such an id for an option, about one
    start in 32)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass
class KafkaBroker:
    """One KRaft node on 127.0.0.1. ``start`` formats a fresh data folder and waits for metadata.

    ``sasl_users`` (name -> password, the first one used by the broker itself and the readiness
    probe) makes the client listener require SASL/PLAIN.

    A member of a :class:`~cryptostream.stack.cluster.KafkaCluster` gets its ``node_id``, the
    static quorum ``voters`` (``1@127.0.0.1:port,...``), the shared ``cluster_id`` and the
    replication of the internal topics; alone it formats a dynamic one-voter quorum.
    """

    workdir: Path
    lib: Path
    heap: str = "512m"
    port: int = 0
    controller_port: int = 0
    process: ManagedProcess | None = None
    sasl_users: dict[str, str] | None = None
    node_id: int = 1
    voters: str = ""
    cluster_id: str = ""
    internal_rf: int = 1
    internal_isr: int = 1
    extra_properties: str = ""

    def connection(self) -> KafkaConnection:
        """How a client reaches this broker (as its first SASL user, if it requires SASL)."""
        if not self.sasl_users:
            return KafkaConnection(self.bootstrap)
        user, password = next(iter(self.sasl_users.items()))
        return KafkaConnection(
            self.bootstrap,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN",
            sasl_username=user,
            sasl_password=SecretStr(password),
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _java_base(self, java: str, heap: str) -> list[str]:
        log4j = resources.files("cryptostream.stack").joinpath("kafka-log4j2.properties")
        return [
            java,
            f"-Xmx{heap}",
            "-cp",
            f"{self.lib}/*",
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dkafka.logs.dir={self.workdir / 'logs'}",
        ]

    def start(self, timeout: float = 90.0) -> KafkaBroker:
        self.launch(check_java())
        self.wait_ready(timeout)
        return self

    def format_argv(self, java: str) -> list[str]:
        """Write server.properties into a fresh data folder; the storage tool's command line."""
        if self.port and port_in_use(self.port):
            raise StackError(f"Kafka port {self.port} on 127.0.0.1 is already in use.")
        self.port = self.port or free_port()
        self.controller_port = self.controller_port or free_port()
        data = self.workdir / "data"
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        if data.exists():  # the dynamic quorum records the controller port at format time
            shutil.rmtree(data)
        props = self.workdir / "server.properties"
        quorum = (
            f"controller.quorum.voters={self.voters}"
            if self.voters
            else f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}"
        )
        properties = (
            _SERVER_PROPERTIES.format(
                port=self.port,
                cport=self.controller_port,
                data=data,
                node_id=self.node_id,
                quorum=quorum,
                internal_rf=self.internal_rf,
                internal_isr=self.internal_isr,
            )
            + self.extra_properties
        )
        if self.sasl_users:
            properties = properties.replace(
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT\n", ""
            ) + sasl_plain_properties(self.sasl_users)
        props.write_text(properties)
        self.cluster_id = self.cluster_id or new_cluster_id()
        standalone = [] if self.voters else ["--standalone"]
        return [
            *self._java_base(java, "256m"),
            "-XX:TieredStopAtLevel=1",
            STORAGE_TOOL,
            "format",
            *standalone,
            "-t",
            self.cluster_id,
            "-c",
            str(props),
        ]

    def launch(self, java: str, *, formatted: bool = False) -> None:
        """Format (unless ``formatted``: the caller ran :meth:`format_argv`'s command) and
        start the JVM; does not wait for readiness."""
        if not formatted:
            fmt = subprocess.run(
                self.format_argv(java), capture_output=True, text=True, check=False
            )
            if fmt.returncode != 0:
                raise StackError(f"formatting Kafka storage failed:\n{fmt.stdout}{fmt.stderr}")
        self.process = ManagedProcess(
            f"kafka-{self.node_id}" if self.voters else "kafka",
            [
                *self._java_base(java, self.heap),
                f"-Xms{self.heap}",
                *_JVM_FLAGS,
                MAIN_CLASS,
                str(self.workdir / "server.properties"),
            ],
            log_path=self.workdir / "logs" / "stdout.log",
            env={**os.environ, "KAFKA_HEAP_OPTS": ""},
        ).start()

    def wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        self.process.wait_until(
            lambda: port_in_use(self.port) and metadata_ready(self.connection()),
            timeout=timeout,
            what="a served metadata request",
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=20)

    def restart(self, timeout: float = 90.0) -> None:
        """Stop and start on the same ports and data (reliability tests)."""
        assert self.process is not None
        self.process.stop(timeout=20)
        self.process.start()
        self.process.wait_until(
            lambda: metadata_ready(self.connection()),
            timeout=timeout,
            what="a served metadata request",
        )


def _probe(kafka: KafkaConnection) -> Any:
    from confluent_kafka.admin import AdminClient

    quiet = logging.getLogger("cryptostream.stack.kafka.probe")
    quiet.setLevel(logging.CRITICAL)
    return AdminClient(kafka.librdkafka({"logger": quiet}))


def metadata_ready(kafka: KafkaConnection, timeout: float = 3.0) -> bool:
    return bool(_probe(kafka).list_topics(timeout=timeout).brokers)


def broker_ids(kafka: KafkaConnection, timeout: float = 3.0) -> set[int]:
    """The ids of the brokers that ``kafka``'s metadata lists (registered and unfenced)."""
    return set(_probe(kafka).list_topics(timeout=timeout).brokers)
