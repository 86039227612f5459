"""A local Redis Cluster: 3 masters with a replica each, from the same ``redis-server`` binary.

Every node is a :class:`~cryptostream.stack.redis_server.RedisServer` child process bound to
127.0.0.1 with ``--cluster-enabled yes``; the cluster is formed over Redis commands (no
``redis-cli``): the masters take equal slot ranges (``CLUSTER ADDSLOTSRANGE``), every node
meets the first (``CLUSTER MEET``), each replica follows its master (``CLUSTER REPLICATE``),
and the start returns once every node reports ``cluster_state:ok`` with the same slot map and
every replica's link is up. Stopped by PID, like every child of the stack.

With a short ``cluster-node-timeout`` (the tests use 1 s), a master that dies is replaced by
its replica within a few seconds: ``kill_master`` / ``wait_failover`` drive that.
"""

from __future__ import annotations

import random
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from cryptostream.core.keys import CLUSTER_SLOTS
from cryptostream.stack.redis_server import RedisServer, check_redis_server
from cryptostream.stack.supervisor import StackError

BUS_OFFSET = 10000  # a node's cluster bus listens on its port + 10000


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _command(client: redis.Redis, *args: Any) -> Any:
    """One command on one node (redis-py's execute_command is untyped)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def cluster_ports(count: int, rng: random.Random | None = None) -> list[int]:
    """``count`` ports whose bus ports (+10000) are free too (an ephemeral port + 10000 may
    not exist): picked in 20000-29999, away from the kernel's ephemeral range."""
    rng = rng or random.Random()
    ports: list[int] = []
    for _ in range(2000):
        port = rng.randrange(20000, 30000)
        if port not in ports and _free(port) and _free(port + BUS_OFFSET):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise StackError("no free ports (and cluster bus ports) in 20000-29999 on 127.0.0.1")


