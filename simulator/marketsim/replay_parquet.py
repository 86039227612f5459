"""Replay of the pipeline's trade archive: its Parquet files, read with pyarrow. A pure reader.

The archive (written by ``csp archive``) keeps one UTC day of one symbol's trades per folder,
``.../date=YYYY-MM-DD/symbol=SYMBOL/<topic>-pNNN-<first>-<last>.parquet``, with the columns
``trade_id`` (int64), ``price`` and ``quantity`` (``decimal128`` at the archive's scale),
``trade_time`` and ``event_time`` (ms), ``buyer_is_maker`` and bookkeeping columns this reader
ignores. The symbol comes from the ``symbol=`` folder (else ``--replay-symbol``). Each row is
replayed as a Binance ``trades`` archive row is (one order, aggTrade id = trade id), so the
frames are exactly those of the CSV replay of ``csp history export``'s file of the same trades:
prices and quantities rendered with 8 decimals, ``T`` = the archived trade time, ``E`` the
replay clock's. A value with non-zero digits past the 8th decimal (an archive at a scale above
8) cannot be rendered exactly: its row is skipped and counted, never rounded.

Which files of an archive folder to replay (intact, not covered by a compacted file) is the
product's business (``csp simulator --replay FOLDER`` resolves that); this module reads the
files it is given. A file is checked at start (Parquet footer, columns, decimal types:
:func:`check_parquet`); a page that fails to decode later ends that file, counted in the stats.

pyarrow is imported on first use, so the simulator starts as fast as before without Parquet.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marketsim.model import Order
from marketsim.symbols import spec_for
from marketsim.units import DECIMALS, parse8

if TYPE_CHECKING:
    from marketsim.replay import ReplayStats

MAGIC = b"PAR1"
COLUMNS = ["trade_id", "price", "quantity", "trade_time", "buyer_is_maker"]
_SYMBOL_DIR_RE = re.compile(r"\Asymbol=([A-Z0-9]{2,20})\Z")
_DATE_DIR_RE = re.compile(r"\Adate=(\d{4}-\d{2}-\d{2})\Z")
BATCH_ROWS = 8192


def is_parquet(path: Path) -> bool:
    """A Parquet file by content (its leading magic; a truncated one still has it)."""
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def symbol_from_folder(path: Path) -> str | None:
    m = _SYMBOL_DIR_RE.match(path.parent.name)
    return m[1] if m else None


def day_from_folder(path: Path) -> str | None:
    """The archive day of a file in ``date=.../symbol=.../`` (None outside that layout)."""
    m = _DATE_DIR_RE.match(path.parent.parent.name)
    return m[1] if m else None


def check_parquet(path: Path) -> None:
    """ValueError (one line naming the file) unless ``path`` is a readable archive trade file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{path}: unreadable Parquet (truncated or not Parquet): {exc}") from None
    missing = [c for c in COLUMNS if c not in schema.names]
    if missing:
        raise ValueError(f"{path}: not a trade archive file: no column(s) {missing}")
    for name in ("price", "quantity"):
        t = schema.field(name).type
        if not (pa.types.is_decimal(t) or pa.types.is_string(t) or pa.types.is_large_string(t)):
            raise ValueError(f"{path}: {name} is {t}, not a decimal (floats lose digits)")
    for name in ("trade_id", "trade_time"):
        if not pa.types.is_integer(schema.field(name).type):
            raise ValueError(f"{path}: {name} is {schema.field(name).type}, not an integer")
    if not pa.types.is_boolean(schema.field("buyer_is_maker").type):
        raise ValueError(f"{path}: buyer_is_maker is not a boolean")


def _units(column: Any) -> list[int | None]:
    """A price or quantity column in 1e-8 units; None for nulls and for values with non-zero
    digits past the 8th decimal (never rounded). Decimals are read from their unscaled integers
    (pyarrow's decimal-to-string cast writes small values in exponent notation: ``1E-8``)."""
    import pyarrow as pa

    n = len(column)
    if not pa.types.is_decimal(column.type):  # decimal strings (a file written by other tools)
        return [
            parse8(text) if text is not None and _exact8(text) else None
            for text in column.to_pylist()
        ]
    width = column.type.byte_width
    data = memoryview(column.buffers()[1])[column.offset * width : (column.offset + n) * width]
    raw = [
        int.from_bytes(data[i : i + width], "little", signed=True)
        for i in range(0, n * width, width)
    ]
    shift = column.type.scale - DECIMALS
    out: list[int | None]
    if shift == 0:
        out = list(raw)
    elif shift < 0:
        mul = 10**-shift
        out = [v * mul for v in raw]
    else:
        div = 10**shift
        out = [v // div if v % div == 0 else None for v in raw]
    if column.null_count:
        for i, null in enumerate(column.is_null().to_pylist()):
            if null:
                out[i] = None
    return out


def _exact8(text: str) -> bool:
    _, _, frac = text.partition(".")
    return len(frac) <= DECIMALS or not frac[DECIMALS:].strip("0")


def read_parquet(
    path: Path, symbol: str | None = None, stats: ReplayStats | None = None
) -> Iterator[Order]:
    """The trades of one archive file as orders, in file order (the archive's files are in
    trade-id order, which is time order), one batch of rows in memory at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from marketsim.replay import ReplayStats, _book

    stats = stats if stats is not None else ReplayStats()
    sym = (symbol_from_folder(path) or symbol or "").upper()
    if not sym:
        raise ValueError(f"{path}: no symbol= folder; pass --replay-symbol")
    spec = spec_for(sym)
    row = 0
    try:
        pf = pq.ParquetFile(path)
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=COLUMNS):
            ids = batch.column("trade_id").to_pylist()
            ps = _units(batch.column("price"))
            qs = _units(batch.column("quantity"))
            ts = batch.column("trade_time").to_pylist()
            ms = batch.column("buyer_is_maker").to_pylist()
            for tid, price, qty, t, m in zip(ids, ps, qs, ts, ms, strict=True):
                row += 1
                stats.lines += 1
                if tid is None or price is None or qty is None or t is None or m is None:
                    stats.skip("null or more than 8 decimals", f"{path}:row {row}")
                    continue
                bid, bq, ask, aq = _book(spec, price, qty, m)
                stats.items += 1
                yield Order(sym, tid, tid, price, [qty], t * 1000, m, bid, bq, ask, aq, tid)
    except (pa.ArrowException, OSError) as exc:
        # a damaged page behind an intact footer: the rest of this file is lost, the replay goes on
        stats.skip("unreadable Parquet", f"{path}:row {row + 1}: {exc}")
