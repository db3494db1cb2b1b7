"""Building an index from a photo folder, incrementally and without losing an image.

Unchanged files (same size and mtime) are skipped; new or changed files are hashed, and content already
stored is linked rather than encoded again; deleted files are removed. Files are read, hashed and
decoded in a thread pool ahead of the model; on a GPU with torchvision, JPEGs are decoded by the GPU
instead (model/device_decode.py), in a thread of its own, while the batch before is encoded and the one
before that stored. Each encoded batch is one SQLite transaction.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ImageReadError, IndexStoreError
from ..faults import crash_point
from ..model.device_decode import (DeviceJpeg, DevicePrepared, JpegDecoder, device_decoder, device_jpeg,
                                   prepare_what_decodes)
from ..model.encode import (PendingVectors, ProgressCallback, decode_target, ordered_parallel_map,
                            start_pixel_batch)
from ..model.images import IMAGE_EXTENSIONS, FileState, decode_image_bytes, read_file_bytes, scan_folder
from ..model.loading import LoadedModel
from ..model.preprocess import PreparedImage
from .catalog import Catalog, Link, NewImage
from .listing import CATALOG, index_exists
from .store import ImageIndex, remove_index

log = logging.getLogger(__name__)


@dataclass
class BuildSummary:
    """What one build did, in counts; `skipped` lists (path, reason)."""

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
        """New images encoded per second."""
        return self.encoded / self.seconds if self.seconds else 0.0


@dataclass
class _Batch:
    """What one transaction stores: new images (perhaps still being decoded, or their vectors still on the
    way), links, failures."""

    reads: list["_Read"]
    links: list[Link]
    failures: list[tuple[str, str, int, int]]
    decoding: Future[DevicePrepared | None] | None = None  # its JPEGs, decoded by the device's thread
    vectors: PendingVectors | None = None


@dataclass
class _Read:
    state: FileState
    sha256: str | None = None
    image: PreparedImage | None = None
    jpeg: DeviceJpeg | None = None  # to be decoded on the device, by the decoding thread
    stored: bool = False  # its content is stored already: linked by the commit, not encoded
    failure: str | None = None


class FolderBuild:
    """One build of `root` into an open, writable index: plan the changes, then read, encode and commit."""

    def __init__(self, model: LoadedModel, index: ImageIndex, root: Path, summary: BuildSummary,
                 batch_size: int, save_every_seconds: float, decoder: JpegDecoder | None = None):
        self.model, self.index, self.root, self.summary = model, index, root, summary
        self.batch_size, self.save_every_seconds, self.decoder = batch_size, save_every_seconds, decoder
        self.pending: list[_Read] = []
        self.links: list[Link] = []
        self.unlinked: list[FileState] = []  # linked to a content removed meanwhile: to be read and encoded
        self.failures: list[tuple[str, str, int, int]] = []
        # On a GPU three batches are under way at once: one decoded in a thread of its own, the one before
        # encoded by the device, and the one before that stored by this thread.
        self.being_decoded: _Batch | None = None
        self.in_flight: _Batch | None = None
        self.decode_pool: ThreadPoolExecutor | None = None  # the one decoding thread
        self.decode_device = model.device
        self.last_save = time.monotonic()

    def plan(self) -> list[FileState]:
        """Scan the folder, commit removals and unusable entries, return the files to read."""
        catalog, prefix = self.index.catalog, str(self.root) + os.sep
        scan = scan_folder(self.root)
        states, problems = scan.files, scan.problems
        self.summary.scanned = len(states) + len(problems)
        known = {path: record for path, record in catalog.all_files().items() if path.startswith(prefix)}
        if not states and not problems and not known:
            raise IndexStoreError(f"{self.root}: no image files found ({', '.join(sorted(IMAGE_EXTENSIONS))}).")
        seen = {s.path for s in states} | {p for p, _ in problems}
        # a folder that cannot be listed now (permissions, a disconnected mount) keeps its files: not gone
        unlisted = {folder: folder.rstrip(os.sep) + os.sep for folder in scan.unlisted}
        unseen = [path for path in known if path not in seen]
        kept = {folder: sum(path.startswith(under) for path in unseen) for folder, under in unlisted.items()}
        problems = [(path, f"{reason}: its {kept[path]} indexed file(s) kept as they were" if kept.get(path)
                     else reason) for path, reason in problems]
        gone = [path for path in unseen if not path.startswith(tuple(unlisted.values()))]
        todo = []
        for state in states:
            record = known.get(state.path)
            if record and (record.size, record.mtime_ns) == (state.size, state.mtime_ns):
                self.summary.unchanged += 1
            else:
                todo.append(state)
        catalog.clear_skipped_under(prefix)  # every skipped file is retried and re-recorded
        self.summary.skipped += problems
        if gone or problems:
            catalog.commit_batch(removed_paths=gone, skipped=[(p, r, None, None) for p, r in problems])
            self.summary.removed = len(gone)
        return todo

    def run(self, todo: list[FileState], progress: ProgressCallback | None, workers: int | None) -> None:
        """Read, hash and decode in worker threads; link known contents, encode new ones, commit in batches."""
        # worker threads look hashes up through their own read-only connection, one at a time
        reader, reader_lock = Catalog(self.index.path / CATALOG, readonly=True), threading.Lock()

        def read(state: FileState, link: bool = True) -> _Read:
            try:
                data, sha = read_file_bytes(state.path)
                if link:
                    with reader_lock:
                        stored = reader.image_id_for_hash(sha) is not None
                    if stored:
                        return _Read(state, sha, stored=True)
                jpeg = device_jpeg(data) if self.decoder else None
                if jpeg:
                    return _Read(state, sha, jpeg=jpeg)
                return _Read(state, sha, image=self._prepare_with_pil(data, state.path))
            except ImageReadError as error:
                return _Read(state, failure=error.reason)

        # With the device decoding, the threads only read, hash and walk headers, beside the decoding thread:
        # 2 built fastest on an H200 (bench/gpu_build.py, two runs: 2,417 and 2,707 img/s against 2,262 and
        # 2,467 with 4, 2,212 and 2,396 with 8); more contend for the interpreter.
        workers = workers or (2 if self.decoder else None)
        if self.decoder:
            self.decode_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="device-decode")
            if self.decode_device.type == "cuda" and self.decode_device.index is None:  # a new thread's current
                self.decode_device = torch.device("cuda", torch.cuda.current_device())  # device is the first one
        try:
            # reading runs on while a batch is encoded, stored or decoded on the device: two batches ahead (a
            # GPU's batches are large). Files for the device wait as whole JPEGs: with the one in the decoding
            # thread and the one being encoded, about 4 × batch × file size in memory. (One batch ahead: the
            # main thread waited 0.6–0.8 s of a 3.4 s build for the reading threads, on an H200.)
            lookahead = max(64, 2 * self.batch_size)
            chunk = 16 if self.decoder else 1  # (reading without decoding is cheap: see ordered_parallel_map)
            files, link, done, total, batch = todo, True, 0, len(todo), self.batch_size
            while True:
                for item in ordered_parallel_map(functools.partial(read, link=link), files, workers, lookahead, chunk):
                    done += 1
                    self._take(item)
                    if len(self.pending) >= self.batch_size or len(self.links) + len(self.failures) >= 4 * batch:
                        self.commit()
                    if progress:
                        progress(done, total)
                self.commit()
                self.drain()
                if not (self.unlinked and link):
                    break
                # their content was removed while they were read ahead (its last other file changed meanwhile):
                # read again and encoded, not linked, so there is no third round
                files, self.unlinked, link = self.unlinked, [], False
                total += len(files)
        except BaseException:  # a cancel, or a failure elsewhere: what was encoded is still stored
            try:
                self.store_in_flight()
            except Exception:  # noqa: BLE001 - the first error is the one to report
                log.exception("could not store the batch in flight after the build stopped")
            raise
        finally:
            if self.decode_pool:  # no decoding left running on the device after the build, none started
                self.decode_pool.shutdown(wait=True, cancel_futures=True)
            reader.close()

    def _take(self, item: _Read) -> None:
        state = item.state
        if item.failure:
            self._fail(item, self.failures)
        elif item.stored:
            self.links.append(Link(state.path, item.sha256, state.size, state.mtime_ns))
            self.summary.linked += 1
        else:
            self.pending.append(item)

    def _prepare_with_pil(self, data: bytes, path: str) -> PreparedImage:
        image, full_size = decode_image_bytes(data, path, decode_target(self.model))
        return self.model.image_preprocessor(image, full_size)

    def _fail(self, read: _Read, failures: list[tuple[str, str, int, int]]) -> None:
        state = read.state
        failures.append((state.path, read.failure, state.size, state.mtime_ns))
        self.summary.skipped.append((state.path, read.failure))

    def commit(self) -> None:
        """Hand the pending JPEGs to the device's decoding thread, start encoding the batch it decoded before,
        and store the batch started before that (its images, links and failures in one transaction)."""
        batch = _Batch(self.pending, self.links, self.failures)
        self.pending, self.links, self.failures = [], [], []
        jpegs = [r.jpeg for r in batch.reads if r.jpeg is not None]
        if jpegs and self.decoder:
            batch.decoding = self.decode_pool.submit(self._decode_on_device, jpegs)
        earlier, self.being_decoded = self.being_decoded, batch
        if earlier is not None:
            self._encode(earlier)
        if batch.decoding is None:  # nothing to wait for (a CPU, or no JPEGs for the device): on at once
            self.being_decoded = None
            self._encode(batch)

    def drain(self) -> None:
        """Encode and store what is still under way (the end of a build)."""
        batch, self.being_decoded = self.being_decoded, None
        if batch is not None:
            self._encode(batch)
        self.store_in_flight()

    def _encode(self, batch: _Batch) -> None:
        self._take_decoded(batch)
        batch.vectors = start_pixel_batch(self.model, [r.image for r in batch.reads]) if batch.reads else None
        previous, self.in_flight = self.in_flight, batch
        if previous is not None:  # (if storing it fails, the batch just started is still stored on the way out)
            self._store(previous)
        if batch.vectors is None or batch.vectors.done:  # nothing to overlap (a CPU encodes within the call)
            self.store_in_flight()

    def _decode_on_device(self, jpegs: list[DeviceJpeg]) -> DevicePrepared | None:
        """In the decoding thread, one batch after another: None once the decoder has been given up."""
        decoder = self.decoder
        if decoder is None:
            return None
        prepared = prepare_what_decodes(jpegs, self.model.image_preprocessor, self.decode_device, decoder)
        if len(jpegs) >= 8 and all(image is None for image in prepared.images):  # the decoder, not the files
            log.warning("the device refused all %d JPEGs of a batch; decoding with PIL from now on", len(jpegs))
            self.decoder = None
        return prepared

    def _take_decoded(self, batch: _Batch) -> None:
        """The batch's images decoded on the device; the files it refused are decoded by PIL, which reports the
        ones at fault with their reasons."""
        waiting = [r for r in batch.reads if r.jpeg is not None]
        if not waiting:
            return
        decoded = batch.decoding.result() if batch.decoding else None
        prepared = decoded.hand_over() if decoded else [None] * len(waiting)
        for read, image in zip(waiting, prepared):
            read.image, jpeg, read.jpeg = image, read.jpeg, None
            if image is None:
                try:
                    read.image = self._prepare_with_pil(jpeg.data, read.state.path)
                except ImageReadError as failure:
                    read.failure = failure.reason
        for read in batch.reads:
            if read.failure:
                self._fail(read, batch.failures)
        batch.reads = [r for r in batch.reads if not r.failure]

    def store_in_flight(self) -> None:
        batch, self.in_flight = self.in_flight, None
        if batch is not None:
            self._store(batch)

    def _store(self, batch: _Batch) -> None:
        new_images = []
        if batch.reads:
            vectors = batch.vectors.result()
            crash_point("encode")
            new_images = [NewImage(r.sha256, r.image.grid.original_width, r.image.grid.original_height, vector,
                                   [(r.state.path, r.state.size, r.state.mtime_ns)])
                          for r, vector in zip(batch.reads, vectors)]
        if new_images or batch.links or batch.failures:
            committed = self.index.catalog.commit_batch(new_images, batch.links, skipped=batch.failures)
            self.summary.encoded += len(committed.new_ids)
            self.summary.linked += len(new_images) - len(committed.new_ids)  # same content seen earlier in this run
            self.summary.linked -= len(committed.unlinked)
            self.unlinked += [FileState(link.path, link.size, link.mtime_ns) for link in committed.unlinked]
        self.index.sync()
        if time.monotonic() - self.last_save > self.save_every_seconds:
            self.index.save()
            self.last_save = time.monotonic()


@contextmanager
def building(name: str, model: LoadedModel, index_dir: str | Path | None = None, factory: str | None = None,
             mixed_precision: bool = False) -> Iterator[ImageIndex]:
    """`ImageIndex.create` for a build: the index says it is unfinished until the build ends; a new index that
    a failed or cancelled build left without a single file is removed (no empty name left in the lists)."""
    new = not index_exists(name, index_dir)
    index = ImageIndex.create(name, model, index_dir, factory=factory, mixed_precision=mixed_precision)
    empty = False
    try:
        index.mark_finished(False)
        yield index
        index.mark_finished(True)
    except BaseException:
        empty = new and index.catalog.count_files() == 0 and not index.catalog.skipped()
        raise
    finally:
        index.close()  # before removing: removal takes the index's lock
        if empty:
            remove_index(name, index_dir)


def folder_to_index(folder: str | Path) -> Path:
    """`folder` as an absolute path, or IndexStoreError when it is not a folder."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise IndexStoreError(f"{folder}: not a folder")
    return root.absolute()


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
    mixed_precision: bool = False,
    device_decode: bool = True,
) -> BuildSummary:
    """Create or update index `name` from `folder`; safe to kill at any moment and run again.

    `mixed_precision`: knowingly add vectors of the model's precision to an index built in another one.
    `device_decode`: on a GPU with torchvision, decode JPEGs there (False: with PIL on the CPU)."""
    start = time.perf_counter()
    root = folder_to_index(folder)
    summary = BuildSummary(name=name, folder=str(root))
    with building(name, model, index_dir, factory, mixed_precision) as index:
        decoder = device_decoder(model.device, model.image_preprocessor) if device_decode else None
        build = FolderBuild(model, index, root, summary, batch_size, save_every_seconds, decoder)
        build.run(build.plan(), progress, workers)
        index.replan()
        index.save()
        info = index.info()
        summary.images, summary.files, summary.index_type = info.images, info.files, info.index_type
    summary.seconds = time.perf_counter() - start
    return summary
