"""The SQLite side of an image index: what each vector is, which files hold it, and the index itself.

One row per distinct image content (`images`, id = FAISS id, embedding kept for rebuilds), one per path
(`files`, several paths may share an image), skipped files with their reason, and a change log that
lets the FAISS file catch up after a crash (`changes`: each committed batch bumps `version`).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..faults import crash_point

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY, sha256 TEXT NOT NULL UNIQUE, width INTEGER, height INTEGER,
    embedding BLOB NOT NULL, added_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, image_id INTEGER NOT NULL REFERENCES images(id), size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, added_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS files_by_image ON files(image_id);
CREATE TABLE IF NOT EXISTS skipped (path TEXT PRIMARY KEY, reason TEXT NOT NULL, size INTEGER, mtime_ns INTEGER);
CREATE TABLE IF NOT EXISTS changes (version INTEGER NOT NULL, image_id INTEGER NOT NULL, op TEXT NOT NULL);
"""


@dataclass
class FileRecord:
    path: str
    image_id: int
    size: int
    mtime_ns: int


@dataclass
class Link:
    """A file whose content is stored already, named by its hash: the commit finds the image's id. (An id looked
    up while reading ahead could be gone by then: its last file changed in a batch committed meanwhile.)"""

    path: str
    sha256: str
    size: int
    mtime_ns: int


@dataclass
class Committed:
    """What one `commit_batch` stored: the ids of new contents, and the links whose content is no longer
    stored (the caller reads those files again and encodes them)."""

    new_ids: list[int]
    unlinked: list[Link]


@dataclass
class NewImage:
    """A content to store: its hash, size, embedding (dim,) and the files (path, size, mtime_ns) holding it."""

    sha256: str
    width: int
    height: int
    embedding: np.ndarray
    files: list[tuple[str, int, int]]


@dataclass
class ImageRecord:
    id: int
    sha256: str
    width: int
    height: int
    paths: list[str]


