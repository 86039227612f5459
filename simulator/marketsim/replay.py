"""Replay sources: recorded WebSocket frames and Binance public trade archives. Pure readers.

Recorded frames (the format the ingest's record mode writes)
-----------------------------------------------------------
A text file, optionally gzip-compressed (detected by content, not by name), with **one JSON object
per line**::

    {"recv_time_us": 1735689600123456, "frame": "{\\"e\\":\\"trade\\",\\"E\\":...}"}

* ``recv_time_us`` (int): when the frame was received, microseconds since the Unix epoch.
* ``frame`` (string): the WebSocket text frame exactly as received — a raw payload
  (``/ws/...``) or the combined wrapper ``{"stream":...,"data":...}`` (``/stream...``).

Replay sends each frame's payload verbatim (unwrapped, and re-wrapped for combined connections) to
the subscribers of its stream: the ``stream`` field of a combined frame, or for a raw payload the
name derived from it (``<symbol>@trade``, ``@aggTrade``, ``@kline_<i>``, ``@ticker``,
``@miniTicker``, ``@depth``, ``@bookTicker``). Control replies, blank and undecodable lines are
skipped (counted in ``ReplayStats``). Trade frames also feed ``/sim/stats`` and the REST history.
Recorded frames keep their original time unit (ms) whatever ``timeUnit`` the client asks for.

Timestamped frame lines (collectors' format)
--------------------------------------------
``<receive time> <frame JSON as received>``, one per line, optionally gzip-compressed: the format
of hftbacktest's collector (the genuine recordings in ``shared/data/``; the time in ns or µs since
the epoch, told apart by magnitude) and of tardis.dev's raw files (an ISO-8601 time). Lines that
are not market frames (a REST depth snapshot, control replies) or cannot be read are skipped and
counted by reason in ``ReplayStats``; depth and bookTicker frames are kept like any other stream.
A REST depth snapshot line (``{"lastUpdateId":..,"bids":..,"asks":..}``, as hftbacktest's
collector writes one) is kept too, as a frame sent to no stream: with the recorded
``depthUpdate`` diffs it rebuilds the replayed book that REST ``/api/v3/depth`` answers from
(:class:`marketsim.book.ReplayDepth`).

Binance archive CSVs (data.binance.vision)
------------------------------------------
``trades`` (``id,price,qty,quoteQty,time,isBuyerMaker,isBestMatch``) and ``aggTrades``
(``aggTradeId,price,qty,firstTradeId,lastTradeId,timestamp,isBuyerMaker,isBestMatch``) files, as
``.csv`` or ``.zip`` (first member), with or without a header line, booleans ``True``/``true``,
timestamps in ms or µs (≥ 10^14 means µs). The kind comes from the header, else the column count
(7 trades, 8 aggTrades); the symbol from the file name (``BTCUSDT-trades-2025-01-01.csv``) or the
``symbol`` argument. Replayed as orders: a trades row is one trade whose aggTrade id equals its
trade id; an aggTrades row becomes trades ``f..l`` (quantity split evenly in 1e-8 units, the
remainder on the last trade) and one aggTrade. Stream payloads are then built like the synthetic
ones, so every stream (trade, aggTrade, bookTicker, kline_1m) works.

The pipeline's own trade archive (Parquet, ``csp archive``)
---------------------------------------------------------
Files of ``date=.../symbol=.../`` folders, replayed like ``trades`` CSV rows: see
:mod:`marketsim.replay_parquet` (told apart by content: Parquet's ``PAR1`` magic). An archive's
days are disjoint in time, so its files are merged one day at a time (one day's files open at
once, whatever the span replayed).

Several files are merged in time order (stable: on equal times, the earlier file first), read
line by line from disk: memory stays flat whatever the file sizes. With ``loop``, the files are
read again; archive trades then get times shifted by the span of the data (+1 ms) and trade/agg
ids shifted past the largest id seen, so ids stay unique and increasing; recorded frames are sent
again verbatim with shifted times.
"""

from __future__ import annotations

