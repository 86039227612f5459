"""`csp simulator --replay` of a file it cannot read exits at once with the error, instead of
serving nothing until SIGTERM (and showing the traceback only then)."""

from __future__ import annotations

from pathlib import Path

from tests.cli.conftest import Run


def test_unreadable_replay_file_exits_with_its_error(csp: Run, tmp_path: Path) -> None:
    """(Bad rows of a readable file are skipped and counted; this one cannot be read at all:
    an archive CSV whose name does not tell the symbol.)"""
    path = tmp_path / "garbage.csv"
    path.write_text("this,is\nnot a,trade file\n")
    result = csp("simulator", "--replay", str(path), "--port", "0", timeout=30)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("marketsim: "), lines  # at start, one line
    assert str(path) in lines[0] and "--replay-symbol" in lines[0]
