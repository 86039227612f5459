"""Where the genuine Binance recordings are: ``../shared/data`` beside the checkout (a git
worktree under ``wt/<name>`` sits one level deeper, so look a few levels up). One lookup for
every test that reads them; tests skip with this path in their reason when it is absent."""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve()

SHARED_DATA: Path = next(
    (d / "shared" / "data" for d in _HERE.parents[1:5] if (d / "shared" / "data").is_dir()),
    _HERE.parents[2] / "shared" / "data",
)

# The spot recordings holding a REST depth snapshot line, depth diffs, bookTickers and trades.
DEPTH_RECORDINGS = ("hftbacktest_spot_btcusdt_20240808.gz", "hftbacktest_spot_ethusdt_20240808.gz")


def recordings(names: tuple[str, ...] | list[str] = DEPTH_RECORDINGS) -> list[Path]:
    return [SHARED_DATA / n for n in names if (SHARED_DATA / n).exists()]
