"""The lab's ``csp`` subcommands: ``demo``, ``experiment``, ``report``.

``cryptostream.cli`` loads them through the ``cryptostream.commands`` entry point (pyproject);
this module imports only typer and the standard library at the top, so loading it is cheap and
never fails for a missing extra. A command whose third-party modules (the ``harness`` extra) are
not installed is registered hidden: ``csp --help`` lists only what runs, and calling it says
what to install instead of raising ImportError.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from typing import Annotated

import typer

# The third-party modules (the `harness` extra) each command imports, directly or not.
NEEDS: dict[str, tuple[str, ...]] = {
    "demo": (),
    "experiment": ("matplotlib", "hdrh", "locust"),
    "report": ("matplotlib",),
}


def missing_modules(command: str) -> list[str]:
    """The modules ``command`` needs that are not installed here."""
    return [name for name in NEEDS[command] if find_spec(name) is None]


def register(app: typer.Typer) -> None:
    """The ``cryptostream.commands`` hook: add the lab's commands to ``csp``."""
    app.command("demo", hidden=bool(missing_modules("demo")))(demo)
    app.command(
        "experiment", epilog=_shipped_experiments(), hidden=bool(missing_modules("experiment"))
    )(experiment)
    app.command("report", hidden=bool(missing_modules("report")))(report_cmd)


def _fail(message: str) -> typer.Exit:
    from cryptostream.cli import fail

    return fail(message)


def demo(
    duration: Annotated[float, typer.Option(help="Seconds to run (0 = until Ctrl-C)")] = 0,
    processors: Annotated[int, typer.Option(help="Processor instances")] = 2,
    rate: Annotated[float, typer.Option(help="Synthetic trades per second")] = 50.0,
    live: Annotated[bool, typer.Option(help="Ingest from live Binance, not the simulator")] = False,
) -> None:
    """The whole pipeline on the local stack, printing live prices."""
    from cryptostream.cli import command_settings
    from cryptostream_lab.demo import run_demo

    raise typer.Exit(
        run_demo(command_settings(), duration=duration, processors=processors, rate=rate, live=live)
    )


def _shipped_experiments() -> str:
    """The --help epilog of ``csp experiment``: the experiments shipped in the package (found
    from any directory and any install)."""
    try:
        from cryptostream_lab.harness.model import shipped_experiments

        shipped = shipped_experiments()
    except (ImportError, OSError, ValueError) as exc:  # a broken install must not break the CLI
        return f"(cannot list the experiments: {exc})"
    lines = [f"- `{name}`: {text}" for name, text in shipped.items()]
    return "**Experiments**\n\n" + "\n".join(lines)


def experiment(
    name: Annotated[str, typer.Argument(help="A shipped experiment (listed below) or a TOML file")],
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
    """Run an experiment on the local stack; write `reports/<date>-<name>/results.json` + report."""
    try:
        from cryptostream_lab.harness.cgroups import BudgetError
        from cryptostream_lab.harness.model import load_experiment
        from cryptostream_lab.harness.report import write_report
        from cryptostream_lab.harness.runner import RunOptions, run_experiment
    except ImportError as exc:
        raise _fail(_harness_missing("experiment", exc)) from None

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
    options = RunOptions(
        model,
        text,
        kafka_bootstrap=kafka_bootstrap,
        redis_url=redis_url,
        replay_file=file,
        progress=progress,
        out_dir=out,
    )
    try:
        folder = run_experiment(options)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except BudgetError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"results: {(folder / 'results.json').resolve().as_uri()}")
    if report:
        for line in write_report(folder):
            typer.echo(line)
        typer.echo(f"open: {(folder / 'report.html').resolve().as_uri()}")


def report_cmd(
    folders: Annotated[
        list[Path], typer.Argument(help="A report folder holding results.json (--compare: A B)")
    ],
    compare: Annotated[
        bool, typer.Option("--compare", help="Set two runs A B side by side (B/compare-A.md)")
    ] = False,
) -> None:
    """(Re)generate the plots, report.md and report.html of an experiment from results.json."""
    try:
        from cryptostream_lab.harness.report import write_comparison, write_report
    except ImportError as exc:
        raise _fail(_harness_missing("report", exc)) from None

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
        try:
            lines = write_report(folder)
        except ValueError as exc:  # results.json does not fit harness/results.py
            raise _fail(str(exc)) from None
        for line in lines:
            typer.echo(line)
        typer.echo(
            f"open: {(folder / 'report.html').resolve().as_uri()}"
        )  # clickable in a terminal


def _harness_missing(command: str, exc: ImportError) -> str:
    return (
        f"csp {command} needs the harness extra ({exc.name or exc} is not installed): "
        "pip install 'crypto-streaming-platform[harness]'"
    )
