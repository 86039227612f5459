"""`csp report` ends with the report as a file:// URL that a terminal can open."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

from tests.cli.conftest import ROOT, Run


def test_report_path_is_a_file_url(csp: Run, tmp_path: Path) -> None:
    folder = tmp_path / "my report"  # a space, so the URL must be quoted
    folder.mkdir()
    shutil.copy(ROOT / "tests" / "harness" / "data" / "results.json", folder / "results.json")
    result = csp("report", str(folder))
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("open: file:///")
    url = urlsplit(last.removeprefix("open: "))
    assert Path(unquote(url.path)) == (folder / "report.html").resolve()
    assert (folder / "report.html").exists()
