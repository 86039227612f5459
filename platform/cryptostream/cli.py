"""``csp``: one entry point, one subcommand per process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from cryptostream.archive.commands import archive_app, history_app
from cryptostream.config import (
    SERVICE_FIELDS,
    ConfigError,
    Settings,
    describe_settings,
    effective_settings,
    env_value,
    load_settings,
    unknown_variables,
)

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
stack_app = typer.Typer(help="The local embedded stack (real Kafka + Redis child processes).")
topics_app = typer.Typer(help="Kafka topics, created explicitly (auto-creation is off).")
app.add_typer(stack_app, name="stack")
app.add_typer(topics_app, name="topics")
app.add_typer(archive_app, name="archive")  # issue 21: the Parquet archive
app.add_typer(history_app, name="history")


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


def _settings(service: str | None = None) -> Settings:
    """The settings a command reads: one line per mistake (variable, value, what is expected)
    and exit 2 instead of a traceback; a warning per ``CSP_*`` variable no setting reads."""
    for warning in unknown_variables():
        typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)
    try:
        return load_settings(service)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.secho(f"error: {problem}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2) from None


def _variables(service: str) -> str:
    """The --help epilog: the variables the command reads, with default and meaning."""
    lines = [
        f"- `{name}` = `{default}`: {meaning}" if default else f"- `{name}` (empty): {meaning}"
        for name, default, meaning in describe_settings(service)
    ]
    return "**Environment variables** (default: meaning)\n\n" + "\n".join(lines)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"csp {version('crypto-streaming-platform')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version"),
    ] = False,
) -> None:
    """Crypto Streaming Platform: Binance -> Kafka -> Redis -> HTTP, and its harness."""


@app.command("config")
def config_cmd(
    service: Annotated[
        str | None,
        typer.Option(help="Only what this command reads: " + ", ".join(sorted(SERVICE_FIELDS))),
    ] = None,
) -> None:
    """Print the effective configuration (secrets masked) and where each value comes from."""
    if service is not None and service not in SERVICE_FIELDS:
        raise _fail(f"--service {service!r}: expected one of {', '.join(sorted(SERVICE_FIELDS))}")
    settings = _settings(service)
    defaults = {name: default for name, default, _ in describe_settings()}
    used = SERVICE_FIELDS.get(service or "", None)
    for name, value in effective_settings(settings):
        if used is not None and name.removeprefix("CSP_").lower() not in used:
            continue
        origin = (
            "environment"
            if env_value(name) is not None
            else "default"
            if value == defaults[name]
            else "csp stack up"
        )
        typer.echo(f"{name}={value}  # {origin}")


@stack_app.command("up", epilog=_variables("stack"))
def stack_up(
    kafka_port: Annotated[int, typer.Option(help="Kafka port (0 = a free one)")] = 0,
    redis_port: Annotated[int, typer.Option(help="Redis port (0 = a free one)")] = 0,
    create_topics: Annotated[bool, typer.Option(help="Create the topics after start")] = True,
) -> None:
    """Run Kafka and Redis until Ctrl-C; other commands find them through the stack file."""
    from cryptostream.stack.local import LocalStack, first_exit
    from cryptostream.stack.supervisor import StackError, sigterm_as_keyboard_interrupt
    from cryptostream.stackfile import remove_stack_file, write_stack_file
    from cryptostream.topics import TopicError, required_topics
    from cryptostream.topics import create_topics as make_topics

    settings = _settings("stack")
    workdir = settings.run_dir / time.strftime("stack-%Y%m%d-%H%M%S")
    stack = LocalStack(settings, workdir, kafka_port=kafka_port, redis_port=redis_port)
    with sigterm_as_keyboard_interrupt():
        try:
            t0 = time.monotonic()
            stack.start()
            if create_topics:
                for line in make_topics(stack.kafka_connection, required_topics(settings)):
                    typer.echo(f"topic {line}")
            write_stack_file(
                settings.stack_file,
                kafka_bootstrap=stack.kafka_bootstrap,
                redis_url=stack.redis_url,
                redis_cluster=settings.redis_cluster,
                redis_cluster_nodes=(
                    [f"127.0.0.1:{port}" for port in stack.redis_cluster.ports]
                    if stack.redis_cluster is not None
                    else None
                ),
            )
            redis_what = (
                f"Redis Cluster {', '.join(str(p) for p in stack.redis_cluster.ports)} (seed "
                f"{stack.redis_url})"
                if stack.redis_cluster is not None
                else f"Redis {stack.redis_url}"
            )
            typer.echo(
                f"stack up in {time.monotonic() - t0:.1f}s: Kafka {stack.kafka_bootstrap}, "
                f"{redis_what} (data and logs in {workdir}); Ctrl-C to stop"
            )
            watched = stack.watched()  # every Kafka node and every Redis node
            while (exited := first_exit(watched)) is None:
                time.sleep(1)
            raise StackError(exited)
        except KeyboardInterrupt:
            typer.echo("stopping the stack")
        except (StackError, TopicError) as exc:
            raise _fail(str(exc)) from None
        finally:
            remove_stack_file(settings.stack_file)
            stack.stop()


@stack_app.command("status")
def stack_status() -> None:
    """Is a `csp stack up` running here, and do its Kafka and Redis answer? (exit 1 if not)"""
    from cryptostream.stackfile import live_stack_pid, read_live_stack_file

    settings = _settings("stack")
    pid = live_stack_pid(settings.stack_file)
    if pid is None:
        typer.echo(f"no stack running (no live {settings.stack_file}); `csp stack up` starts one")
        raise typer.Exit(1)
    addresses = read_live_stack_file(settings.stack_file)
    kafka, redis_url = addresses.get("kafka_bootstrap", "?"), addresses.get("redis_url", "?")
    # each broker of a cluster on its own (the cluster as a whole answers with one node down)
    brokers = {address: _kafka_answers(address, settings) for address in kafka.split(",")}
    redis_ok = _redis_answers(redis_url)
    kafka_what = ", ".join(
        f"{address} {'answers' if ok else 'DOES NOT ANSWER'}" for address, ok in brokers.items()
    )
    typer.echo(
        f"stack up (pid {pid}): Kafka {kafka_what}"
        f", Redis {redis_url} {'answers' if redis_ok else 'DOES NOT ANSWER'}"
    )
    if not (all(brokers.values()) and redis_ok):
        raise typer.Exit(1)


def _kafka_answers(bootstrap: str, settings: Settings) -> bool:
    from cryptostream.kafka_clients import make_admin

    admin = make_admin(settings.model_copy(update={"kafka_bootstrap": bootstrap}))
    try:
        admin.list_topics(timeout=settings.kafka_connect_timeout_s)
    except Exception:  # any failure means "does not answer"
        return False
    return True


def _redis_answers(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


@stack_app.command("down")
def stack_down(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for it to stop")] = 60.0,
) -> None:
    """Stop the `csp stack up` running here (SIGTERM, then wait until it has stopped)."""
    import os
    import signal

    from cryptostream.stackfile import live_stack_pid

    settings = _settings("stack")
    pid = live_stack_pid(settings.stack_file)
    if pid is None:
        typer.echo(f"no stack running (no live {settings.stack_file})")
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            raise _fail(f"the stack (pid {pid}) is still running after {timeout:g} s")
        time.sleep(0.2)
    typer.echo(f"stack stopped (pid {pid})")


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it has stopped)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@stack_app.command("fetch")
def stack_fetch() -> None:
    """Resolve the Kafka jars from Maven Central into the cache folder (done once)."""
    from cryptostream.stack.kafka import check_java, resolve_kafka_jars
    from cryptostream.stack.supervisor import StackError

    settings = _settings("stack")
    try:
        check_java()
        t0 = time.monotonic()
        lib = resolve_kafka_jars(settings.cache_dir, settings.kafka_version)
    except StackError as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        f"Apache Kafka {settings.kafka_version} jars in {lib} ({time.monotonic() - t0:.1f}s)"
    )


@topics_app.command("create", epilog=_variables("topics"))
def topics_create() -> None:
    """Create raw.trades (CSP_PARTITIONS partitions) and the DLQ topic; safe to run twice."""
    from cryptostream.topics import TopicError, create_topics, required_topics

    settings = _settings("topics")
    try:
        specs = required_topics(settings)
        for line in create_topics(
            settings.kafka, specs, connect_timeout=settings.kafka_connect_timeout_s
        ):
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

    args = list(ctx.args)
    if "-h" in args or "--help" in args:
        import contextlib

        with contextlib.suppress(SystemExit):  # argparse's --help exits
            simulator_main(["--help"], prog="csp simulator")
        typer.echo(_ARCHIVE_REPLAY_HELP)
        raise typer.Exit(0)
    try:
        args = _resolve_replay_args(args)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    raise typer.Exit(simulator_main(args, prog="csp simulator"))


_ARCHIVE_REPLAY_HELP = """
archive replay (csp simulator only):
  --replay FOLDER|GLOB  the archive's root, a date= or symbol= folder, or a glob of folders or
                        .parquet files: replays the files a history query would read (intact,
                        not covered by a compacted file); damaged files are named and skipped
  --replay-from DAY     only archive days from DAY (YYYY-MM-DD, UTC) ...
  --replay-to DAY       ... to DAY, inclusive
  --replay-symbols S,S  only these symbols of the archive"""

_GLOB_CHARS = frozenset("*?[")


def _replay_day(flag: str, text: str) -> str:
    import datetime as dt

    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected a day, YYYY-MM-DD") from None


def _resolve_replay_args(args: list[str]) -> list[str]:
    """``csp simulator`` arguments with every archive folder or glob after ``--replay`` replaced
    by the archive files to replay (``--replay FILE`` each), and the archive-only options
    (``--replay-from/--replay-to/--replay-symbols``) consumed. Plain replay files pass through.
    ValueError (one line) for an archive with nothing to replay or a bad option value."""
    out: list[str] = []
    targets: list[tuple[int, str]] = []  # (index in out, folder or glob)
    opts: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if name in ("--replay-from", "--replay-to", "--replay-symbols"):
            if not eq:
                if i + 1 >= len(args):
                    raise ValueError(f"{name} needs a value")
                i += 1
                value = args[i]
            opts[name] = value
            i += 1
            continue
        if name != "--replay":
            out.append(arg)
            i += 1
            continue
        values = [value] if eq else []
        i += 1
        if not eq:
            # the shell may have expanded an unquoted glob: every bare word after --replay
            # (the simulator takes no positional arguments) is one more replay path
            while i < len(args) and not args[i].startswith("-"):
                values.append(args[i])
                i += 1
            if not values:
                raise ValueError("--replay needs a file, an archive folder or a glob")
        for v in values:
            path = Path(v)
            if path.is_file() and not (path.suffix == ".parquet" and _in_archive(path)):
                out += ["--replay", v]  # a recording, a CSV, a Parquet file outside an archive
            else:
                targets.append((len(out), v))
    if not targets:
        if opts:
            raise ValueError(f"{', '.join(sorted(opts))}: only with --replay of an archive folder")
        return out
    days = (
        _replay_day("--replay-from", opts["--replay-from"]) if "--replay-from" in opts else None,
        _replay_day("--replay-to", opts["--replay-to"]) if "--replay-to" in opts else None,
    )
    if days[0] and days[1] and days[0] > days[1]:
        raise ValueError(f"--replay-from {days[0]} is after --replay-to {days[1]}")
    symbols = None
    if "--replay-symbols" in opts:
        symbols = {s.strip().upper() for s in opts["--replay-symbols"].split(",") if s.strip()}
        if not symbols:
            raise ValueError("--replay-symbols: no symbol given")
    for at, target in reversed(targets):
        files = _archive_files(target, days, symbols)
        out[at:at] = [a for f in files for a in ("--replay", f)]
    return out


def _in_archive(path: Path) -> bool:
    from cryptostream.archive import layout

    return (
        layout.parse_symbol_dir(path.parent.name) is not None
        and layout.parse_date_dir(path.parent.parent.name) is not None
    )


def _archive_files(
    target: str, days: tuple[str | None, str | None], symbols: set[str] | None
) -> list[str]:
    """The files of an archive folder or glob a history reader would read: data files no other
    file covers, whose footer and schema are intact (the damaged ones are named on stderr and
    skipped), within the days and symbols asked for; ValueError if that leaves none."""
    import glob
    import os

    from cryptostream.archive import layout
    from cryptostream.history.files import ArchiveFiles

    matches = sorted(glob.glob(target, recursive=True)) if _GLOB_CHARS & set(target) else [target]
    matches = [m for m in matches if os.path.exists(m)]
    if not matches:
        raise ValueError(f"--replay {target}: no such file or folder")
    wanted: set[str] = set()
    listed: dict[str, list[str]] = {}  # archive root -> its readable files
    bad: dict[str, str] = {}
    for m in matches:
        path = Path(os.path.abspath(m))
        # find the archive root above a date=/symbol= folder or a data file
        root = path.parent if path.is_file() else path
        while layout.parse_symbol_dir(root.name) or layout.parse_date_dir(root.name):
            root = root.parent
        if str(root) not in listed:
            listing = ArchiveFiles(root).list()
            listed[str(root)] = listing.files
            bad.update(listing.bad)
        prefix = str(path) if path.is_file() else str(path) + os.sep
        for f in listed[str(root)]:
            if f == str(path) or f.startswith(prefix):
                wanted.add(f)
    files = []
    for f in sorted(wanted):
        fp = Path(f)
        day, sym = layout.parse_date_dir(fp.parent.parent.name), fp.parent.name[len("symbol=") :]
        if day is None or (days[0] and day < days[0]) or (days[1] and day > days[1]):
            continue
        if symbols is not None and sym not in symbols:
            continue
        files.append(f)
    for f, reason in sorted(bad.items()):
        typer.secho(f"warning: skipped {f}: {reason}", err=True, fg=typer.colors.YELLOW)
    if not files:
        narrowed = " for the days and symbols asked for" if days != (None, None) or symbols else ""
        damaged = f" ({len(bad)} damaged file(s) skipped)" if bad else ""
        raise ValueError(
            f"--replay {target}: no archive trade files to replay{narrowed}{damaged} "
            "(expected date=YYYY-MM-DD/symbol=SYMBOL/*.parquet, as `csp archive` writes)"
        )
    return files


@app.command(epilog=_variables("ingest"))
def ingest() -> None:
    """Binance WebSocket trades -> Kafka raw.trades."""
    from cryptostream.ingest.service import main as ingest_main

    raise typer.Exit(ingest_main(_settings("ingest")))


@app.command(epilog=_variables("processor"))
def processor() -> None:
    """Consumer group member: raw.trades -> Redis views, exactly once."""
    from cryptostream.processor.service import main as processor_main

    raise typer.Exit(processor_main(_settings("processor")))


@app.command(epilog=_variables("rebuild"))
def rebuild(
    yes: Annotated[bool, typer.Option("--yes", help="Confirm deleting the current views")] = False,
) -> None:
    """Delete the Redis views and rebuild them by replaying raw.trades from its start."""
    from cryptostream.processor.service import rebuild as run_rebuild
    from cryptostream.topics import TopicError

    if not yes:
        raise _fail("rebuild deletes every view in Redis first; run again with --yes")
    try:
        records = run_rebuild(_settings("rebuild"))
    except TopicError as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"rebuilt the views from {records} records")


@app.command(epilog=_variables("query"))
def query(
    workers: Annotated[int, typer.Option(help="Worker processes")] = 1,
) -> None:
    """The HTTP query API over Redis."""
    from cryptostream.query.server import main as query_main

    raise typer.Exit(query_main(_settings("query"), workers=workers))


# The plugin API: other packages add their commands through the `cryptostream.commands` entry
# point group (the lab, cryptostream_lab, adds demo, experiment and report); they reuse these.
fail = _fail
command_settings = _settings


def _load_commands(target: typer.Typer) -> None:
    """Call every ``cryptostream.commands`` hook with the app; the product runs without them."""
    from importlib.metadata import entry_points

    for point in entry_points(group="cryptostream.commands"):
        try:
            point.load()(target)
        except ImportError as exc:  # not installed (or made unimportable): the product still runs
            typer.secho(
                f"warning: csp commands {point.value!r} not loaded: {exc}",
                err=True,
                fg=typer.colors.YELLOW,
            )


_load_commands(app)


def main() -> None:
    app(prog_name="csp")


if __name__ == "__main__":
    main()
