"""Security basics on real processes: every server listens on loopback only by default, and
Redis AUTH works end to end (and a wrong or missing password is a clear start-up error)."""

from __future__ import annotations

import ipaddress
import secrets
import sys
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from cryptostream.config import Settings
from cryptostream.stack.local import LocalStack
from cryptostream.stack.pipeline import Pipeline, wait_for
from cryptostream.stack.redis_server import RedisServer
from cryptostream.stack.supervisor import ManagedProcess, free_port
from cryptostream_lab.checker import check
from marketsim.cli import build_parser
from tests.conftest import Env
from tests.kafka_helpers import produce, synthetic_trades

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

SYMBOLS = ["BTCUSDT", "ETHUSDT"]


def _loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, or IPv4-mapped loopback (how the JVM shows 127.0.0.1 binds)."""
    address = ipaddress.ip_address(ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _listening(pid: int) -> set[tuple[str, int]]:
    """Addresses the process (and its children, e.g. uvicorn workers) listens on."""
    root = psutil.Process(pid)
    out = set()
    for proc in [root, *root.children(recursive=True)]:
        for conn in proc.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                out.add((conn.laddr.ip, conn.laddr.port))
    return out


def test_defaults_bind_loopback() -> None:
    settings = Settings()
    assert settings.query_host == settings.metrics_host == "127.0.0.1"
    assert build_parser().parse_args([]).host == "127.0.0.1"


def test_every_server_listens_on_loopback_only(isolated: Env, stack: LocalStack) -> None:
    pipeline = Pipeline(
        isolated.workdir,
        isolated.settings.kafka_bootstrap,
        isolated.settings.redis_url,
        SYMBOLS,
        extra_env=isolated.env,
    )
    try:
        sim = pipeline.start_simulator(["--symbols", ",".join(SYMBOLS), "--rate", "50"])
        ports = {"ingest": free_port(), "processor": free_port()}
        ingest = pipeline.start_ingest(sim.ws_url, CSP_INGEST_METRICS_PORT=str(ports["ingest"]))
        processor = pipeline.start_processor(CSP_PROCESSOR_METRICS_PORT=str(ports["processor"]))
        query = pipeline.start_query()
        for name, process in (("ingest", ingest), ("processor", processor)):
            process.wait_until(
                lambda name=name: httpx.get(f"http://127.0.0.1:{ports[name]}/metrics").is_success,
                timeout=60,
                what="its metrics server",
            )
        servers: dict[str, int] = {
            "simulator": sim.process.pid or 0,
            "ingest": ingest.pid or 0,
            "processor": processor.pid or 0,
            "query": query.process.pid or 0,
        }
        if isinstance(stack, LocalStack):
            assert stack.kafka and stack.kafka.process and stack.redis and stack.redis.process
            servers["kafka"] = stack.kafka.process.pid or 0
            servers["redis"] = stack.redis.process.pid or 0
        for name, pid in servers.items():
            addresses = _listening(pid)
            assert addresses, f"{name} listens nowhere (the check would prove nothing)"
            exposed = {a for a in addresses if not _loopback(a[0])}
            assert not exposed, f"{name} listens beyond loopback: {exposed}"
        pipeline.check_alive()
    finally:
        pipeline.stop()


def _bad_query(pipeline: Pipeline, url: str) -> ManagedProcess:
    env = pipeline.env(CSP_REDIS_URL=url, CSP_QUERY_PORT=str(free_port()))
    argv = [sys.executable, "-m", "cryptostream", "query"]
    log = pipeline.workdir / "logs" / f"query-bad-{secrets.token_hex(3)}.log"
    return pipeline.group.add(ManagedProcess("query-bad-auth", argv, log_path=log, env=env).start())


def test_redis_auth_end_to_end(isolated: Env, tmp_path: Path) -> None:
    password = f"pw-{secrets.token_hex(8)}"
    bad_password = f"wrong-{secrets.token_hex(6)}"
    server = RedisServer(tmp_path / "redis", password=password).start()
    assert server.url == f"redis://:{password}@127.0.0.1:{server.port}/0"
    trades = synthetic_trades(SYMBOLS, 2_000, seed=41)
    produce(isolated.settings, trades)
    pipeline = Pipeline(
        isolated.workdir,
        isolated.settings.kafka_bootstrap,
        server.url,
        SYMBOLS,
        extra_env={**isolated.env, "CSP_REDIS_URL": server.url},
    )
    try:
        pipeline.start_processor()
        query = pipeline.start_query()

        def served() -> bool:
            pipeline.check_alive()
            return all(
                httpx.get(f"{query.base_url}/price/{s}", timeout=5).status_code == 200
                for s in SYMBOLS
            )

        wait_for(served, 60, "prices through the password-protected Redis")
        client = redis.Redis.from_url(server.url)
        wait_for(lambda: check(client, trades).ok, 30, "the views to match the trades")
        client.close()
        assert httpx.get(f"{query.base_url}/ready", timeout=5).status_code == 200

        # A wrong password, and none at all: exit code 2 with a clear message, at once.
        wrong = f"redis://:{bad_password}@127.0.0.1:{server.port}/0"
        missing = f"redis://127.0.0.1:{server.port}/0"
        for url in (wrong, missing):
            for process in (pipeline.start_processor(CSP_REDIS_URL=url), _bad_query(pipeline, url)):
                assert process.wait(60) == 2, process.log_tail()
                text = process.log_path.read_text()
                assert "refused the credentials" in text, text[-2000:]
                assert "CSP_REDIS_URL" in text
    finally:
        pipeline.stop()
        server.stop()
    for log in (isolated.workdir / "logs").glob("*.log"):
        text = log.read_text(errors="replace")
        assert password not in text, f"{log.name} shows the Redis password"
        assert bad_password not in text, f"{log.name} shows the (wrong) Redis password"