import csv
import gzip
import heapq
import io
import itertools
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from marketsim.model import DepthInfo, Item, Order, RawFrame, TradeInfo
from marketsim.replay_parquet import check_parquet, day_from_folder, is_parquet, read_parquet
from marketsim.replay_parquet import symbol_from_folder as _parquet_symbol
from marketsim.symbols import SymbolSpec, spec_for
from marketsim.units import parse8

if TYPE_CHECKING:
    from marketsim.server import SimConfig, Source

_NAME_RE = re.compile(r"([A-Z0-9]{2,20})-(trades|aggTrades)-", re.IGNORECASE)
_US_THRESHOLD = 10**14


@dataclass(slots=True)
class ReplayStats:
    lines: int = 0
    skipped: int = 0
    items: int = 0
    loops: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    # reason -> "file:line" of its first occurrence, so a report can point at the bad line
    first_skipped: dict[str, str] = field(default_factory=dict)

    def skip(self, reason: str, where: str = "") -> None:
        self.skipped += 1
        n = self.skipped_reasons.get(reason, 0)
        self.skipped_reasons[reason] = n + 1
        if not n and where:
            self.first_skipped[reason] = where

    def as_json(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "items": self.items,
            "skipped": self.skipped,
            "skipped_reasons": dict(self.skipped_reasons),
            "first_skipped": dict(self.first_skipped),
            "loops": self.loops,
        }


def open_text(path: Path) -> IO[str]:
    """Open a plain, gzip or zip (first member) file as streamed UTF-8 text."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    if magic == b"PK\x03\x04":
        zf = zipfile.ZipFile(path)
        members = [n for n in zf.namelist() if not n.endswith("/")]
        if not members:
            raise ValueError(f"{path}: empty zip")
        return io.TextIOWrapper(zf.open(members[0]), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def to_us(t: int) -> int:
    return t if t >= _US_THRESHOLD else t * 1000


def _bool(text: str) -> bool:
    if text == "True" or text == "False":  # the archives' spelling, checked first
        return text == "True"
    v = text.strip().lower()
    if v in ("true", "1"):
        return True
    if v in ("false", "0"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


# ---------- recorded frames ----------

_EVENT_STREAM = {
    "trade": "trade",
    "aggTrade": "aggTrade",
    "24hrTicker": "ticker",
    "24hrMiniTicker": "miniTicker",
    "depthUpdate": "depth",
}


def split_frame(text: str) -> tuple[str, bytes, dict[str, Any]] | None:
    """(stream, payload bytes, payload object) of a recorded frame; None for non-market frames."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    if "stream" in obj and "data" in obj:
        stream = obj["stream"]
        data = obj["data"]
        if not isinstance(stream, str) or not isinstance(data, dict):
            return None
        marker = text.find('"data":')
        payload = (
            text[marker + 7 : text.rstrip().rfind("}")].strip().encode()
            if marker >= 0 and text.startswith('{"stream":')
            else orjson.dumps(data)
        )
        sym, at, rest = stream.partition("@")
        return (sym.lower() + at + rest if not sym.startswith("!") else stream), payload, data
    if "result" in obj or "code" in obj:
        return None
    symbol = obj.get("s")
    if not isinstance(symbol, str):
        return None
    ev = obj.get("e")
    if ev == "kline" and isinstance(obj.get("k"), dict):
        name = f"kline_{obj['k'].get('i', '1m')}"
    elif isinstance(ev, str):
        name = _EVENT_STREAM.get(ev) or ev
    elif "u" in obj and "b" in obj and "a" in obj:
        name = "bookTicker"
    else:
        return None
    return f"{symbol.lower()}@{name}", text.strip().encode(), obj


