"""The order-book Locust users (loadtests/locustfile.py) run against a real service: requests
are sent, the contract's answers (200, 404, the resync 503) pass and nothing fails."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import redis

from tests.query.conftest import RunningService
from tests.query.test_books import put_book

LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtests" / "locustfile.py"


def test_book_readers_load_the_book_routes(
    service: RunningService, r: redis.Redis, tmp_path: Path
) -> None:
    put_book(r, "SYM0000USDT", [("10.5", "1")], [("10.6", "2")])
    put_book(r, "SYM0001USDT", [("1", "1")], [("2", "1")], status="unsynced", reason="gap")
    # SYM0002USDT has no book: 404
    env = {**os.environ, "LOCUST_SYMBOLS": "3", "LOCUST_BOOK_USERS": "2"}
    prefix = tmp_path / "books"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(LOCUSTFILE),
            "--host",
            service.url,
            "--headless",
            "-u",
            "2",
            "-r",
            "2",
            "-t",
            "3s",
            "--only-summary",
            "--csv",
            str(prefix),
            "--exit-code-on-error",
            "1",
            "BookReader",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(f"{prefix}_stats.csv", newline="") as f:
        rows = {row["Name"]: row for row in csv.DictReader(f)}
    for name in ["/book/{symbol}", "/books/top"]:
        assert int(rows[name]["Request Count"]) > 0, name
        assert int(rows[name]["Failure Count"]) == 0, name
