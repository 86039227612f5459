"""The query API's Locust file ships in the package (``cryptostream_lab/harness/locustfile.py``), so
the harness finds it from any install; this name keeps the documented command working:

    locust -f loadtests/locustfile.py --host http://127.0.0.1:3000 --headless -u 64 -r 16 -t 60s

On top of the packaged users, ``LOCUST_BOOK_USERS`` (default 2; 0 = none) order-book readers
load ``GET /book/{symbol}?depth=20`` and ``GET /books/top`` with the same Zipf symbol mix. A
symbol without a book answers 404 and a book being resynced 503 ``{"error": "book resyncing"}``:
both are the contract, anything else (Redis unavailable included) fails the request.
"""

from __future__ import annotations

import os
import random

from locust import FastHttpUser, constant, task

from cryptostream_lab.harness.locustfile import *  # noqa: F403  (Locust collects the User classes)
from cryptostream_lab.harness.locustfile import zipf_symbol

BOOK_USERS = int(os.environ.get("LOCUST_BOOK_USERS", "2"))
BOOK_DEPTH = int(os.environ.get("LOCUST_BOOK_DEPTH", "20"))


def book_answer_ok(status: int, body: bytes) -> bool:
    """200, 404 (no book yet) or the resync 503; a 503 for any other reason is a failure."""
    return status in (200, 404) or (status == 503 and b'"book resyncing"' in body)


if BOOK_USERS > 0:  # Locust treats fixed_count = 0 as "weighted", so no class at all then

    class BookReader(FastHttpUser):
        fixed_count = BOOK_USERS
        wait_time = constant(0)

        def on_start(self) -> None:
            self.rng = random.Random()

        @task(4)
        def book(self) -> None:
            path = f"/book/{zipf_symbol(self.rng)}?depth={BOOK_DEPTH}"
            with self.client.get(path, name="/book/{symbol}", catch_response=True) as resp:
                if book_answer_ok(resp.status_code, resp.content or b""):
                    resp.success()
                else:
                    resp.failure(f"got {resp.status_code}")

        @task(1)
        def tops(self) -> None:
            symbols = ",".join({zipf_symbol(self.rng) for _ in range(5)})
            with self.client.get(
                f"/books/top?symbols={symbols}", name="/books/top", catch_response=True
            ) as resp:
                if resp.status_code == 200:
                    resp.success()
                else:
                    resp.failure(f"got {resp.status_code}")
