"""Every task of the project: `nox -l` lists them; the README says what each writes where."""

from __future__ import annotations

import os
import shutil

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

SUPPORTED_PYTHONS = ("3.11", "3.12", "3.13")  # pyproject.toml: requires-python >= 3.11


def _python() -> str:
    """The oldest supported interpreter installed here, so sessions run on 3.11, 3.12 or 3.13,
    whichever the machine has; `nox --force-python 3.13 -s tests` picks another."""
    for version in SUPPORTED_PYTHONS:
        if shutil.which(f"python{version}"):
            return version
    return SUPPORTED_PYTHONS[0]  # nox then says that it is missing


PYTHON = _python()
LOCK = "uv.lock"  # the versions every session installs; `nox -s lock` refreshes it


def _ensure_system_packages(session: nox.Session) -> None:
    """redis-server comes from Debian's package; install it when missing and we may."""
    if shutil.which("redis-server"):
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        session.log("redis-server is missing: installing Debian's package")
        session.run("apt-get", "update", "-qq", external=True)
        session.run(
            "apt-get",
            "install",
            "-y",
            "-qq",
            "redis-server",
            external=True,
            env={"DEBIAN_FRONTEND": "noninteractive"},
        )
        return
    session.error("redis-server is not installed: sudo apt-get install redis-server")


def _install(session: nox.Session, extras: str = "dev") -> None:
    """The project with the locked versions of its dependencies (uv.lock as constraints), so a
    benchmark rerun months later runs on the versions its results.json records."""
    if not os.path.exists(LOCK) or not shutil.which("uv"):
        session.warn(f"{LOCK} or uv missing: installing the newest matching versions")
        session.install("-e", f".[{extras}]")
        return
    constraints = os.path.join(session.virtualenv.location, "constraints.txt")
    session.run_install(
        "uv",
        "export",
        "--frozen",
        "--all-extras",
        "--no-hashes",
        "--no-emit-project",
        "--format",
        "requirements-txt",
        "--quiet",
        "-o",
        constraints,
        external=True,
        silent=True,
    )
    session.install("-c", constraints, "-e", f".[{extras}]")


@nox.session(python=PYTHON, venv_backend="none")
def lock(session: nox.Session) -> None:
    """Refresh uv.lock to the newest versions pyproject.toml allows (then run the tests)."""
    session.run("uv", "lock", "--upgrade", *session.posargs, external=True)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit, integration and end-to-end tests on a real Kafka broker and Redis server."""
    _ensure_system_packages(session)
    _install(session)
    session.run("csp", "stack", "fetch")  # the Kafka jars, once, into .cache/
    session.run("pytest", *(session.posargs or ["-q"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff (lint + format check) and mypy --strict."""
    _install(session)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """The whole pipeline on the local stack with live prices (`-- --duration 30` to stop)."""
    _ensure_system_packages(session)
    _install(session)
    session.run("csp", "demo", *session.posargs)


@nox.session(python=PYTHON)
def live(session: nox.Session) -> None:
    """The pipeline against live Binance (needs internet access to stream.binance.com)."""
    _ensure_system_packages(session)
    _install(session)
    session.run("csp", "demo", "--live", *session.posargs)


