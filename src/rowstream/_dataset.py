"""A dataset: one folder, one part file per partition, and a manifest.

::

    orders/
      part-00000.parquet        one per partition, written atomically (temp file + rename)
      part-00001.parquet
      ...
      _rowstream_manifest.json  what was read, from where, at which point in time, and how far

DuckDB (``read_parquet('orders/*.parquet')``), pyarrow (``pyarrow.dataset.dataset('orders')``),
polars (``scan_parquet('orders/*.parquet')``) and Spark read the folder as one table: the
manifest starts with ``_`` and unfinished parts with ``.``, which they skip, and every part has
the same columns (CSV parts each have the header).

The manifest is JSON, rewritten atomically after every finished part: the database (URL
without its password), the statement, the snapshots the parts were read at, and per part its
bounds, state, rows, bytes, sha256 and timestamps. ``resume`` skips parts that are done (state,
file present, size as recorded) and redoes the rest. When they are read at a new snapshot
(the first one was released with the export that took it), the manifest records which parts
come from which snapshot and :func:`point_in_time_warning` says so.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

from ._atomic import TEMP_SUFFIX, AtomicFile
from ._exceptions import ConfigurationError, SinkError
from ._partition import Partition

__all__ = [
    "MANIFEST_NAME",
    "Manifest",
    "PartRecord",
    "finished_parts",
    "merge_parts",
    "part_name",
    "point_in_time_warning",
    "prepare_directory",
    "read_manifest",
    "sha256_of",
    "write_manifest",
]

MANIFEST_NAME = "_rowstream_manifest.json"
MANIFEST_VERSION = 1
_SUFFIXES = {"csv": ".csv", "jsonl": ".jsonl", "parquet": ".parquet"}

PartState = Literal["pending", "done"]


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def part_name(partition_id: int, fmt: str, compression: str | None = None) -> str:
    """The file name of a partition's part.

    >>> part_name(7, "parquet")
    'part-00007.parquet'
    >>> part_name(12, "csv", "gzip")
    'part-00012.csv.gz'
    """
    if fmt not in _SUFFIXES:
        raise ConfigurationError(f"unknown format {fmt!r}: choose one of {', '.join(_SUFFIXES)}")
    gz = ".gz" if compression == "gzip" and fmt != "parquet" else ""
    return f"part-{partition_id:05d}{_SUFFIXES[fmt]}{gz}"


@dataclass
class PartRecord:
    """One part in the manifest."""

    id: int
    file: str
    bounds: dict[str, Any]
    state: PartState = "pending"
    rows: int | None = None
    bytes: int | None = None
    sha256: str | None = None
    #: Index into ``Manifest.snapshots``: the point in time the part was read at.
    snapshot: int | None = None
    started_at: str | None = None
    finished_at: str | None = None

    def partition(self) -> Partition:
        b = self.bounds
        return Partition(self.id, b["kind"], b.get("lower"), b.get("upper"), b.get("column"))


@dataclass
class Manifest:
    """The manifest of a dataset (see the module docstring)."""

    database: str
    table: str | None
    statement: str
    format: str
    compression: str | None
    plan: dict[str, Any]
    parts: list[PartRecord]
    snapshots: list[dict[str, Any]] = field(default_factory=list)
    state: Literal["running", "complete"] = "running"
    created_at: str = field(default_factory=now)
    updated_at: str = field(default_factory=now)
    version: int = MANIFEST_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        if data.get("version") != MANIFEST_VERSION:
            raise ConfigurationError(
                f"the manifest has version {data.get('version')!r}; this rowstream reads "
                f"version {MANIFEST_VERSION}: export again into an empty directory"
            )
        data["parts"] = [PartRecord(**p) for p in data["parts"]]
        return cls(**data)

    @property
    def done(self) -> list[PartRecord]:
        return [p for p in self.parts if p.state == "done"]

    @property
    def rows(self) -> int:
        return sum(p.rows or 0 for p in self.done)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Write the manifest atomically: a reader sees the old one or the new one, whole."""
    manifest.updated_at = now()
    with AtomicFile(directory / MANIFEST_NAME) as out:
        out.write(manifest.to_json().encode())


