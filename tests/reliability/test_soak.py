"""Soak: the whole pipeline at a steady rate for a while (``nox -s soak -- --minutes 30``).

Samples every process's RSS, the consumer lag and the query API's answers over time; at the end
the checker's verdict (as in the fault scenarios) and a memory verdict per process (least-squares
slope after a warm-up). Writes ``reports/soak/soak.json`` and ``soak.md``.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest

from cryptostream.stack.local import LocalStack
from cryptostream.stack.pipeline import Pipeline, wait_for
from cryptostream_lab.reliability.memory import MemoryVerdict, memory_verdict
from cryptostream_lab.reliability.recovery import total_lag
from tests.conftest import Env
from tests.reliability.harness import FaultRun, Profile, settle_and_finish

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.soak]

SYMBOLS = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT", "ADAUSDT", "TRXUSDT"]
MINUTES = float(os.environ.get("SOAK_MINUTES", "30"))
RATE = float(os.environ.get("SOAK_RATE", "500"))
REPORT_DIR = Path(os.environ.get("SOAK_REPORT_DIR", "reports/soak"))
# Not judged (shown, with the reason): the simulator keeps every order for the checker's truth;
# the broker's JVM touches its heap up to -Xmx before G1 reuses it.
GROWS_BY_DESIGN = {
    "simulator": "keeps every trade for the checker",
    "kafka": "JVM heap fills up to -Xmx",
}


class QueryLoad:
    """A light, steady read load on the query API (so its memory is exercised too)."""

    def __init__(self, base_url: str, per_second: float = 20) -> None:
        self.base_url = base_url
        self.interval = 1 / per_second
        self.ok = 0
        self.errors: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=5) as client:
            i = 0
            while not self._stop.wait(self.interval):
                symbol = SYMBOLS[i % len(SYMBOLS)]
                i += 1
                path = f"/price/{symbol}" if i % 3 else f"/candles/{symbol}?limit=60"
                try:
                    status = client.get(path).status_code
                except httpx.HTTPError:
                    status = 0
                if status == 200:
                    self.ok += 1
                else:
                    self.errors[status] = self.errors.get(status, 0) + 1

    def start(self) -> QueryLoad:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _log_levels(folder: Path) -> dict[str, dict[str, int]]:
    """WARNING/ERROR line counts per service log (ECS JSON lines)."""
    out: dict[str, dict[str, int]] = {}
    for log in sorted(folder.glob("*.log")):
        counts: dict[str, int] = {}
        for line in log.read_bytes().splitlines():
            try:
                level = str(orjson.loads(line).get("log.level", "")).upper()
            except (orjson.JSONDecodeError, AttributeError):
                continue
            if level in ("WARNING", "ERROR", "CRITICAL"):
                counts[level] = counts.get(level, 0) + 1
        out[log.stem] = counts
    return out


def _markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# Soak report",
        "",
        f"{doc['minutes']} min at {doc['rate']} trades/s; checker: {doc['checker']['verdict']}; "
        f"memory: {'GROWING: ' + ', '.join(doc['growing']) if doc['growing'] else 'flat'}.",
        "",
        "| process | RSS start (MB) | end | peak | slope (MB/h, after warm-up) | growing |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for m in doc["memory"]:
        flag = "yes" if m["growing"] else "no"
        reason = next((r for p, r in GROWS_BY_DESIGN.items() if m["process"].startswith(p)), "")
        if reason:
            flag += f" (not judged: {reason})"
        lines.append(
            f"| {m['process']} | {m['start_mb']} | {m['end_mb']} | {m['peak_mb']} | "
            f"{m['slope_mb_per_hour']} | {flag} |"
        )
    lag = doc["lag"]
    lines += [
        "",
        f"Consumer lag (records): max {lag['max']}, mean {lag['mean']:.1f}, final {lag['final']}.",
        f"Query API: {doc['query']['ok']} good answers, errors {doc['query']['errors'] or 'none'}.",
        f"Warnings/errors in the logs: {doc['log_levels']}.",
        f"Checker: {doc['checker']['records_checked']} records, {doc['checker']['lost']} lost, "
        f"{doc['checker']['duplicated']} duplicated, {doc['checker']['wrong']} wrong entries.",
    ]
    return "\n".join(lines) + "\n"


def test_soak(isolated: Env, stack: LocalStack) -> None:
    seconds = MINUTES * 60
    profile = Profile("soak", faults=0, rate=RATE, spacing=(0, 0))
    pipeline = Pipeline(
        isolated.workdir,
        isolated.settings.kafka_bootstrap,
        isolated.settings.redis_url,
        SYMBOLS,
        extra_env=isolated.env,
    )
    run = FaultRun(f"soak-{MINUTES:g}min", profile, pipeline, isolated.settings)
    query_load: QueryLoad | None = None
    samples: dict[str, list[tuple[float, int]]] = {}
    lag: list[int] = []
    try:
        sim = pipeline.start_simulator(
            [
                "--symbols",
                ",".join(SYMBOLS),
                "--rate",
                str(RATE),
                "--seed",
                "31",
                "--max-trades",
                str(int(RATE * seconds)),
                "--history",
                "10000000",
                "--wait-for-subscribers",
                "1",
            ]
        )
        for _ in range(2):
            pipeline.start_processor()
        query = pipeline.start_query()
        pipeline.start_ingest(sim.ws_url)

        def every_price() -> bool:
            run.assert_others_alive()
            return len(run.probe.latest_ids(SYMBOLS)) == len(SYMBOLS)

        wait_for(every_price, 60, "a price for every symbol")
        query_load = QueryLoad(query.base_url).start()
        watched = {p.name: psutil.Process(p.pid) for p in pipeline.group.processes if p.pid}
        if isinstance(stack, LocalStack) and stack.kafka and stack.redis:
            for server in (stack.kafka, stack.redis):
                if server.process is not None and server.process.pid:
                    watched[server.process.name] = psutil.Process(server.process.pid)
        interval = max(2.0, seconds / 120)
        started = time.monotonic()
        while not sim.stats()["done"]:
            run.assert_others_alive()
            now = time.monotonic() - started
            for name, proc in watched.items():
                with contextlib.suppress(psutil.Error):
                    samples.setdefault(name, []).append((now, proc.memory_info().rss))
            ends = run.probe.ends()
            lag.append(total_lag(run.probe.applied(), ends))
            time.sleep(interval)  # the sampling period
        query_load.stop()
        result = settle_and_finish(run, sim, isolated.settings)
    finally:
        if query_load is not None:
            query_load.stop()
        pipeline.stop()
    verdicts: list[MemoryVerdict] = [memory_verdict(n, s) for n, s in sorted(samples.items())]
    growing = [
        v.process
        for v in verdicts
        if v.growing and not v.process.startswith(tuple(GROWS_BY_DESIGN))
    ]
    doc: dict[str, Any] = {
        "minutes": MINUTES,
        "rate": RATE,
        "memory": [vars(v) for v in verdicts],
        "growing": growing,
        "samples": {n: [(round(t, 1), rss) for t, rss in s] for n, s in samples.items()},
        "lag": {
            "max": max(lag, default=0),
            "mean": sum(lag) / max(1, len(lag)),
            "final": lag[-1] if lag else 0,
            "series": lag,
        },
        "query": {
            "ok": query_load.ok if query_load else 0,
            "errors": query_load.errors if query_load else {},
        },
        "log_levels": _log_levels(isolated.workdir / "logs"),
        "checker": {**result.as_json(), "verdict": "OK" if result.ok else "FAILED"},
    }
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / "soak.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    (REPORT_DIR / "soak.md").write_text(_markdown(doc))
    print(_markdown(doc))
    assert result.ok, result.verdict()
    assert not growing, f"memory grows: {[v for v in verdicts if v.process in growing]}"
    assert not doc["query"]["errors"], doc["query"]
