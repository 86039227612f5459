"""Record mode: every raw frame with its receive time, as rotating gzip JSON-lines files.

One line per frame, exactly the format the simulator replays (``marketsim.replay``)::

    {"recv_time_us": 1735689600123456, "frame": "{\\"stream\\":\\"btcusdt@trade\\",...}"}

Files are ``frames-<UTC start>-<n>.jsonl.gz`` in the record folder; a new file starts after
``rotate_bytes`` of (uncompressed) lines or ``rotate_s`` seconds. A file being written has the
suffix ``.part`` and is renamed when complete, so readers never see a half-written gzip stream.
"""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import orjson


class Recorder:
    def __init__(self, folder: Path, rotate_bytes: int, rotate_s: float) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rotate_bytes = rotate_bytes
        self.rotate_s = rotate_s
        self.files: list[Path] = []
        self._file: gzip.GzipFile | None = None
        self._path: Path | None = None
        self._written = 0
        self._opened = 0.0
        self._seq = 0

    def _open(self) -> gzip.GzipFile:
        self._seq += 1
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self._path = self.folder / f"frames-{stamp}-{os.getpid()}-{self._seq}.jsonl.gz.part"
        file = gzip.GzipFile(self._path, "wb", compresslevel=4)
        self._file = file
        self._written = 0
        self._opened = time.monotonic()
        return file

    def write(self, frames: list[bytes], recv_time_us: int) -> None:
        f = self._file or self._open()
        prefix = b'{"recv_time_us":%d,"frame":' % recv_time_us
        dumps = orjson.dumps
        lines = [prefix + dumps(raw.decode("utf-8", "replace")) + b"}\n" for raw in frames]
        data = b"".join(lines)
        f.write(data)
        self._written += len(data)
        if self._written >= self.rotate_bytes or time.monotonic() - self._opened >= self.rotate_s:
            self.close()

    def close(self) -> None:
        """Finish the current file (it becomes ``*.jsonl.gz``)."""
        if self._file is None or self._path is None:
            return
        self._file.close()
        final = self._path.with_suffix("")  # drop .part
        os.replace(self._path, final)
        self.files.append(final)
        self._file = None
        self._path = None