def read_manifest(directory: Path) -> Manifest | None:
    """The dataset's manifest, or None when the directory has none."""
    path = directory / MANIFEST_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SinkError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    try:
        return Manifest.from_json(text)
    except (ValueError, TypeError, KeyError) as exc:
        raise SinkError(
            f"{str(path)!r} is not a rowstream manifest ({exc}): export into an empty directory"
        ) from None


def prepare_directory(directory: Path, *, resume: bool) -> Manifest | None:
    """Check (and create) the dataset's directory; on resume, its manifest.

    A directory with a dataset needs ``resume``; one with other files is refused, so a typo
    cannot mix parts into someone's folder. Temporary files a killed export left are removed.
    """
    if directory.exists() and not directory.is_dir():
        raise SinkError(f"cannot write a dataset to {str(directory)!r}: it is a file")
    if not directory.exists():
        if not directory.parent.is_dir():
            raise SinkError(
                f"cannot write a dataset to {str(directory)!r}: the directory "
                f"{str(directory.parent)!r} does not exist; create it first"
            )
        if resume:
            raise ConfigurationError(
                f"nothing to resume: {str(directory)!r} does not exist (leave out --resume)"
            )
        try:
            directory.mkdir()
        except OSError as exc:
            raise SinkError(f"cannot create {str(directory)!r}: {exc.strerror or exc}") from None
        return None
    manifest = read_manifest(directory)
    leftovers = [p for p in directory.iterdir() if p.name.endswith(TEMP_SUFFIX)]
    others = [p for p in directory.iterdir() if p.name != MANIFEST_NAME and p not in leftovers]
    if manifest is None:
        if resume:
            raise ConfigurationError(
                f"nothing to resume: {str(directory)!r} has no {MANIFEST_NAME}"
            )
        if others:
            raise SinkError(
                f"cannot write a dataset to {str(directory)!r}: it holds other files; give an "
                "empty or new directory"
            )
        return None
    if not resume:
        state = "is complete" if manifest.state == "complete" else "is unfinished"
        raise SinkError(
            f"{str(directory)!r} holds a dataset that {state}: pass --resume (resume=True) to "
            "finish it, or give an empty or new directory"
        )
    for path in leftovers:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return manifest


def check_same_export(manifest: Manifest, *, database: str, statement: str, fmt: str) -> None:
    """Refuse to resume a dataset with another source, statement or format."""
    for what, old, new in (
        ("database", manifest.database, database),
        ("statement", manifest.statement, statement),
        ("format", manifest.format, fmt),
    ):
        if old != new:
            raise ConfigurationError(
                f"cannot resume: the dataset's {what} is {old!r}, not {new!r}; resume with the "
                "same arguments, or export into an empty directory"
            )


def finished_parts(directory: Path, manifest: Manifest) -> set[int]:
    """Ids of the parts that are done: state, file present, size as recorded."""
    done = set()
    for part in manifest.parts:
        if part.state != "done":
            continue
        try:
            size = (directory / part.file).stat().st_size
        except FileNotFoundError:
            continue
        if size == part.bytes:
            done.add(part.id)
    return done


