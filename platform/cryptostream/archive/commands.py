"""``csp archive ...`` and ``csp history ...`` (registered by cryptostream/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cryptostream.config import Settings

if TYPE_CHECKING:
    from cryptostream.archive.objects import ObjectRoot

archive_app = typer.Typer(
    help="The Parquet trade archive: `csp archive` runs a sink (a consumer-group member).",
    invoke_without_command=True,
)
history_app = typer.Typer(help="Questions to the Parquet archive (embedded DuckDB).")


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


def _root() -> Path | ObjectRoot:
    from cryptostream.archive.store import archive_root

    return archive_root(Settings())


@archive_app.callback()
def archive(ctx: typer.Context) -> None:
    """raw.trades (+ raw.depth with CSP_ARCHIVE_DEPTH) -> Parquet files, each record once."""
    if ctx.invoked_subcommand is None:
        from cryptostream.archive.service import main as archive_main

        raise typer.Exit(archive_main(Settings()))


@archive_app.command("check")
def archive_check() -> None:
    """Per symbol, the archive's counts, volume sums and last trade against the topic's (and
    depth record counts and last update id, with CSP_ARCHIVE_DEPTH)."""
    from cryptostream.archive.check import check

    report = check(Settings())
    typer.echo(report.summary())
    raise typer.Exit(0 if report.ok else 1)


@archive_app.command("compact")
def archive_compact(
    min_files: Annotated[
        int | None,
        typer.Option(help="Merge a folder's files of one Kafka partition from this many"),
    ] = None,
) -> None:
    """Merge small files (atomically; a crash midway never duplicates a row)."""
    from cryptostream.archive.maintain import compact

    settings = Settings()
    report = compact(
        _root(),
        min_files or settings.archive_compact_min_files,
        settings.archive_row_group_rows,
    )
    typer.echo(
        f"merged {report.merged} files into {report.written}; removed "
        f"{report.removed_covered} covered leftovers"
    )
    for path, reason in report.bad:
        typer.secho(f"not compacted, unreadable: {path}: {reason}", err=True, fg="yellow")
    raise typer.Exit(1 if report.bad else 0)


@archive_app.command("retain")
def archive_retain(
    days: Annotated[
        int | None, typer.Option(help="Keep this many days (default CSP_ARCHIVE_RETENTION_DAYS)")
    ] = None,
) -> None:
    """Delete the date partitions older than the retention (0 days = keep everything)."""
    from cryptostream.archive.maintain import retain

    settings = Settings()
    removed = retain(
        _root(),
        settings.archive_retention_days if days is None else days,
    )
    for folder in removed:
        typer.echo(f"removed {folder}")
    typer.echo(f"{len(removed)} date folders removed")


@history_app.command("sql")
def history_sql(
    statement: Annotated[str, typer.Argument(help="SQL over the views `trades` and `depth`")],
    csv: Annotated[bool, typer.Option("--csv", help="CSV instead of a table")] = False,
) -> None:
    """An ad-hoc DuckDB query; the view `trades` has every archived trade and `depth` every
    archived depth record (both + date, symbol)."""
    import duckdb

    from cryptostream.history.queries import History

    try:
        result = History(_root()).sql(statement)
    except duckdb.Error as exc:
        raise _fail(str(exc)) from None
    for path, reason in result.skipped:
        typer.secho(f"skipped {path}: {reason}", err=True, fg=typer.colors.YELLOW)
    sep = "," if csv else "\t"
    typer.echo(sep.join(result.columns))
    for row in result.rows:
        typer.echo(sep.join("" if v is None else str(v) for v in row))


@history_app.command("export")
def history_export(
    symbol: Annotated[str, typer.Argument(help="Trading pair, e.g. BTCUSDT")],
    day: Annotated[str, typer.Argument(help="UTC day, YYYY-MM-DD")],
    out: Annotated[Path, typer.Option(help="Folder for SYMBOL-trades-YYYY-MM-DD.csv")] = Path("."),
) -> None:
    """One day of a symbol as Binance's archive CSV (replay it: csp simulator --replay FILE)."""
    import datetime as dt

    from cryptostream.core.symbols import InvalidSymbol, normalize_symbol
    from cryptostream.history.queries import History, export_day

    try:
        sym = normalize_symbol(symbol)
        dt.date.fromisoformat(day)
    except (InvalidSymbol, ValueError) as exc:
        raise _fail(str(exc)) from None
    path = out / f"{sym}-trades-{day}.csv"
    rows, skipped = export_day(History(_root()), sym, day, path)
    for bad, reason in skipped:
        typer.secho(f"skipped {bad}: {reason}", err=True, fg=typer.colors.YELLOW)
    typer.echo(f"{rows} trades -> {path}")
