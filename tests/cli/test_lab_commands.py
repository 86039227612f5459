"""The lab's commands come in through the ``cryptostream.commands`` entry point, and a command
whose extra is not installed is hidden from ``csp --help`` (it still explains itself when run)."""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import typer
from typer.testing import CliRunner

from cryptostream_lab import commands


def _listed(app: typer.Typer) -> set[str]:
    output = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    return {
        line.split()[1]
        for line in output.splitlines()
        if line.startswith("│ ") and len(line.split()) > 1
    }


def _app() -> typer.Typer:
    app = typer.Typer()

    @app.command()
    def product() -> None:
        """A product command."""

    commands.register(app)
    return app


def test_the_lab_registers_through_the_entry_point() -> None:
    points = {p.name: p.value for p in entry_points(group="cryptostream.commands")}
    assert points == {"lab": "cryptostream_lab.commands:register"}
    assert {"demo", "experiment", "report"} <= _listed(_app())


def test_commands_without_their_extra_are_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(commands, "find_spec", lambda name: None)
    assert _listed(_app()) >= {"product", "demo"}
    assert not _listed(_app()) & {"experiment", "report"}
