"""Embedding shards: Parquet files of (content hash, path, size, mtime, width, height, vector) rows, written by
the distributed build (engine.index.distributed) or by any other tool, and ingested into an index.

The file's key-value metadata names the model: `studio.model` (its name) and `studio.fingerprint` (JSON: the
model's embedding of `listing.FINGERPRINT_TEXT`, which any tool can compute with the same checkpoint). Ingest
refuses shards whose fingerprint or dimension differ from the index's. A row may carry `error` (why the file
could not be read) instead of a vector: it is recorded as skipped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import IndexStoreError
from ..faults import crash_point
from ..model.encode import ProgressCallback
from .catalog import NewImage
from .listing import FINGERPRINT_TEXT
from .store import ImageIndex
from .vectors import fsync_directory

COLUMNS = ("sha256", "path", "size", "mtime_ns", "width", "height", "vector")  # required; `error` optional
MODEL_KEY, FINGERPRINT_KEY = b"studio.model", b"studio.fingerprint"


def shard_schema(dim: int) -> pa.Schema:
    return pa.schema([("sha256", pa.string()), ("path", pa.string()), ("size", pa.int64()),
                      ("mtime_ns", pa.int64()), ("width", pa.int32()), ("height", pa.int32()),
                      ("vector", pa.list_(pa.float32(), dim)), ("error", pa.string())])


@dataclass
class ShardRows:
    """Columns of one shard, a row per file; `vectors` (n, dim) float32 with zero rows where `errors` is set."""

    sha256: list[str | None]
    paths: list[str]
    sizes: list[int]
    mtimes_ns: list[int]
    widths: list[int]
    heights: list[int]
    vectors: np.ndarray
    errors: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)


def write_shard(rows: ShardRows, path: Path, model_name: str, fingerprint: list[float]) -> Path:
    """Write `rows` as one Parquet shard atomically (temporary file, fsync, rename)."""
    dim = rows.vectors.shape[1]
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(rows.vectors.astype(np.float32).reshape(-1)), dim)
    errors = rows.errors or [None] * len(rows)
    table = pa.table([pa.array(rows.sha256, pa.string()), pa.array(rows.paths, pa.string()),
                      pa.array(rows.sizes, pa.int64()), pa.array(rows.mtimes_ns, pa.int64()),
                      pa.array(rows.widths, pa.int32()), pa.array(rows.heights, pa.int32()), vectors,
                      pa.array(errors, pa.string())], schema=shard_schema(dim))
    table = table.replace_schema_metadata({MODEL_KEY: model_name.encode(),
                                           FINGERPRINT_KEY: json.dumps(fingerprint).encode()})
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    crash_point("shard-before-rename")
    os.replace(tmp, path)
    fsync_directory(path.parent)
    return path


def read_shard(path: Path) -> tuple[ShardRows, dict[bytes, bytes]]:
    """A shard's rows and its metadata; IndexStoreError for a file that is not a complete shard."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise IndexStoreError(f"{path.name}: not a readable Parquet file ({str(error)[:120]})") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise IndexStoreError(f"{path.name}: missing column(s) {', '.join(missing)}; a shard has "
                              f"{', '.join(COLUMNS)} (and optionally error)")
    column = lambda name: table.column(name).to_pylist()  # noqa: E731
    vector_type = table.schema.field("vector").type
    dim = vector_type.list_size if isinstance(vector_type, pa.FixedSizeListType) else None
    flat = table.column("vector").combine_chunks()
    errors = column("error") if "error" in table.column_names else [None] * table.num_rows
    if dim is None:  # a variable-length list column from another tool: every present vector must agree
        lengths = {len(v) for v, e in zip(column("vector"), errors) if v is not None and not e}
        if len(lengths) > 1:
            raise IndexStoreError(f"{path.name}: vectors of different lengths {sorted(lengths)}")
        dim = lengths.pop() if lengths else 0
        vectors = np.array([v if v is not None and not e else [0.0] * dim
                            for v, e in zip(column("vector"), errors)], dtype=np.float32).reshape(-1, dim)
    else:
        values = flat.flatten().to_numpy(zero_copy_only=False) if table.num_rows else np.zeros(0, np.float32)
        vectors = np.nan_to_num(values.astype(np.float32)).reshape(table.num_rows, dim)
    rows = ShardRows(column("sha256"), column("path"), column("size"), column("mtime_ns"), column("width"),
                     column("height"), vectors, errors)
    return rows, table.schema.metadata or {}