@dataclass
class RedisCluster:
    workdir: Path
    masters: int = 3
    replicas: int = 1  # per master
    node_timeout_ms: int = 5000
    password: str | None = None
    ports: list[int] = field(default_factory=list)
    nodes: list[RedisServer] = field(default_factory=list)
    ids: dict[int, str] = field(default_factory=dict)  # port -> node id

    @property
    def url(self) -> str:
        """The seed URL (the first master's): the cluster clients discover the rest."""
        return self.nodes[0].url.rsplit("/", 1)[0]

    def start(self, timeout: float = 30.0) -> RedisCluster:
        check_redis_server()
        if self.masters < 3:
            raise StackError("a Redis Cluster needs at least 3 masters to elect replicas")
        total = self.masters * (1 + self.replicas)
        self.ports = self.ports or cluster_ports(total)
        self.workdir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        try:
            for port in self.ports:
                node = RedisServer(
                    self.workdir / f"node-{port}",
                    port=port,
                    password=self.password,
                    extra_args=[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        f"nodes-{port}.conf",
                        "--cluster-node-timeout",
                        str(self.node_timeout_ms),
                        # a replica's first sync at once (default: wait 5 s for other replicas)
                        "--repl-diskless-sync-delay",
                        "0",
                        *(["--masterauth", self.password] if self.password else []),
                    ],
                )
                self.nodes.append(node.start(timeout=timeout))
            self._form(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def client(self, port: int, **options: Any) -> redis.Redis:
        """A plain client of one node (cluster commands go to that node)."""
        return redis.Redis(
            host="127.0.0.1",
            port=port,
            password=self.password,
            socket_timeout=options.pop("socket_timeout", 2),
            socket_connect_timeout=options.pop("socket_connect_timeout", 2),
            decode_responses=True,
            **options,
        )

    def _form(self, deadline: float) -> None:
        masters = self.ports[: self.masters]
        clients = {port: self.client(port) for port in self.ports}
        try:
            for port, client in clients.items():
                self.ids[port] = str(_command(client, "CLUSTER", "MYID"))
            for i, port in enumerate(masters):
                first = i * CLUSTER_SLOTS // self.masters
                last = (i + 1) * CLUSTER_SLOTS // self.masters - 1
                _command(clients[port], "CLUSTER", "ADDSLOTSRANGE", first, last)
            for port in self.ports[1:]:
                _command(clients[port], "CLUSTER", "MEET", "127.0.0.1", masters[0])
            self._wait(deadline, "every node to know the others", lambda: self._all_known(clients))
            for j, port in enumerate(self.ports[self.masters :]):
                master = masters[j % self.masters]
                self._wait(
                    deadline,
                    f"node {port} to see its master {master}",
                    lambda port=port, master=master: self._replicate(clients[port], master),
                )
            self._wait(deadline, "the cluster to be ok everywhere", lambda: self._ok(clients))
        finally:
            for client in clients.values():
                client.close()

    def _wait(self, deadline: float, what: str, done: Any) -> None:
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if done():
                    return
            except redis.RedisError as exc:
                last = exc
            time.sleep(0.05)
        raise StackError(f"Redis Cluster: timed out waiting for {what} (last error: {last!r})")

    def _all_known(self, clients: dict[int, redis.Redis]) -> bool:
        for client in clients.values():
            lines = str(_command(client, "CLUSTER", "NODES")).strip().splitlines()
            if len(lines) < len(self.ports) or any("handshake" in line for line in lines):
                return False
        return True

    def _replicate(self, client: redis.Redis, master: int) -> bool:
        try:
            _command(client, "CLUSTER", "REPLICATE", self.ids[master])
        except redis.ResponseError as exc:  # "Unknown node": gossip has not reached it yet
            if "Unknown node" in str(exc):
                return False
            raise
        return True

    def _ok(self, clients: dict[int, redis.Redis]) -> bool:
        maps = set()
        for port, client in clients.items():
            info = str(_command(client, "CLUSTER", "INFO"))
            if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
                return False
            maps.add(self._slot_map(client))
            if port in self.ports[self.masters :]:
                replication = client.info("replication")
                if replication.get("master_link_status") != "up":
                    return False
        return len(maps) == 1

    @staticmethod
    def _slot_map(client: redis.Redis) -> tuple[tuple[int, int, int], ...]:
        rows = _command(client, "CLUSTER", "SLOTS")
        return tuple(sorted((int(r[0]), int(r[1]), int(r[2][1])) for r in rows))

    # --- faults and inspection ---------------------------------------------------------------
    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def alive_ports(self) -> list[int]:
        return [n.port for n in self.nodes if n.process is not None and n.process.alive()]

    def master_of(self, slot: int) -> int:
        """The port of the master that serves ``slot``, as a live node sees it."""
        for port in self.alive_ports():
            client = self.client(port)
            try:
                for start, end, master, *_ in _command(client, "CLUSTER", "SLOTS"):
                    if int(start) <= slot <= int(end):
                        return int(master[1])
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise StackError(f"no live node knows the master of slot {slot}")

    def replicas_of(self, master: int) -> list[int]:
        client = self.client(master)
        try:
            lines = str(_command(client, "CLUSTER", "NODES")).splitlines()
        finally:
            client.close()
        master_id = self.ids[master]
        return [
            int(line.split()[1].split("@")[0].rsplit(":", 1)[1])
            for line in lines
            if len(line.split()) > 3 and line.split()[3] == master_id
        ]

    def kill(self, port: int) -> None:
        """SIGKILL one node (by its PID)."""
        process = self.node(port).process
        assert process is not None
        process.kill()

    def wait_failover(self, slot: int, old_master: int, timeout: float = 30.0) -> int:
        """Wait until a live node other than ``old_master`` serves ``slot`` and the cluster is
        ok on every live node; returns the new master's port."""
        deadline = time.monotonic() + timeout
        new: list[int] = []

        def promoted() -> bool:
            port = self.master_of(slot)
            if port == old_master or port not in self.alive_ports():
                return False
            for live in self.alive_ports():
                client = self.client(live)
                try:
                    if "cluster_state:ok" not in str(_command(client, "CLUSTER", "INFO")):
                        return False
                finally:
                    client.close()
            new[:] = [port]
            return True

        self._wait(deadline, f"a replica to take over slot {slot} from {old_master}", promoted)
        return new[0]

    def restart(self, port: int, timeout: float = 20.0) -> None:
        """Start a stopped or killed node again (it rejoins from its nodes.conf; an old master
        comes back as a replica of its successor)."""
        node = self.node(port)
        assert node.process is not None
        if node.process.alive():
            return
        node.process.start()
        node.process.wait_until(node.ping, timeout=timeout, what="a PING reply")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
