"""A replicated Apache Kafka cluster on 127.0.0.1: N combined KRaft nodes (broker+controller).

Each node is a :class:`~cryptostream.stack.kafka.KafkaBroker` with its own ports, data folder
and small heap; all share one cluster id and a static quorum of every node (so any majority
elects a controller, and killing the active one makes the others elect a new one). The internal
topics (consumer offsets, transactions) are replicated 3 times with ``min.insync.replicas=2``
(fewer on a smaller cluster), as on a real cluster.

Start waits until every node is up *and* every node's metadata lists all N brokers; on failure
(a node exits, or the deadline passes) every JVM is stopped and the error carries each node's
log tail. The introspection helpers (leaders, ISR, the active controller) serve the reliability
scenarios.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from cryptostream.kafka_connection import KafkaConnection
from cryptostream.stack.kafka import KafkaBroker, broker_ids, check_java, new_cluster_id
from cryptostream.stack.supervisor import StackError, free_port, tail

# Faster failure detection than Kafka's defaults (9 s session, 30 s replica lag), so that a dead
# broker is fenced and dropped from the ISR within seconds; a real cluster keeps the defaults.
CLUSTER_PROPERTIES = """\
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1000
replica.lag.time.max.ms=10000
unclean.leader.election.enable=false
"""


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@dataclass(frozen=True)
class PartitionState:
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


@dataclass
class KafkaCluster:
    workdir: Path
    lib: Path
    size: int = 3
    heap: str = "384m"
    first_port: int = 0  # node 1's client port (0 = a free one)
    nodes: list[KafkaBroker] = field(default_factory=list)
    cluster_id: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return ",".join(node.bootstrap for node in self.nodes)

    @property
    def replication(self) -> tuple[int, int]:
        """(replication factor, min.insync.replicas) this cluster supports for topics."""
        rf = min(3, self.size)
        return rf, max(1, min(2, rf - 1))

    def node(self, node_id: int) -> KafkaBroker:
        return self.nodes[node_id - 1]

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self, timeout: float = 90.0) -> KafkaCluster:
        java = check_java()
        self.workdir = self.workdir.resolve()
        ports = _free_ports(2 * self.size)
        if self.first_port:
            ports[0] = self.first_port
        client_ports, controller_ports = ports[: self.size], ports[self.size :]
        voters = ",".join(f"{i + 1}@127.0.0.1:{p}" for i, p in enumerate(controller_ports))
        self.cluster_id = new_cluster_id()
        rf, isr = self.replication
        self.nodes = [
            KafkaBroker(
                self.workdir / f"node-{i + 1}",
                self.lib,
                heap=self.heap,
                port=client_ports[i],
                controller_port=controller_ports[i],
                node_id=i + 1,
                voters=voters,
                cluster_id=self.cluster_id,
                internal_rf=rf,
                internal_isr=isr,
                extra_properties=CLUSTER_PROPERTIES,
            )
            for i in range(self.size)
        ]
        try:
            t0 = time.monotonic()
            self._format_all(java)
            self.timings["format_s"] = time.monotonic() - t0
            for node in self.nodes:
                node.launch(java, formatted=True)
            self.wait_ready(timeout)
            self.timings["ready_s"] = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise
        return self

    def _format_all(self, java: str) -> None:
        """The storage tool for every node at once (a JVM start each; in parallel on 2 cores)."""
        running = []
        try:
            for node in self.nodes:
                argv = node.format_argv(java)
                running.append(
                    subprocess.Popen(
                        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
                    )
                )
            for node, proc in zip(self.nodes, running, strict=True):
                out, _ = proc.communicate(timeout=120)
                if proc.returncode != 0:
                    raise StackError(f"formatting Kafka node {node.node_id} failed:\n{out}")
        finally:
            for proc in running:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def wait_ready(self, timeout: float) -> None:
        """Until every node runs and each one's metadata lists all ``size`` brokers."""
        wanted = set(range(1, self.size + 1))
        deadline = time.monotonic() + timeout
        last: dict[int, set[int]] = {}
        while True:
            for node in self.nodes:
                if node.process is None or not node.process.alive():
                    code = node.process.returncode() if node.process else None
                    raise StackError(
                        f"Kafka node {node.node_id} exited with code {code} before the cluster "
                        f"was ready; {self.log_tails()}"
                    )
            for node in self.nodes:
                with contextlib.suppress(Exception):
                    last[node.node_id] = broker_ids(node.connection(), timeout=2)
            if all(last.get(n.node_id) == wanted for n in self.nodes):
                return
            if time.monotonic() > deadline:
                seen = {n: sorted(ids) for n, ids in last.items()}
                raise StackError(
                    f"the {self.size}-node Kafka cluster was not ready within {timeout:.0f}s "
                    f"(brokers each node's metadata lists: {seen}); {self.log_tails()}"
                )
            time.sleep(0.2)

    def log_tails(self, lines: int = 15) -> str:
        parts = []
        for node in self.nodes:
            for name in ("server.log", "stdout.log"):
                path = node.workdir / "logs" / name
                parts.append(f"last lines of {path}:\n{tail(path, lines)}")
        return "\n".join(parts)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every node at once (controlled shutdowns overlap), SIGKILL what is left."""
        live = [n.process for n in self.nodes if n.process is not None]
        for process in live:
            process.signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in live:
            process.wait(max(0.1, deadline - time.monotonic()))
        for process in live:
            process.stop(timeout=0.1)  # SIGKILLs survivors; reaps; closes the log

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- faults ---------------------------------------------------------------------------------

    def kill(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would."""
        process = self.node(node_id).process
        assert process is not None
        process.kill()
        process.stop()  # reaped already; this closes its log handle

    def stop_node(self, node_id: int, timeout: float = 20.0) -> None:
        """A controlled shutdown (SIGTERM) of one node."""
        process = self.node(node_id).process
        assert process is not None
        process.stop(timeout)

    def start_node(self, node_id: int, timeout: float = 90.0) -> None:
        """Start a stopped or killed node again on its ports and data; wait until every node
        lists all brokers again."""
        process = self.node(node_id).process
        assert process is not None and not process.alive()
        process.start()
        self.wait_ready(timeout)

    # --- introspection --------------------------------------------------------------------------

    def _admin_metadata(self, timeout: float = 5.0) -> Any:
        from confluent_kafka.admin import AdminClient

        quiet = logging.getLogger("cryptostream.stack.cluster.admin")
        quiet.setLevel(logging.CRITICAL)
        live = ",".join(n.bootstrap for n in self.nodes if n.process and n.process.alive())
        admin = AdminClient(KafkaConnection(live or self.bootstrap).librdkafka({"logger": quiet}))
        return admin.list_topics(timeout=timeout)

    def partitions(self, topic: str) -> dict[int, PartitionState]:
        meta = self._admin_metadata().topics[topic]
        if meta.error is not None:
            raise StackError(f"no metadata for topic {topic!r}: {meta.error}")
        return {
            p: PartitionState(part.leader, tuple(part.replicas), tuple(sorted(part.isrs)))
            for p, part in meta.partitions.items()
        }

    def leaders(self, topic: str) -> dict[int, int]:
        return {p: state.leader for p, state in self.partitions(topic).items()}

    def live_brokers(self) -> set[int]:
        return set(self._admin_metadata().brokers)

    def active_controller(self) -> int:
        """The quorum leader: the newest election recorded in a live node's ``quorum-state``
        file (KRaft persists each node's view of the leader and epoch there; the Admin API's
        DescribeMetadataQuorum is not in the Python client)."""
        best: tuple[int, int] = (-1, -1)
        for node in self.nodes:
            if node.process is None or not node.process.alive():
                continue
            path = node.workdir / "data" / "__cluster_metadata-0" / "quorum-state"
            try:
                state = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                continue
            leader, epoch = int(state.get("leaderId", -1)), int(state.get("leaderEpoch", -1))
            if leader >= 0 and epoch > best[0]:
                best = (epoch, leader)
        if best[1] < 0:
            raise StackError(f"no live node knows a quorum leader; {self.log_tails(5)}")
        return best[1]
