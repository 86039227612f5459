"""``csp demo``: the whole pipeline on the local embedded stack, with live prices printed."""

from __future__ import annotations

import time

import httpx
from rich.console import Console

from cryptostream.config import Settings
from cryptostream.stack.local import LocalStack
from cryptostream.stack.pipeline import Pipeline, wait_for
from cryptostream.stack.supervisor import StackError, port_in_use, sigterm_as_keyboard_interrupt
from cryptostream.topics import TopicError, create_topics, required_topics


def run_demo(
    settings: Settings, *, duration: float, processors: int, rate: float, live: bool
) -> int:
    console = Console()
    workdir = (settings.run_dir / time.strftime("demo-%Y%m%d-%H%M%S")).resolve()
    stack = LocalStack(settings, workdir)
    pipeline: Pipeline | None = None
    if settings.query_port and port_in_use(settings.query_port):
        console.print(
            f"[red]error:[/] port {settings.query_port} is in use; choose another with "
            "CSP_QUERY_PORT=<port> (0 = any free port)"
        )
        return 2
    with sigterm_as_keyboard_interrupt():
        try:
            t0 = time.monotonic()
            with console.status("starting Kafka and Redis (the first run fetches Kafka's jars)"):
                stack.start()
                create_topics(stack.kafka_connection, required_topics(settings))
            console.print(
                f"stack up in {time.monotonic() - t0:.1f}s: Kafka {stack.kafka_bootstrap}, "
                f"Redis {stack.redis_url}; logs in {workdir}"
            )
            pipeline = Pipeline(workdir, stack.kafka_bootstrap, stack.redis_url, settings.symbols)
            if live:
                ws_url = settings.binance_ws_url  # the real Binance endpoint by default
            else:
                sim = pipeline.start_simulator(
                    ["--symbols", ",".join(settings.symbols), "--rate", str(rate)]
                )
                ws_url = sim.ws_url
            pipeline.start_ingest(ws_url)
            for _ in range(processors):
                pipeline.start_processor()
            query = pipeline.start_query(port=settings.query_port)
            console.print(
                f"simulator -> ingest -> Kafka -> {processors} processors -> Redis -> "
                f"query API on {query.base_url}  (source: {ws_url})"
            )
            first = settings.symbols[0]
            with console.status("waiting for the first price"):
                wait_for(
                    lambda: httpx.get(f"{query.base_url}/price/{first}").status_code == 200,
                    timeout=90,
                    what=f"a price for {first}",
                )
            console.print(f"prices flowing {time.monotonic() - t0:.1f}s after start; Ctrl-C stops")
            deadline = time.monotonic() + duration if duration > 0 else float("inf")
            with httpx.Client(base_url=query.base_url, timeout=5) as client:
                while time.monotonic() < deadline:
                    pipeline.check_alive()
                    cells = []
                    for symbol in settings.symbols:
                        reply = client.get(f"/price/{symbol}")
                        body = reply.json()
                        cells.append(f"{symbol} {body.get('price', '—')}")
                    console.print(
                        f"[dim]{time.strftime('%H:%M:%S')}[/] GET /price -> " + "  ".join(cells)
                    )
                    time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            return 0
        except KeyboardInterrupt:
            console.print("stopping")
            return 0
        except (StackError, TopicError, TimeoutError) as exc:
            console.print(f"[red]error:[/] {exc}")
            return 1
        finally:
            if pipeline is not None:
                pipeline.stop()
            stack.stop()
            console.print("all processes stopped")