class Catalog:
    """Thin typed wrapper over the index's SQLite database."""

    def __init__(self, path: Path, readonly: bool = False):
        uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
        self.db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        if not readonly:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    # meta ---------------------------------------------------------------------------------------
    def get_meta(self) -> dict:
        return {key: json.loads(value) for key, value in self.db.execute("SELECT key, value FROM meta")}

    def set_meta(self, **values) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                            [(k, json.dumps(v)) for k, v in values.items()])

    @property
    def version(self) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
        return json.loads(row[0]) if row else 0

    # reads --------------------------------------------------------------------------------------
    def file_record(self, path: str) -> FileRecord | None:
        row = self.db.execute("SELECT path, image_id, size, mtime_ns FROM files WHERE path=?", (path,)).fetchone()
        return FileRecord(*row) if row else None

    def all_files(self) -> dict[str, FileRecord]:
        return {r[0]: FileRecord(*r) for r in self.db.execute("SELECT path, image_id, size, mtime_ns FROM files")}

    def image_id_for_hash(self, sha256: str) -> int | None:
        row = self.db.execute("SELECT id FROM images WHERE sha256=?", (sha256,)).fetchone()
        return row[0] if row else None

    def _rows_for_ids(self, sql: str, ids: Iterable[int]) -> Iterator[tuple]:
        """Rows of `sql`, whose `{marks}` stands for the id list."""
        return self._rows_for_values(sql, [int(i) for i in ids])

    def _rows_for_values(self, sql: str, values: list) -> Iterator[tuple]:
        """Rows of `sql`, whose `{marks}` stands for `values`, 500 a query (SQLite's variable limit): an index
        build's batch is looked up in a few queries, not one per file."""
        for start in range(0, len(values), 500):
            chunk = values[start : start + 500]
            yield from self.db.execute(sql.format(marks=",".join("?" * len(chunk))), chunk)

    def images(self, ids: Iterable[int]) -> dict[int, ImageRecord]:
        ids = list(ids)
        found = {row[0]: ImageRecord(*row, paths=[]) for row in self._rows_for_ids(
            "SELECT id, sha256, width, height FROM images WHERE id IN ({marks})", ids)}
        for image_id, path in self._rows_for_ids(
                "SELECT image_id, path FROM files WHERE image_id IN ({marks}) ORDER BY path", ids):
            found[image_id].paths.append(path)
        return found

    def count_images(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def count_files(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM files").fetchone()[0]

    def skipped(self) -> list[tuple[str, str]]:
        return list(self.db.execute("SELECT path, reason FROM skipped ORDER BY path"))

    def iter_embeddings(self, dim: int, chunk: int = 20_000, after_id: int = -1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(ids (n,), vectors (n, dim)) in id order, a chunk at a time."""
        while True:
            rows = self.db.execute("SELECT id, embedding FROM images WHERE id > ? ORDER BY id LIMIT ?",
                                   (after_id, chunk)).fetchall()
            if not rows:
                return
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), dim)
            yield ids, vectors
            after_id = int(ids[-1])

    def image_ids(self) -> np.ndarray:
        """(n,) int64, every stored image id in increasing order."""
        return np.fromiter((r[0] for r in self.db.execute("SELECT id FROM images ORDER BY id")), dtype=np.int64)

    def sample_embeddings(self, dim: int, count: int, seed: int = 0) -> np.ndarray:
        """Up to `count` stored vectors (count, dim) drawn at random (IVF training, tuning queries)."""
        ids = self.image_ids()
        if len(ids) > count:
            ids = np.sort(np.random.default_rng(seed).choice(ids, size=count, replace=False))
        return self.embeddings_for(ids, dim)

    def embeddings_for(self, ids: Iterable[int], dim: int) -> np.ndarray:
        """(len(ids), dim) float32, in the order of `ids`."""
        ids = [int(i) for i in ids]
        by_id = self._embeddings_by_id(ids)
        return np.stack([by_id[i] for i in ids]) if ids else np.zeros((0, dim), np.float32)

    def stored_embeddings(self, ids: Iterable[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids (m,) int64, vectors (m, dim) float32): those of `ids` still stored, in their order."""
        ids = [int(i) for i in ids]
        by_id = self._embeddings_by_id(ids)
        present = [i for i in ids if i in by_id]
        vectors = np.stack([by_id[i] for i in present]) if present else np.zeros((0, dim), np.float32)
        return np.asarray(present, dtype=np.int64), vectors

    def _embeddings_by_id(self, ids: list[int]) -> dict[int, np.ndarray]:
        return {image_id: np.frombuffer(blob, dtype=np.float32) for image_id, blob in self._rows_for_ids(
            "SELECT id, embedding FROM images WHERE id IN ({marks})", ids)}

    def changes_since(self, version: int) -> list[tuple[int, int, str]]:
        return list(self.db.execute("SELECT version, image_id, op FROM changes WHERE version > ? ORDER BY rowid",
                                    (version,)))

    # writes: each call is one transaction and bumps the version --------------------------------
    def commit_batch(self, new_images: Iterable[NewImage] = (), links: Iterable[Link] = (),
                     removed_paths: Iterable[str] = (), skipped: Iterable[tuple[str, str, int, int]] = ()) -> Committed:
        """Atomically: store new contents (once per hash) with their files, link files to stored contents,
        drop paths, record skipped files (a skipped file no longer holds what it held), remove images no file
        points at; log the changes."""
        now = time.time()
        new_images, links, removed_paths, skipped = list(new_images), list(links), list(removed_paths), list(skipped)
        # a path given twice (shard rows of one file before and after an edit) holds its last content; the
        # earlier one, held by no file, is not stored
        holder = {path: n for n, image in enumerate(new_images) for path, *_ in image.files}
        new_images = [replace(image, files=[file for file in image.files if holder[file[0]] == n])
                      for n, image in enumerate(new_images)]
        new_images = [image for image in new_images if image.files]
        cursor = self.db.cursor()
        cursor.execute("BEGIN IMMEDIATE")
        try:
            version = self.version + 1
            files, new_ids = [], []
            hashes = {image.sha256 for image in new_images} | {link.sha256 for link in links}
            stored = dict(self._rows_for_values("SELECT sha256, id FROM images WHERE sha256 IN ({marks})",
                                                list(hashes)))
            for image in new_images:
                image_id = stored.get(image.sha256)
                if image_id is None:
                    cursor.execute("INSERT INTO images (sha256, width, height, embedding, added_at) VALUES (?,?,?,?,?)",
                                   (image.sha256, image.width, image.height,
                                    np.asarray(image.embedding, np.float32).tobytes(), now))
                    image_id = stored[image.sha256] = cursor.lastrowid
                    new_ids.append(image_id)
                files += [FileRecord(path, image_id, size, mtime) for path, size, mtime in image.files]
            unlinked = [link for link in links if link.sha256 not in stored]
            files += [FileRecord(link.path, stored[link.sha256], link.size, link.mtime_ns)
                      for link in links if link.sha256 in stored]
            cursor.executemany("INSERT INTO changes VALUES (?, ?, 'add')", [(version, i) for i in new_ids])
            crash_point("catalog-images")
            dropped = removed_paths + [path for path, *_ in skipped]
            paths = dropped + [f.path for f in files]
            touched = {image_id for _, image_id in self._rows_for_values(
                "SELECT path, image_id FROM files WHERE path IN ({marks})", list(set(paths)))}
            cursor.executemany("DELETE FROM files WHERE path=?", [(p,) for p in dropped])
            cursor.executemany("INSERT OR REPLACE INTO files VALUES (?,?,?,?,?)",
                               [(f.path, f.image_id, f.size, f.mtime_ns, now) for f in files])
            crash_point("catalog-files")
            cursor.executemany("DELETE FROM skipped WHERE path=?", [(p,) for p in paths])
            cursor.executemany("INSERT OR REPLACE INTO skipped VALUES (?,?,?,?)", skipped)
            for image_id in touched:
                if cursor.execute("SELECT 1 FROM files WHERE image_id=? LIMIT 1", (image_id,)).fetchone() is None:
                    cursor.execute("DELETE FROM images WHERE id=?", (image_id,))
                    cursor.execute("INSERT INTO changes VALUES (?, ?, 'remove')", (version, image_id))
            cursor.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (json.dumps(version),))
            crash_point("sqlite-commit")
            cursor.execute("COMMIT")
        except BaseException:
            cursor.execute("ROLLBACK")
            raise
        return Committed(new_ids, unlinked)

    def clear_skipped_under(self, folder: str) -> None:
        self.db.execute("DELETE FROM skipped WHERE substr(path, 1, ?) = ?", (len(folder), folder))

    def forget_changes(self, up_to_version: int) -> None:
        self.db.execute("DELETE FROM changes WHERE version <= ?", (up_to_version,))
