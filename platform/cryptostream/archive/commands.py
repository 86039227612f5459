"""``csp archive ...`` and ``csp history ...`` (registered by cryptostream/cli.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from cryptostream.config import Settings

archive_app = typer.Typer(
    help="The Parquet trade archive: `csp archive` runs a sink (a consumer-group member).",
    invoke_without_command=True,
)
history_app = typer.Typer(help="Questions to the Parquet archive (embedded DuckDB).")


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


@archive_app.callback()
def archive(ctx: typer.Context) -> None:
    """raw.trades -> Parquet files under CSP_ARCHIVE_DIR, each record exactly once."""
    if ctx.invoked_subcommand is None:
        from cryptostream.archive.service import main as archive_main

        raise typer.Exit(archive_main(Settings()))


@archive_app.command("check")
def archive_check() -> None:
    """Per symbol, the archive's counts, volume sums and last trade against the topic's."""
    from cryptostream.archive.check import check

    report = check(Settings())
    typer.echo(report.summary())
    raise typer.Exit(0 if report.ok else 1)


@history_app.command("sql")
def history_sql(
    statement: Annotated[str, typer.Argument(help="SQL over the view `trades`")],
    csv: Annotated[bool, typer.Option("--csv", help="CSV instead of a table")] = False,
) -> None:
    """An ad-hoc DuckDB query; the view `trades` has every archived trade (+ date, symbol)."""
    import duckdb

    from cryptostream.history.queries import History

    try:
        result = History(Settings().archive_dir).sql(statement)
    except duckdb.Error as exc:
        raise _fail(str(exc)) from None
    for path, reason in result.skipped:
        typer.secho(f"skipped {path}: {reason}", err=True, fg=typer.colors.YELLOW)
    sep = "," if csv else "\t"
    typer.echo(sep.join(result.columns))
    for row in result.rows:
        typer.echo(sep.join("" if v is None else str(v) for v in row))