def shard_files(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).glob("*.parquet") if p.is_file())


def check_shard_model(path: Path, metadata: dict[bytes, bytes], dim: int, index: ImageIndex) -> None:
    """Refuse a shard made with another model than the index's (by fingerprint) or of another dimension."""
    name = index.path.name
    if dim and dim != index.dim:
        raise IndexStoreError(f"{path.name}: {dim}-d vectors, index {name!r} holds {index.dim}-d ones "
                              f"({index.meta['model']}).")
    if FINGERPRINT_KEY not in metadata:
        raise IndexStoreError(
            f"{path.name}: no '{FINGERPRINT_KEY.decode()}' metadata, so the model that made it is unknown. Add the "
            f"model's embedding of the text {FINGERPRINT_TEXT!r} as JSON "
            "(engine.index.shards.write_shard does this).")
    theirs = np.asarray(json.loads(metadata[FINGERPRINT_KEY]), dtype=np.float32)
    ours = np.asarray(index.meta["fingerprint"], dtype=np.float32)
    if theirs.shape != ours.shape or float(theirs @ ours) < 0.995:
        made_with = metadata.get(MODEL_KEY, b"another model").decode()
        raise IndexStoreError(f"{path.name}: made with {made_with}, not with {index.meta['model']} that built "
                              f"index {name!r}; its vectors cannot be mixed in.")


@dataclass
class IngestSummary:
    shards: int = 0
    rows: int = 0
    encoded: int = 0  # new image contents stored (their vectors came from the shards)
    linked: int = 0  # files whose content was already stored
    unchanged: int = 0  # files already stored with the same size and mtime
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def ingest_rows(index: ImageIndex, rows: ShardRows, summary: IngestSummary, batch: int = 2048) -> None:
    """Store one shard's rows in an open, writable index, a transaction per `batch` rows."""
    catalog = index.catalog
    for start in range(0, len(rows), batch):
        new_images, failures = [], []
        for i in range(start, min(start + batch, len(rows))):
            path, size, mtime = rows.paths[i], int(rows.sizes[i]), int(rows.mtimes_ns[i])
            record = catalog.file_record(path)
            if record and (record.size, record.mtime_ns) == (size, mtime):
                summary.unchanged += 1
            elif rows.errors[i]:
                failures.append((path, rows.errors[i], size, mtime))
                summary.skipped.append((path, rows.errors[i]))
            else:  # a content stored already is linked by the commit (the shard's vector is not used)
                new_images.append(NewImage(rows.sha256[i], int(rows.widths[i]), int(rows.heights[i]),
                                           rows.vectors[i], [(path, size, mtime)]))
        stored = catalog.commit_batch(new_images, skipped=failures).new_ids
        summary.encoded += len(stored)
        summary.linked += len(new_images) - len(stored)
        index.sync()


def ingest_shards(index: ImageIndex, shards: list[Path], progress: ProgressCallback | None = None) -> IngestSummary:
    """Add every shard's rows to `index` (already stored files are left as they are), then re-plan and save."""
    summary = IngestSummary()
    checked = []
    for path in shards:  # every shard is checked before any is stored
        rows, metadata = read_shard(path)
        check_shard_model(path, metadata, rows.vectors.shape[1] if len(rows) else 0, index)
        checked.append(path)
    for done, path in enumerate(checked, start=1):
        rows, _ = read_shard(path)
        ingest_rows(index, rows, summary)
        summary.shards += 1
        summary.rows += len(rows)
        if progress:
            progress(done, len(checked))
    index.replan()
    index.save()
    return summary


def written_paths(folder: Path) -> set[str]:
    """Every file path recorded in the shards of `folder`; temporary files left by a crash are removed."""
    for leftover in Path(folder).glob("*.parquet.tmp"):
        leftover.unlink(missing_ok=True)
    return {path for shard in shard_files(folder) for path in read_shard(shard)[0].paths}