@nox.session(python=PYTHON)
def bench_processor(session: nox.Session) -> None:
    """One processor draining 2M pre-filled trades with each Kafka client backend (confluent,
    aiokafka), their consume-loop ceilings, a py-spy profile, latency at 10k/s."""
    _ensure_system_packages(session)
    _install(session)
    session.install("py-spy")  # the sampling profiler of the profiled drain
    session.run(
        "python",
        "benchmarks/bench_processor.py",
        "--json",
        "reports/bench-processor.json",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def bench_books(session: nox.Session) -> None:
    """One processor draining 300k pre-filled depth diffs (~20 levels each) into the L2 books,
    checked against TopicBook, a py-spy profile, and event -> visible latency at 5k events/s."""
    _ensure_system_packages(session)
    _install(session)
    session.install("py-spy")  # the sampling profiler of the profiled drain
    session.run("csp", "stack", "fetch")
    session.run(
        "python",
        "benchmarks/bench_books.py",
        "--json",
        "reports/bench-books.json",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def bench_simulator(session: nox.Session) -> None:
    """Simulator frames/s to one client (synthetic and replay) and memory vs replay file size."""
    _install(session)
    session.run(
        "python",
        "benchmarks/bench_simulator.py",
        "--json",
        "reports/bench-simulator.json",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def bench_query(session: nox.Session) -> None:
    """GET /price with wrk (-t1 -c64, 1,000 Zipf symbols) vs the same server's empty route
    (`-- --view`, `--before DIR`, `--baseline`, `--profile` add measurements)."""
    _ensure_system_packages(session)
    if not shutil.which("wrk"):
        if shutil.which("apt-get") and os.geteuid() == 0:
            session.run("apt-get", "install", "-y", "-qq", "wrk", external=True)
        else:
            session.error("wrk is not installed: sudo apt-get install wrk")
    _install(session)
    session.run(
        "python",
        "benchmarks/bench_query.py",
        "--json",
        "reports/bench-query.json",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def bench_archive(session: nox.Session) -> None:
    """Archive: one sink's drain rate (1M trades), the one-day 1m candle query over 1M trades
    (DuckDB and HTTP), decimal128 vs decimal strings (DuckDB, pandas, Polars)."""
    _ensure_system_packages(session)
    _install(session)
    session.install("polars", "pandas")  # only for the column-type comparison
    session.run("csp", "stack", "fetch")
    session.run(
        "python",
        "benchmarks/bench_archive.py",
        "--json",
        "reports/bench-archive.json",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def reliability(session: nox.Session) -> None:
    """Every fault scenario in its full variant (< 20 min) -> reports/reliability/report.md+json."""
    _ensure_system_packages(session)
    _install(session)
    session.run("csp", "stack", "fetch")
    session.run("python", "-m", "cryptostream.stack.toxiproxy")  # network faults: built once
    folder = "reports/reliability"
    os.makedirs(folder, exist_ok=True)
    results = os.path.join(folder, "results.jsonl")
    if os.path.exists(results):
        os.remove(results)
    try:
        session.run(
            "pytest",
            "tests/reliability",
            "-m",
            "reliability and slow and not soak",
            "-q",
            "-rxXs",
            *session.posargs,
            env={"RELIABILITY_REPORT_DIR": folder},
        )
    finally:
        session.run(
            "python", "-m", "cryptostream_lab.reliability.report", folder, success_codes=[0, 1]
        )


# --- harness (issue 7): experiments, reports, microbenchmarks, load tests ------------------------


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Hot-path microbenchmarks vs benchmarks/micro/baseline.json (fails on regressions)."""
    _install(session)
    session.run("python", "benchmarks/micro/run.py", *session.posargs)


@nox.session(python=PYTHON)
def experiment(session: nox.Session) -> None:
    """`nox -s experiment -- scaling`: one experiment of benchmarks/experiments/ -> reports/."""
    if not session.posargs:
        session.error(
            "name an experiment: nox -s experiment -- scaling (see benchmarks/experiments)"
        )
    _ensure_system_packages(session)
    _install(session)
    session.run("csp", "stack", "fetch")
    session.run("csp", "experiment", *session.posargs)


@nox.session(python=PYTHON)
def replay(session: nox.Session) -> None:
    """`nox -s replay -- <file>`: a recorded/archive file through the full path at x1, x10, max."""
    _ensure_system_packages(session)
    _install(session)
    session.run("csp", "stack", "fetch")
    args = ["--file", session.posargs[0], *session.posargs[1:]] if session.posargs else []
    session.run("csp", "experiment", "replay", *args)


@nox.session(python=PYTHON)
def loadtest(session: nox.Session) -> None:
    """Locust (loadtests/locustfile.py, headless) against the query API during live load."""
    _ensure_system_packages(session)
    _install(session)
    session.run("csp", "stack", "fetch")
    session.run("csp", "experiment", "query-load", *session.posargs)


@nox.session(python=PYTHON)
def report(session: nox.Session) -> None:
    """`nox -s report -- reports/<dir>`: regenerate plots and report.md/html from results.json."""
    if not session.posargs:
        session.error("name a report folder: nox -s report -- reports/2026-01-01-scaling")
    _install(session)
    for folder in session.posargs:
        session.run("csp", "report", folder)


@nox.session(python=PYTHON)
def compare(session: nox.Session) -> None:
    """`nox -s compare -- reports/A reports/B`: two runs of one experiment side by side."""
    if len(session.posargs) != 2:
        session.error("name two report folders: nox -s compare -- reports/A reports/B")
    _install(session)
    session.run("csp", "report", "--compare", *session.posargs)


@nox.session(python=PYTHON)
def bench_ingest(session: nox.Session) -> None:
    """Simulator at full speed -> one ingest -> Kafka: trades/s acked, latency, CPU profile."""
    _ensure_system_packages(session)
    _install(session)
    session.install("py-spy")  # the sampling profiler of the profiled run
    session.run(
        "python",
        "benchmarks/bench_ingest.py",
        "--json",
        "reports/bench-ingest.json",
        *session.posargs,
    )


@nox.session(python=PYTHON)
def soak(session: nox.Session) -> None:
    """The whole pipeline at a steady rate (`-- --minutes 30 --rate 500`): RSS per process over
    time, lag, errors, the checker's verdict -> reports/soak/soak.md + soak.json."""
    _ensure_system_packages(session)
    _install(session)
    session.run("csp", "stack", "fetch")
    args = list(session.posargs)
    env = {"SOAK_MINUTES": "30", "SOAK_RATE": "500", "SOAK_REPORT_DIR": "reports/soak"}
    for flag, name in (("--minutes", "SOAK_MINUTES"), ("--rate", "SOAK_RATE")):
        if flag in args:
            i = args.index(flag)
            env[name] = args[i + 1]
            del args[i : i + 2]
    session.run(
        "pytest",
        "tests/reliability/test_soak.py",
        "-m",
        "soak",
        "-s",
        "-q",
        "--timeout",
        str(int(float(env["SOAK_MINUTES"]) * 60 + 900)),
        *args,
        env=env,
    )
