"""results.json -> PNG plots, report.md and report.html (``csp report <folder>``): the I/O.

Everything here is computed from results.json alone, so a report can be regenerated (or
restyled) without re-running anything. Repeated figures show median and spread; a spread above
10 % is flagged in the tables and listed under "Flagged".

The work is split by concern: ``results`` (the typed results.json), ``analysis`` (the figures),
``rendering`` (tables and words: Markdown, HTML) and ``plots`` (matplotlib); this module reads
the folder and writes the files.
"""

from __future__ import annotations

from pathlib import Path

from cryptostream_lab.harness.plots import plot_all
from cryptostream_lab.harness.rendering import FLAG, build, markdown, to_html
from cryptostream_lab.harness.results import load_results

__all__ = ["build", "markdown", "plot_all", "to_html", "write_comparison", "write_report"]


def write_report(folder: Path) -> list[str]:
    """Regenerate every plot, report.md and report.html; returns what it wrote, for printing."""
    results = load_results(folder).as_dict()  # ValueError if it does not fit the model
    for old in folder.glob("*.png"):
        old.unlink()
    report = build(results)
    plot_all(report, folder)
    (folder / "report.md").write_text(markdown(report))
    (folder / "report.html").write_text(to_html(report))
    lines = [f"report: {folder / 'report.md'} and report.html, {len(report.figures)} plot(s)"]
    first = report.tables[0] if report.tables else None
    if first is not None:
        lines += [first.title, *report.summary, " | ".join(first.header)]
        lines += [" | ".join(row) for row in first.rows]
        lines += [f"- {c}" for c in report.caveats]
    lines += [f"{FLAG} {line}" for line in report.flagged]
    return lines


def write_comparison(a: Path, b: Path) -> str:
    """``csp report --compare A B``: the comparison page, also written to B/compare-<A>.md."""
    from cryptostream_lab.harness.compare import markdown as compare_markdown

    ra, rb = load_results(a).as_dict(), load_results(b).as_dict()
    text = compare_markdown(ra, rb, a.name or str(a), b.name or str(b))
    (b / f"compare-{a.resolve().name}.md").write_text(text)
    return text