def _trade_info(d: dict[str, Any]) -> TradeInfo | None:
    if d.get("e") != "trade":
        return None
    try:
        return TradeInfo(
            str(d["s"]).upper(),
            int(d["t"]),
            parse8(str(d["p"])),
            parse8(str(d["q"])),
            to_us(int(d["T"])),
            bool(d["m"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _levels(rows: Any) -> list[tuple[int, int]]:
    return [(parse8(str(p)), parse8(str(q))) for p, q in rows]


def _depth_info(d: dict[str, Any]) -> DepthInfo | None:
    """A ``depthUpdate`` payload or a REST snapshot body; None for anything else or bad ids."""
    try:
        if d.get("e") == "depthUpdate":
            return DepthInfo(
                str(d["s"]).upper(), int(d["U"]), int(d["u"]), _levels(d["b"]), _levels(d["a"])
            )
        if "lastUpdateId" in d and "bids" in d and "asks" in d:
            last = int(d["lastUpdateId"])
            return DepthInfo("", last, last, _levels(d["bids"]), _levels(d["asks"]), True)
    except (KeyError, TypeError, ValueError):
        return None
    return None


def _snapshot_line(text: str) -> DepthInfo | None:
    if not text.startswith('{"lastUpdateId"'):
        return None
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return _depth_info(obj) if isinstance(obj, dict) else None


def epoch_us(text: str) -> int:
    """A receive time in µs from epoch digits in ns, µs or ms (by magnitude) or ISO-8601."""
    if text.isdigit():
        t = int(text)
        if t >= 10**17:  # ns (19 digits today)
            return t // 1000
        return to_us(t)
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1_000_000)


def _recorded_line(line: str) -> tuple[int, str]:
    """(receive time µs, frame text) of one line of either recorded format; ValueError if not."""
    if line.startswith("{"):
        try:
            rec = orjson.loads(line)
            text = rec["frame"]
            t = int(rec["recv_time_us"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError("not a recv_time_us/frame record") from exc
        if not isinstance(text, str):
            raise ValueError("frame must be a string")
        return t, text
    stamp, sep, text = line.partition(" ")
    if not sep or not text.lstrip().startswith("{"):
        raise ValueError("not '<time> <frame>'")
    return epoch_us(stamp), text.strip()


def read_recorded(path: Path, stats: ReplayStats | None = None) -> Iterator[RawFrame]:
    stats = stats if stats is not None else ReplayStats()
    with open_text(path) as f:
        for no, line in enumerate(f, 1):
            stats.lines += 1
            line = line.strip()
            if not line:
                stats.skip("blank")
                continue
            try:
                t, text = _recorded_line(line)
            except ValueError:
                stats.skip("bad record", f"{path}:{no}")
                continue
            split = split_frame(text)
            if split is None:
                snap = _snapshot_line(text)
                if snap is not None:
                    stats.items += 1
                    yield RawFrame("", b"", t, None, snap)
                    continue
                stats.skip("not a market frame", f"{path}:{no}")
                continue
            stream, payload, data = split
            stats.items += 1
            ev = data.get("e")
            if ev == "trade":
                yield RawFrame(stream, payload, t, _trade_info(data))
            elif ev == "depthUpdate":
                yield RawFrame(stream, payload, t, None, _depth_info(data))
            else:
                yield RawFrame(stream, payload, t)


# ---------- archive CSVs ----------


def symbol_from_name(path: Path) -> str | None:
    m = _NAME_RE.search(path.name)
    return m.group(1).upper() if m else None


def archive_kind(path: Path, first_row: Sequence[str]) -> tuple[str, bool]:
    """("trades"|"aggTrades", has_header) from the first CSV row (and the name as a hint)."""
    header = bool(first_row) and not first_row[0].strip().lstrip("-").isdigit()
    if header:
        cols = {c.strip().lower() for c in first_row}
        if "firsttradeid" in cols or "aggtradeid" in cols or "first_trade_id" in cols:
            return "aggTrades", True
        return "trades", True
    if len(first_row) == 8:
        return "aggTrades", False
    if len(first_row) == 7:
        return "trades", False
    m = _NAME_RE.search(path.name)
    if m:
        return ("aggTrades" if m.group(2).lower() == "aggtrades" else "trades"), False
    raise ValueError(f"{path}: cannot tell trades from aggTrades ({len(first_row)} columns)")


def _book(spec: SymbolSpec, price: int, qty: int, buyer_maker: bool) -> tuple[int, int, int, int]:
    tick = spec.tick_size
    if buyer_maker:
        return price, qty, price + tick, qty
    return max(tick, price - tick), qty, price, qty


def read_archive(
    path: Path, symbol: str | None = None, stats: ReplayStats | None = None
) -> Iterator[Order]:
    stats = stats if stats is not None else ReplayStats()
    sym = (symbol or symbol_from_name(path) or "").upper()
    if not sym:
        raise ValueError(f"{path}: no symbol in the file name; pass --replay-symbol")
    spec = spec_for(sym)
    with open_text(path) as f:
        reader = csv.reader(f)
        first = next(reader, None)
        if first is None:
            return
        kind, header = archive_kind(path, first)
        rows = reader if header else itertools.chain([first], reader)
        no = 1 if header else 0
        agg = kind == "aggTrades"
        # Consecutive trades mostly share a price: parse each price text once (bounded cache).
        prices: dict[str, int] = {}
        for row in rows:
            stats.lines += 1
            no += 1
            try:
                if agg:
                    a, p, q, fid, lid, t, m = row[:7]
                    first_id, last_id = int(fid), int(lid)
                    agg_id = int(a)
                else:
                    tid, p, q, _quote, t, m = row[:6]
                    first_id = last_id = agg_id = int(tid)
                price = prices.get(p)
                if price is None:
                    if len(prices) >= 4096:
                        prices.clear()
                    price = prices[p] = parse8(p)
                qty, time_us, bm = parse8(q), to_us(int(t)), _bool(m)
                n = last_id - first_id + 1
                if n < 1:
                    raise ValueError("lastTradeId < firstTradeId")
            except (ValueError, IndexError):
                if not row or not "".join(row).strip():
                    stats.skip("blank")
                else:
                    stats.skip("bad row", f"{path}:{no}")
                continue
            if n == 1:
                qtys = [qty]
            else:
                base = qty // n
                qtys = [base] * (n - 1) + [qty - base * (n - 1)]
            bid, bq, ask, aq = _book(spec, price, qtys[-1], bm)
            stats.items += 1
            yield Order(sym, agg_id, first_id, price, qtys, time_us, bm, bid, bq, ask, aq, first_id)


# ---------- merging and looping ----------


_TIMESTAMPED_RE = re.compile(r"\A(\d{13,19}|\d{4}-\d\d-\d\dT[0-9:.]+Z?) \{")


def is_recorded(path: Path) -> bool:
    """Recorded frames: a JSON record or ``<time> {...}`` per line; archives are CSV (or zip)
    or Parquet."""
    if is_parquet(path):
        return False
    with open_text(path) as f:
        for line in f:
            if line.strip():
                text = line.lstrip()
                return text.startswith("{") or _TIMESTAMPED_RE.match(text) is not None
    return False


def merged(iterators: Sequence[Iterator[Item]]) -> Iterator[Item]:
    """Merge time-ordered iterators by time (stable across files)."""
    if len(iterators) == 1:  # nothing to merge: skip heapq's per-item key call
        return iterators[0]
    return heapq.merge(*iterators, key=lambda it: it.time_us)


def _kind(path: Path) -> str:
    """The kind of a replay file: parquet (the pipeline archive), recorded (frames) or csv."""
    if is_parquet(path):
        return "parquet"
    return "recorded" if is_recorded(path) else "csv"


class ReplaySource:
    """Replay of several files, merged in time order, optionally looped."""

    def __init__(
        self, files: Sequence[Path], loop: bool = False, symbol: str | None = None
    ) -> None:
        if not files:
            raise ValueError("no replay files")
        self.files = [Path(p) for p in files]
        for p in self.files:
            if p.is_dir():
                raise ValueError(
                    f"{p} is a folder: the simulator replays files "
                    "(`csp simulator --replay FOLDER` resolves an archive folder to its files)"
                )
            if not p.is_file():
                raise FileNotFoundError(f"replay file not found: {p}")
        self.loop = loop
        self.symbol = symbol
        self.stats = ReplayStats()
        self._kinds = [_kind(p) for p in self.files]
        for p, kind in zip(self.files, self._kinds, strict=True):
            if kind == "parquet":  # found at start, not when the market task first reads it
                check_parquet(p)
                sym = _parquet_symbol(p) or symbol
                if not sym:
                    raise ValueError(f"{p}: no symbol= folder; pass --replay-symbol")
                spec_for(sym.upper())
            elif kind == "csv" and not (symbol or symbol_from_name(p)):
                # found at start, not when the market task first reads the file
                raise ValueError(f"{p}: no symbol in the file name; pass --replay-symbol")
            elif kind == "csv":
                spec_for((symbol or symbol_from_name(p) or "").upper())  # a bad symbol, now
                with open_text(p) as f:  # neither trades nor aggTrades: now, too
                    first_row = next(csv.reader(f), None)
                if first_row is not None:
                    archive_kind(p, first_row)
        self._it = self._open()
        self._cycle = 0
        self._t_min: int | None = None
        self._t_max = 0
        self._id_max: dict[str, int] = {}
        self._id_min: dict[str, int] = {}
        self._shift_t = 0
        self._shift_id: dict[str, int] = {}
        self._emitted_any = False

    def _open(self) -> Iterator[Item]:
        its: list[Iterator[Item]] = []
        days: dict[str, list[Iterator[Item]]] = {}
        days_at = -1  # where the archive's day-chained files go in the merge (stable ties)
        for p, kind in zip(self.files, self._kinds, strict=True):
            if kind == "parquet":
                day = day_from_folder(p)
                if day is not None:
                    if days_at < 0:
                        days_at = len(its)
                    days.setdefault(day, []).append(read_parquet(p, self.symbol, self.stats))
                    continue
                its.append(read_parquet(p, self.symbol, self.stats))
            elif kind == "recorded":
                its.append(read_recorded(p, self.stats))
            else:
                its.append(read_archive(p, self.symbol, self.stats))
        if days:
            chained = itertools.chain.from_iterable(merged(days[d]) for d in sorted(days))
            its.insert(days_at, chained)
        return merged(its)

    def initial_specs(self) -> list[SymbolSpec]:
        out: list[SymbolSpec] = []
        for p, kind in zip(self.files, self._kinds, strict=True):
            if kind == "parquet":
                sym = _parquet_symbol(p) or self.symbol
            else:
                sym = None if kind == "recorded" else (self.symbol or symbol_from_name(p))
            if sym:
                spec = spec_for(sym)
                if spec not in out:
                    out.append(spec)
        return out

    def next_item(self) -> Item | None:
        while True:
            item = next(self._it, None)
            if item is not None:
                self._emitted_any = True
                return self._shift(item)
            if not self.loop or not self._emitted_any:
                return None
            self._cycle += 1
            self.stats.loops += 1
            span = self._t_max - (self._t_min or 0) + 1000
            self._shift_t = span * self._cycle
            for s, hi in self._id_max.items():
                self._shift_id[s] = (hi - self._id_min[s] + 1) * self._cycle
            self._it = self._open()

    def _shift(self, item: Item) -> Item:
        if self._cycle == 0:
            t = item.time_us
            if self._t_min is None or t < self._t_min:
                self._t_min = t
            self._t_max = max(self._t_max, t)
            if isinstance(item, Order):
                s, low = item.symbol, item.first_id
                high = low + len(item.qtys) - 1  # item.last_id, inlined (hot path)
                if item.agg_id > high:
                    high = item.agg_id
                if item.agg_id < low:
                    low = item.agg_id
                if high > self._id_max.get(s, high - 1):
                    self._id_max[s] = high
                if low < self._id_min.get(s, low + 1):
                    self._id_min[s] = low
            return item
        item.time_us += self._shift_t
        if isinstance(item, Order):
            d = self._shift_id.get(item.symbol, 0)
            item.first_id += d
            item.agg_id += d
            item.book_id += d
        return item


def replay_factory(
    files: Sequence[Path], loop: bool = False, symbol: str | None = None
) -> Callable[[SimConfig], Source]:
    """A source factory; the files are checked now (missing file, no symbol: ValueError or
    FileNotFoundError here, so the command line fails at start with a clear message)."""
    first: list[ReplaySource] = [ReplaySource(files, loop=loop, symbol=symbol)]

    def make(_cfg: SimConfig) -> Source:
        return first.pop() if first else ReplaySource(files, loop=loop, symbol=symbol)

    return make
