"""The archive on an S3-compatible object store (``CSP_ARCHIVE_URL=s3://bucket/prefix``).

An object store has atomic PUTs (an object appears whole or not at all: pyarrow completes a
multipart upload only when the stream is closed, so a killed writer leaves no object), strongly
consistent reads and listings, and no rename. So the local commit protocol (stage, fsync,
rename; archive/store.py) is replaced by one whose only step that matters is a PUT. A flush of
Kafka partition ``p`` over offsets ``first..last`` is:

1. PUT the *intent* ``_sink/<topic>/pNNN/<last>.intent.json``, naming the data objects to come;
2. PUT every data object directly at its final name ``date=.../symbol=.../<topic>-pNNN-<first>-
   <last>.parquet``;
3. PUT the marker ``_sink/<topic>/pNNN/<last>.json``: **this is the commit point**;
4. DELETE the intent and the previous marker (the shell then commits ``last + 1`` to Kafka, for
   lag tooling only).

Readers (history/files.py) read a data object of partition ``p`` only if its range ends at or
before the newest marker of ``p`` (``last <= committed``), so objects of a flush that has not
reached its commit point are never read, although a listing shows them. On (re)assignment
:meth:`ObjectStore.resume` deletes the objects of every intent above the newest marker (a flush
killed before its commit point; its records are read again from Kafka), then the intent, and
returns ``committed + 1``. That happens before the partition's next flush, so an uncommitted
leftover is gone before a later marker could cover its range. After a SIGKILL at any moment,
every record is in the archive exactly once, as on a local folder.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cryptostream.archive import layout
from cryptostream.archive.core import Flush
from cryptostream.archive.store import parquet_options, prepare

log = logging.getLogger("cryptostream.archive")

_MARKER_RE = re.compile(r"\A(\d{20})\.json\Z")
_INTENT_RE = re.compile(r"\A(\d{20})\.intent\.json\Z")
_PARTITION_RE = re.compile(r"\Ap(\d{3,})\Z")


def intent_name(last: int) -> str:
    return f"{last:020d}.intent.json"


@dataclass(frozen=True)
class ObjectRoot:
    """Where the archive is on an object store: a pyarrow filesystem and the ``bucket/prefix``
    every key starts with. Paths handed around are the filesystem's (``bucket/key``); ``url``
    spells them for people (``s3://bucket/key``)."""

    fs: pafs.FileSystem
    root: str  # "bucket" or "bucket/prefix", no slash at either end
    scheme: str = "s3"

    @property
    def bucket(self) -> str:
        return self.root.split("/", 1)[0]

    def key(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def rel(self, path: str) -> str:
        return path[len(self.root) + 1 :]

    def url(self, path: str = "") -> str:
        return f"{self.scheme}://{path or self.root}"

    def files(self, rel: str = "") -> list[pafs.FileInfo]:
        """Every object under ``rel`` (recursively), sorted by path; none if there is nothing."""
        selector = pafs.FileSelector(self.key(rel), recursive=True, allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)

    def put(self, rel: str, data: bytes) -> None:
        with self.fs.open_output_stream(self.key(rel)) as out:
            out.write(data)

    def get(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.key(rel)) as src:
            return bytes(src.read())

    def delete(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.key(rel))

    def write_parquet(self, rel: str, table: pa.Table, row_group_rows: int) -> None:
        pq.write_table(
            table, self.key(rel), filesystem=self.fs, **parquet_options(row_group_rows, table)
        )

    def committed(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> the last offset of its newest commit marker."""
        out: dict[tuple[str, int], int] = {}
        for info in self.files(layout.SINK_DIR):
            parts = self.rel(info.path).split("/")
            if len(parts) != 4:
                continue
            _, topic, pdir, name = parts
            pm, mm = _PARTITION_RE.match(pdir), _MARKER_RE.match(name)
            if pm and mm:
                key = (topic, int(pm[1]))
                out[key] = max(out.get(key, -1), int(mm[1]))
        return out


def object_root(
    url: str,
    *,
    endpoint: str = "",
    region: str = "us-east-1",
    access_key_id: str = "",
    secret_access_key: str = "",
) -> ObjectRoot:
    """An ``s3://bucket[/prefix]`` URL as an :class:`ObjectRoot` (pyarrow's own S3 client:
    no extra dependency, and the same client serves the sink's PUTs and DuckDB's reads)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3://bucket[/prefix] URL: {url!r}")
    kwargs: dict[str, object] = {"region": region}
    if access_key_id:
        kwargs["access_key"] = access_key_id
        kwargs["secret_key"] = secret_access_key
    if endpoint:
        ep = urlsplit(endpoint)
        kwargs["scheme"] = ep.scheme
        kwargs["endpoint_override"] = ep.netloc
    fs = pafs.S3FileSystem(**kwargs)
    return ObjectRoot(fs, f"{parts.netloc}/{parts.path.strip('/')}".rstrip("/"))


class ObjectStore:
    """The sink's side of an archive on an object store, for one topic (see the module doc)."""

    def __init__(
        self, root: ObjectRoot, topic: str, scale: int, row_group_rows: int, *, dataset: str = ""
    ) -> None:
        self.root = root
        self.topic = topic
        self.dataset = dataset
        self.scale = scale
        self.row_group_rows = row_group_rows
        self.unrepresentable = 0

    def partition_dir(self, partition: int) -> str:
        return f"{layout.SINK_DIR}/{self.topic}/p{partition:03d}"

    def _bookkeeping(self, partition: int) -> tuple[list[int], list[int]]:
        """The partition's marker and intent offsets, each sorted."""
        markers: list[int] = []
        intents: list[int] = []
        folder = self.partition_dir(partition)
        for info in self.root.files(folder):
            name = self.root.rel(info.path)[len(folder) + 1 :]
            if m := _MARKER_RE.match(name):
                markers.append(int(m[1]))
            elif m := _INTENT_RE.match(name):
                intents.append(int(m[1]))
        return sorted(markers), sorted(intents)

    def resume(self, partition: int) -> int | None:
        """Delete what flushes killed before their commit point left behind and return the
        first offset not yet archived (None: nothing archived, start at the beginning)."""
        folder = self.partition_dir(partition)
        plan = layout.resume_plan(*self._bookkeeping(partition))
        for last in plan.uncommitted:
            rel = f"{folder}/{intent_name(last)}"
            doc = orjson.loads(self.root.get(rel))
            for final in doc["files"]:
                self.root.delete(final)
                log.warning(
                    "archive: removed an uncommitted object (its records are read again)",
                    extra={"fields": {"file.path": self.root.url(self.root.key(final))}},
                )
            self.root.delete(rel)
        for last in plan.finished:
            self.root.delete(f"{folder}/{intent_name(last)}")
        for old in plan.old_markers:
            self.root.delete(f"{folder}/{layout.marker_name(old)}")
        return plan.resume_at

    def commit(self, flush: Flush) -> list[str]:
        """Write one flush (intent, data objects, marker); return the objects' URLs."""
        folder = self.partition_dir(flush.partition)
        previous, _ = self._bookkeeping(flush.partition)
        files = prepare(self, flush)
        names = [final for final, _ in files]
        if files:
            doc = {"v": layout.SCHEMA_VERSION, "first": flush.first, "last": flush.last}
            self.root.put(
                f"{folder}/{intent_name(flush.last)}", orjson.dumps({**doc, "files": names})
            )
        for final, table in files:
            self.root.write_parquet(final, table, self.row_group_rows)
        marker = {
            "v": layout.SCHEMA_VERSION,
            "topic": self.topic,
            "partition": flush.partition,
            "first": flush.first,
            "last": flush.last,
            "rows": flush.rows,
            "files": names,
        }
        self.root.put(f"{folder}/{layout.marker_name(flush.last)}", orjson.dumps(marker))
        if files:
            self.root.delete(f"{folder}/{intent_name(flush.last)}")
        for old in previous:
            if old != flush.last:
                self.root.delete(f"{folder}/{layout.marker_name(old)}")
        return [self.root.url(self.root.key(final)) for final in names]
