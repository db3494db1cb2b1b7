"""An index's embeddings (.npy or parquet) and metadata (CSV) on disk, written a chunk at a time:
a million embeddings are 3 GB, more than an export needs to hold."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import IndexStoreError
from .store import ImageIndex

FORMATS = ("npy", "parquet")


@dataclass(frozen=True)
class IndexExport:
    rows: int  # embeddings written, one per stored image
    files: list[Path]


def export_index(index: ImageIndex, out: str | Path, fmt: str = "npy", chunk: int = 20_000) -> IndexExport:
    """Write embeddings (row i ↔ image_ids[i]) and metadata.csv (one line per file path) into `out`."""
    if fmt not in FORMATS:
        raise IndexStoreError(f"Export format {fmt!r} is not known: choose one of {', '.join(FORMATS)}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = index.catalog.image_ids()
    chunks = index.catalog.iter_embeddings(index.dim, chunk=chunk)
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        files = [out / "embeddings.parquet"]
        schema = pa.schema([("image_id", pa.int64()), ("embedding", pa.list_(pa.float32(), index.dim))])
        with pq.ParquetWriter(files[0], schema) as writer:
            for chunk_ids, vectors in chunks:
                embeddings = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), index.dim)
                writer.write_table(pa.table([pa.array(chunk_ids), embeddings], schema=schema))
    else:
        files = [out / "embeddings.npy", out / "image_ids.npy"]
        matrix = np.lib.format.open_memmap(files[0], mode="w+", dtype=np.float32, shape=(len(ids), index.dim))
        row = 0
        for chunk_ids, vectors in chunks:
            matrix[row : row + len(chunk_ids)] = vectors
            row += len(chunk_ids)
        matrix.flush()
        del matrix
        np.save(files[1], ids)
    files.append(out / "metadata.csv")
    with open(files[-1], "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "image_id", "path", "sha256", "width", "height"])
        for start in range(0, len(ids), chunk):
            chunk_ids = ids[start : start + chunk]
            records = index.catalog.images(chunk_ids)
            for row, image_id in enumerate(chunk_ids, start):
                record = records[int(image_id)]
                for path in record.paths:
                    writer.writerow([row, int(image_id), path, record.sha256, record.width, record.height])
    return IndexExport(len(ids), files)
