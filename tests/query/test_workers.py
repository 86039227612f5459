"""``csp query --workers 2``: several processes behind one port, one set of metrics."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import httpx

from cryptostream.stack.redis_server import RedisServer
from cryptostream.stack.supervisor import ManagedProcess, free_port


def _price_requests(exposition: str, status: str) -> float:
    pattern = rf'^csp_query_requests_total\{{route="/price/{{symbol}}",status="{status}"\}} (\S+)$'
    match = re.search(pattern, exposition, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_two_workers_report_the_sum_of_their_metrics(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "CSP_REDIS_URL": redis_server.url,
        "CSP_QUERY_PORT": str(port),
        "CSP_RUN_DIR": str(tmp_path),
    }
    query = ManagedProcess(
        "query",
        [sys.executable, "-m", "cryptostream", "query", "--workers", "2"],
        log_path=tmp_path / "query.log",
        env=env,
    ).start()
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return httpx.get(f"{base}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        query.wait_until(ready, timeout=30, what="GET /health")
        for i in range(200):  # a new connection each time: the kernel spreads them
            with httpx.Client(base_url=base, timeout=5) as client:
                assert client.get(f"/price/NOPE{i}").status_code == 404
        for _ in range(20):
            with httpx.Client(base_url=base, timeout=5) as client:
                text = client.get("/metrics").text
                # Every scrape, whichever worker answers, counts all 200 requests.
                assert _price_requests(text, "404") == 200
        assert list(tmp_path.glob("query-metrics-*")), "no shared metrics folder while running"
    finally:
        query.stop()
    assert not list(tmp_path.glob("query-metrics-*")), "shared metrics folder left behind"