def sha256_of(path: Path) -> str:
    """The file's sha256 (hex), read in chunks."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def point_in_time_warning(manifest: Manifest) -> str | None:
    """One line when the dataset is not one consistent point in time, else None."""
    used = sorted({p.snapshot for p in manifest.done if p.snapshot is not None})
    inconsistent = [i for i in used if not manifest.snapshots[i].get("consistent")]
    if len(used) > 1:
        groups = "; ".join(
            f"parts {_ranges([p.id for p in manifest.done if p.snapshot == i])} at "
            f"{manifest.snapshots[i].get('taken_at')}"
            for i in used
        )
        moved = (
            # A row updated in between has a new version in another block: it can show in a
            # part of each snapshot, or in neither. Key ranges keep each key in one part.
            "rows updated in between may be missing or appear twice"
            if manifest.plan.get("method") == "ctid"
            else "each row shows as of its part's snapshot (one whose partition key changed in "
            "between may be missing or appear twice)"
        )
        return (
            f"the dataset is not one point in time: its first snapshot was released before the "
            f"resume ({groups}); {moved}; export again without --resume for one snapshot"
        )
    if inconsistent:
        return f"the parts are not one consistent snapshot: {manifest.snapshots[used[0]]['note']}"
    return None


def merge_parts(directory: Path, target: Path) -> tuple[int, int]:
    """Write a complete dataset's parts into one file at ``target`` (atomically); returns
    (rows, bytes). The parts are left as they are.

    CSV keeps one header, JSONL is the parts end to end (gzip'd parts are decompressed and the
    file compressed once), Parquet is the parts' row groups through one writer (one row group
    in memory at a time), in the schema of the first part with rows.
    """
    manifest = read_manifest(directory)
    if manifest is None or manifest.state != "complete":
        raise SinkError(
            f"cannot merge {str(directory)!r}: the dataset is not complete (resume it first)"
        )
    files = [directory / p.file for p in sorted(manifest.parts, key=lambda p: p.id)]
    target_file = AtomicFile(target)
    with target_file as out:
        if manifest.format == "parquet":
            _merge_parquet(files, out, manifest.compression or "zstd")
        else:
            _merge_text(files, out, manifest.format, gzipped=manifest.compression == "gzip")
    return manifest.rows, target_file.size


def _merge_text(files: list[Path], out: BinaryIO, fmt: str, *, gzipped: bool) -> None:
    import gzip
    import shutil

    # mtime=0: the same rows give the same bytes, as a single export writes them.
    sink: BinaryIO = gzip.GzipFile(fileobj=out, mode="wb", mtime=0) if gzipped else out  # type: ignore[assignment]
    for i, path in enumerate(files):
        with gzip.open(path, "rb") if gzipped else path.open("rb") as part:
            if fmt == "csv" and i > 0:
                _skip_csv_record(part)
            shutil.copyfileobj(part, sink, 1024 * 1024)
    if gzipped:
        sink.close()


def _skip_csv_record(part: Any) -> None:
    """Read past the header: one CSV record, which ends at a newline outside quotes (quotes
    inside a quoted name are doubled, so they come in pairs)."""
    quotes = 0
    while line := part.readline():
        quotes += line.count(b'"')
        if quotes % 2 == 0:
            return


def _merge_parquet(files: list[Path], out: BinaryIO, compression: str) -> None:
    import pyarrow.parquet as pq

    from ._arrow import ArrowColumn
    from ._sinks._parquet import ParquetSink

    opened = [pq.ParquetFile(path) for path in files]
    try:
        with_rows = [f for f in opened if f.metadata.num_rows > 0] or opened[:1]
        schema = with_rows[0].schema_arrow
        columns = [ArrowColumn(f.name, f.type) for f in schema]
        sink = ParquetSink(cast(BinaryIO, _Unclosable(out)), columns, compression=compression)
        sink.begin(schema.names)
        try:
            for path, part in zip(files, opened, strict=True):
                if part.metadata.num_rows == 0:
                    continue
                for group in range(part.num_row_groups):
                    table = part.read_row_group(group)
                    if table.schema != schema:
                        try:
                            table = table.cast(schema)
                        except (ValueError, TypeError, NotImplementedError) as exc:
                            raise SinkError(
                                f"cannot merge {path.name}: its columns differ from the first "
                                f"part's ({exc}); read the folder as a dataset instead"
                            ) from None
                    for batch in table.to_batches():
                        sink.write_batch(batch)
                    del table
        except BaseException:
            sink.abort()
            raise
        sink.finish()
    finally:
        for part in opened:
            part.close()


class _Unclosable:
    """The atomic file as pyarrow sees it: its writer closes its file, which must stay open
    until the atomic file has fsynced it."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._written = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._out.write(data)
        self._written += len(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()

    def tell(self) -> int:
        return self._written

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        pass


def _ranges(ids: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    out: list[str] = []
    for i in sorted(ids):
        if out and out[-1].split("-")[-1] == str(i - 1):
            start = out[-1].split("-")[0]
            out[-1] = f"{start}-{i}"
        else:
            out.append(str(i))
    return ", ".join(out)
