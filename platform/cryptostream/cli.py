"""``csp``: one entry point, one subcommand per process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from cryptostream.config import Settings

app = typer.Typer(
    help="Crypto Streaming Platform: Binance -> Kafka -> Redis -> HTTP, and its harness.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stack_app = typer.Typer(help="The local embedded stack (real Kafka + Redis child processes).")
topics_app = typer.Typer(help="Kafka topics, created explicitly (auto-creation is off).")
app.add_typer(stack_app, name="stack")
app.add_typer(topics_app, name="topics")


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


@stack_app.command("up")
def stack_up(
    kafka_port: Annotated[int, typer.Option(help="Kafka port (0 = a free one)")] = 0,
    redis_port: Annotated[int, typer.Option(help="Redis port (0 = a free one)")] = 0,
    create_topics: Annotated[bool, typer.Option(help="Create the topics after start")] = True,
) -> None:
    """Run Kafka and Redis until Ctrl-C; other commands find them through the stack file."""
    from cryptostream.stack.local import LocalStack
    from cryptostream.stack.stackfile import remove_stack_file, write_stack_file
    from cryptostream.stack.supervisor import StackError, sigterm_as_keyboard_interrupt
    from cryptostream.topics import TopicError, required_topics
    from cryptostream.topics import create_topics as make_topics

    settings = Settings()
    workdir = settings.run_dir / time.strftime("stack-%Y%m%d-%H%M%S")
    stack = LocalStack(settings, workdir, kafka_port=kafka_port, redis_port=redis_port)
    with sigterm_as_keyboard_interrupt():
        try:
            t0 = time.monotonic()
            stack.start()
            if create_topics:
                for line in make_topics(stack.kafka_bootstrap, required_topics(settings)):
                    typer.echo(f"topic {line}")
            write_stack_file(
                settings.stack_file,
                kafka_bootstrap=stack.kafka_bootstrap,
                redis_url=stack.redis_url,
            )
            typer.echo(
                f"stack up in {time.monotonic() - t0:.1f}s: Kafka {stack.kafka_bootstrap}, "
                f"Redis {stack.redis_url} (data and logs in {workdir}); Ctrl-C to stop"
            )
            while True:
                for server in (stack.kafka, stack.redis):
                    if server and server.process and not server.process.alive():
                        raise StackError(
                            f"{server.process.name} exited unexpectedly; last lines of its log:\n"
                            f"{server.process.log_tail()}"
                        )
                time.sleep(1)
        except KeyboardInterrupt:
            typer.echo("stopping the stack")
        except (StackError, TopicError) as exc:
            raise _fail(str(exc)) from None
        finally:
            remove_stack_file(settings.stack_file)
            stack.stop()


@stack_app.command("fetch")
def stack_fetch() -> None:
    """Resolve the Kafka jars from Maven Central into the cache folder (done once)."""
    from cryptostream.stack.kafka import check_java, resolve_kafka_jars
    from cryptostream.stack.supervisor import StackError

    settings = Settings()
    try:
        check_java()
        t0 = time.monotonic()
        lib = resolve_kafka_jars(settings.cache_dir, settings.kafka_version)
    except StackError as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        f"Apache Kafka {settings.kafka_version} jars in {lib} ({time.monotonic() - t0:.1f}s)"
    )


@topics_app.command("create")
def topics_create() -> None:
    """Create raw.trades (CSP_PARTITIONS partitions) and the DLQ topic; safe to run twice."""
    from cryptostream.kafka_clients import security_config
    from cryptostream.topics import TopicError, create_topics, required_topics

    settings = Settings()
    try:
        specs = required_topics(settings)
        config = security_config(settings)
        for line in create_topics(settings.kafka_bootstrap, specs, client_config=config):
            typer.echo(line)
    except TopicError as exc:
        raise _fail(str(exc)) from None


@app.command(
    "simulator",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def simulator(ctx: typer.Context) -> None:
    """The Binance-compatible market simulator (`csp simulator --help` for its options)."""
    from marketsim.cli import main as simulator_main

    raise typer.Exit(simulator_main(list(ctx.args)))


@app.command()
def ingest() -> None:
    """Binance WebSocket trades -> Kafka raw.trades."""
    from cryptostream.ingest.service import main as ingest_main

    raise typer.Exit(ingest_main(Settings()))


@app.command()
def processor() -> None:
    """Consumer group member: raw.trades -> Redis views, exactly once."""
    from cryptostream.processor.service import main as processor_main

    raise typer.Exit(processor_main(Settings()))


@app.command()
def rebuild(
    yes: Annotated[bool, typer.Option("--yes", help="Confirm deleting the current views")] = False,
) -> None:
    """Delete the Redis views and rebuild them by replaying raw.trades from its start."""
    from cryptostream.processor.service import rebuild as run_rebuild
    from cryptostream.topics import TopicError

    if not yes:
        raise _fail("rebuild deletes every view in Redis first; run again with --yes")
    try:
        records = run_rebuild(Settings())
    except TopicError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"rebuilt the views from {records} records")


@app.command()
def query(
    workers: Annotated[int, typer.Option(help="Worker processes")] = 1,
) -> None:
    """The HTTP query API over Redis."""
    from cryptostream.query.server import main as query_main

    raise typer.Exit(query_main(Settings(), workers=workers))


@app.command()
def demo(
    duration: Annotated[float, typer.Option(help="Seconds to run (0 = until Ctrl-C)")] = 0,
    processors: Annotated[int, typer.Option(help="Processor instances")] = 2,
    rate: Annotated[float, typer.Option(help="Synthetic trades per second")] = 50.0,
    live: Annotated[bool, typer.Option(help="Ingest from live Binance, not the simulator")] = False,
) -> None:
    """The whole pipeline on the local stack, printing live prices."""
    from cryptostream.demo import run_demo

    raise typer.Exit(
        run_demo(Settings(), duration=duration, processors=processors, rate=rate, live=live)
    )


def _shipped_experiments() -> str:
    """The experiments shipped in the package, for ``csp experiment --help``."""
    from cryptostream.harness.model import shipped_experiments

    try:
        return "; ".join(f"{name}: {text}" for name, text in shipped_experiments().items())
    except (OSError, ValueError) as exc:  # a broken install must not break the whole CLI
        return f"(cannot list them: {exc})"


@app.command()
def experiment(
    name: Annotated[
        str, typer.Argument(help=f"A shipped experiment or a TOML file. {_shipped_experiments()}")
    ],
    out: Annotated[
        Path | None, typer.Option(help="Report folder (default reports/<date>-<name>)")
    ] = None,
    file: Annotated[Path | None, typer.Option(help="Replay file (replay experiments)")] = None,
    repetitions: Annotated[int | None, typer.Option(help="Override the file's repetitions")] = None,
    seed: Annotated[int | None, typer.Option(help="Override the workload's seed")] = None,
    kafka_bootstrap: Annotated[
        str | None, typer.Option(help="External Kafka (with --redis-url)")
    ] = None,
    redis_url: Annotated[str | None, typer.Option(help="External Redis; its DB is flushed")] = None,
    progress: Annotated[bool, typer.Option(help="Show the progress bar")] = True,
    report: Annotated[bool, typer.Option(help="Write plots and report.md/html afterwards")] = True,
) -> None:
    """Run an experiment on the local stack; write reports/<date>-<name>/results.json + report."""
    from cryptostream.harness.cgroups import BudgetError
    from cryptostream.harness.model import load_experiment
    from cryptostream.harness.report import write_report
    from cryptostream.harness.runner import RunOptions, run_experiment

    try:
        model, text = load_experiment(name)
    except (FileNotFoundError, ValueError) as exc:
        raise _fail(str(exc)) from None
    updates: dict[str, object] = {}
    if repetitions is not None:
        updates["repetitions"] = repetitions
    if seed is not None:
        updates["workload"] = model.workload.model_copy(update={"seed": seed})
    model = model.model_copy(update=updates)
    if file is not None and not file.exists():
        raise _fail(f"replay file {file} does not exist")
    options = RunOptions(model, text, kafka_bootstrap=kafka_bootstrap, redis_url=redis_url,
                         replay_file=file, progress=progress, out_dir=out)  # fmt: skip
    try:
        folder = run_experiment(options)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except BudgetError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"results: {folder / 'results.json'}")
    if report:
        for line in write_report(folder):
            typer.echo(line)


@app.command("report")
def report_cmd(
    folders: Annotated[
        list[Path], typer.Argument(help="A report folder holding results.json (--compare: A B)")
    ],
    compare: Annotated[
        bool, typer.Option("--compare", help="Set two runs A B side by side (B/compare-A.md)")
    ] = False,
) -> None:
    """(Re)generate the plots, report.md and report.html of an experiment from results.json."""
    from cryptostream.harness.report import write_comparison, write_report

    for folder in folders:
        if not (folder / "results.json").exists():
            raise _fail(f"{folder / 'results.json'} does not exist")
    if compare:
        if len(folders) != 2:
            raise _fail("--compare takes two report folders: A B")
        try:
            typer.echo(write_comparison(folders[0], folders[1]))
        except ValueError as exc:
            raise _fail(str(exc)) from None
        return
    for folder in folders:
        for line in write_report(folder):
            typer.echo(line)


def main() -> None:
    app(prog_name="csp")


if __name__ == "__main__":
    main()
