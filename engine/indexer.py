"""Building an index from a photo folder, incrementally and without losing an image.

Unchanged files (same size and mtime) are skipped; new or changed files are hashed, and content already
stored is linked rather than encoded again; deleted files are removed. Files are read, hashed and
decoded in a thread pool ahead of the model. Each encoded batch is one SQLite transaction.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .catalog import Catalog, FileRecord, NewImage
from .encode import ProgressCallback, embed_pixel_batch, ordered_parallel_map
from .errors import ImageReadError, IndexStoreError
from .faults import crash_point
from .imageindex import ImageIndex
from .images import IMAGE_EXTENSIONS, decode_image_bytes, read_file_bytes
from .models import LoadedModel
from .preprocess import PreparedImage


@dataclass
class FileState:
    path: str
    size: int
    mtime_ns: int


@dataclass
class BuildSummary:
    name: str
    folder: str
    scanned: int = 0
    unchanged: int = 0
    encoded: int = 0  # new image contents embedded
    linked: int = 0  # files whose content was already stored (duplicates, renames, touched files)
    removed: int = 0  # files gone from the folder
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    images: int = 0
    files: int = 0
    index_type: str = ""
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.encoded / self.seconds if self.seconds else 0.0

    def describe(self) -> str:
        lines = [f"{self.name}: {self.scanned} files scanned in {self.seconds:.1f} s — {self.encoded} encoded "
                 f"({self.rate:.1f}/s), {self.linked} linked to stored content, {self.unchanged} unchanged, "
                 f"{self.removed} removed, {len(self.skipped)} skipped; index holds {self.images} images "
                 f"({self.files} files), {self.index_type}"]
        lines += [f"  skipped {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


def scan_folder(folder: Path) -> tuple[list[FileState], list[tuple[str, str]]]:
    """Image files under `folder` (recursively, symlinked files followed) and unusable entries."""
    found, problems = [], []

    def on_error(error: OSError):
        problems.append((error.filename or str(folder), f"cannot be listed ({error.strerror})"))

    for root, dirs, names in os.walk(folder, onerror=on_error):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                problems.append((path, "broken symbolic link"))
                continue
            except OSError as error:
                problems.append((path, f"cannot be read ({error.strerror})"))
                continue
            found.append(FileState(path, stat.st_size, stat.st_mtime_ns))
    return found, problems


@dataclass
class _Read:
    state: FileState
    sha256: str | None = None
    image: PreparedImage | None = None
    known_id: int | None = None
    failure: str | None = None


def _read(model: LoadedModel, lookup: Callable[[str], int | None], state: FileState) -> _Read:
    try:
        data, sha = read_file_bytes(state.path)
        known = lookup(sha)
        if known is not None:
            return _Read(state, sha, known_id=known)
        return _Read(state, sha, image=model.image_preprocessor(decode_image_bytes(data, state.path)))
    except ImageReadError as error:
        return _Read(state, failure=error.reason)


def build_index(
    model: LoadedModel,
    folder: str | Path,
    name: str,
    index_dir: str | Path | None = None,
    batch_size: int = 32,
    progress: ProgressCallback | None = None,
    factory: str | None = None,
    save_every_seconds: float = 60.0,
    workers: int | None = None,
) -> BuildSummary:
    """Create or update index `name` from `folder`; safe to kill at any moment and run again."""
    start = time.perf_counter()
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise IndexStoreError(f"{folder}: not a folder")
    root = root.absolute()
    summary = BuildSummary(name=name, folder=str(root))
    with ImageIndex.create(name, model, index_dir, factory=factory) as index:
        catalog = index.catalog
        states, problems = scan_folder(root)
        summary.scanned = len(states) + len(problems)
        known = {path: record for path, record in catalog.all_files().items()
                 if path.startswith(str(root) + os.sep)}
        if not states and not problems and not known:
            raise IndexStoreError(f"{folder}: no image files found ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
        seen = {s.path for s in states} | {p for p, _ in problems}
        gone = [path for path in known if path not in seen]
        todo = []
        for state in states:
            record = known.get(state.path)
            if record and (record.size, record.mtime_ns) == (state.size, state.mtime_ns):
                summary.unchanged += 1
            else:
                todo.append(state)
        catalog.clear_skipped_under(str(root) + os.sep)  # every skipped file is retried and re-recorded
        summary.skipped += problems
        if gone or problems:
            catalog.commit_batch(removed_paths=gone, skipped=[(p, r, None, None) for p, r in problems])
            summary.removed = len(gone)

        total, done = len(todo), 0
        pending: list[_Read] = []
        links: list[FileRecord] = []
        failures: list[tuple[str, str, int, int]] = []
        last_save = time.monotonic()

        def commit():
            nonlocal last_save
            new_images = []
            if pending:
                vectors = embed_pixel_batch(model, [r.image for r in pending])
                crash_point("encode")
                new_images = [NewImage(r.sha256, r.image.grid.original_width, r.image.grid.original_height, vector,
                                       [(r.state.path, r.state.size, r.state.mtime_ns)])
                              for r, vector in zip(pending, vectors)]
            if new_images or links or failures:
                stored = catalog.commit_batch(new_images, links, skipped=failures)
                summary.encoded += len(stored)
                summary.linked += len(new_images) - len(stored)  # same content seen earlier in this run
            pending.clear(), links.clear(), failures.clear()
            index.sync()
            if time.monotonic() - last_save > save_every_seconds:
                index.save()
                last_save = time.monotonic()

        # worker threads look hashes up through their own read-only connection, one at a time
        reader, reader_lock = Catalog(index.path / "catalog.sqlite", readonly=True), threading.Lock()

        def lookup(sha256: str) -> int | None:
            with reader_lock:
                return reader.image_id_for_hash(sha256)

        try:
            for item in ordered_parallel_map(lambda s: _read(model, lookup, s), todo, workers):
                done += 1
                if item.failure:
                    failures.append((item.state.path, item.failure, item.state.size, item.state.mtime_ns))
                    summary.skipped.append((item.state.path, item.failure))
                elif item.known_id is not None:
                    links.append(FileRecord(item.state.path, item.known_id, item.state.size, item.state.mtime_ns))
                    summary.linked += 1
                else:
                    pending.append(item)
                if len(pending) >= batch_size or len(links) + len(failures) >= 4 * batch_size:
                    commit()
                if progress:
                    progress(done, total)
            commit()
        finally:
            reader.close()
        index.replan()
        index.save()
        info = index.info()
        summary.images, summary.files, summary.index_type = info.images, info.files, info.index_type
    summary.seconds = time.perf_counter() - start
    return summary
