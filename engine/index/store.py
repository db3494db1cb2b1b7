"""An image index on disk: `indexes/<name>/` = catalog.sqlite + vectors.v<version>.faiss + lock.

Crash safety: SQLite is the source of truth and commits each batch atomically (bumping `version` and
logging its adds and removes). The FAISS file is written after the commit, atomically, named by the
version it reflects; opening replays the logged changes the file lacks, so FAISS ids and catalogue rows
always match one to one and nothing committed is ever encoded again.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from filelock import FileLock, Timeout

from ..errors import IndexStoreError
from ..faults import crash_point
from ..model.loading import LoadedModel
from . import vectors as vi
from .catalog import SCHEMA_VERSION, Catalog
from .listing import (BUILD_FINISHED, CATALOG, build_finished, built_by, index_exists, index_path,
                      model_fingerprint)

log = logging.getLogger(__name__)
_FAISS_FILE = re.compile(r"^vectors\.v(\d+)\.faiss$")
# FAISS indexes loaded for reading (one per index, up to 4 indexes), shared by read-only opens of the same
# catalogue version: a search server opens the index per request, and reading a 1M-vector file each time
# would cost more than the search.
# FAISS searches are safe to run concurrently on one index; per-query parameters travel in SearchParameters.
_READ_CACHE: OrderedDict[tuple, tuple[faiss.Index, int]] = OrderedDict()
_READ_CACHE_SIZE = 4
_read_cache_lock = threading.Lock()

LEGACY_PRECISION = "fp32"  # indexes written before precisions were recorded were all built in fp32


def forget_loaded_indexes() -> None:
    """Drop the FAISS indexes shared by read-only opens: the next open reads the files again (as a newly
    started process would), e.g. after index files were replaced by hand."""
    with _read_cache_lock:
        _READ_CACHE.clear()


@dataclass
class IndexInfo:
    name: str
    path: str
    model: str
    arch: str
    image_setting: list[int]  # fixed: [height, width]; NaFlex: [max_num_patches]
    dim: int
    index_type: str
    search_params: dict
    recall_estimate: float | None
    images: int
    files: int
    skipped: int
    version: int
    schema_version: int
    untrained: bool  # built with a generated, random-weight model
    created_at: float
    precision: str = LEGACY_PRECISION  # of the model that built it: fp32, bf16, fp16, int8, or "mixed (…)"
    finished: bool = True  # False while a build runs, and after one that was cancelled, failed or killed


class ImageIndex:
    """Open with `ImageIndex.open(name)` (read-only) or `ImageIndex.open(name, writable=True)`."""

    def __init__(self, path: Path, catalog: Catalog, lock: FileLock | None, mixed_precision: bool = False):
        self.path = path
        self.mixed_precision = mixed_precision  # the caller knowingly uses a model of another precision
        self.catalog = catalog
        self.lock = lock
        self.meta = catalog.get_meta()
        self.dim = int(self.meta["dim"])
        self.faiss_version = 0
        self.index = self._load_faiss()
        # an index type named for this build: recorded (as factory_override) once `replan` has built it
        self.requested_factory: str | None = None

    # opening -----------------------------------------------------------------------------------
    @staticmethod
    def _acquire(path: Path) -> FileLock:
        lock = FileLock(str(path / "lock"), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise IndexStoreError(
                f"Index {path.name!r} is being changed by another process; wait for it to finish.") from None
        return lock

    @classmethod
    def create(cls, name: str, model: LoadedModel, index_dir=None, factory: str | None = None,
               mixed_precision: bool = False) -> "ImageIndex":
        path = index_path(name, index_dir)
        if factory:
            vi.check_factory(factory, model.embed_dim)
        if index_exists(name, index_dir):
            opened = cls.open(name, index_dir, writable=True, model=model, mixed_precision=mixed_precision)
            if model.precision not in opened.precisions:  # knowingly extended: say so from now on
                opened._set_meta(precision=f"mixed ({', '.join(opened.precisions + [model.precision])})")
            opened.requested_factory = factory
            return opened
        path.mkdir(parents=True, exist_ok=True)
        lock = cls._acquire(path)
        catalog = Catalog(path / CATALOG)
        catalog.set_meta(
            model=model.name, arch=model.arch, image_setting=list(model.image_setting), dim=model.embed_dim,
            patch_size=model.patch_size, max_num_patches=model.image_preprocessor.max_num_patches,
            fingerprint=model_fingerprint(model), untrained=model.untrained, precision=model.precision,
            factory_override=None, factory="Flat", trained_for=0, search_params={}, recall_estimate=None,
            schema_version=SCHEMA_VERSION, created_at=time.time(), version=0, logit_scale=model.logit_scale,
            logit_bias=model.logit_bias)
        created = cls(path, catalog, lock, mixed_precision)
        created.requested_factory = factory
        return created

    @classmethod
    def open(cls, name: str, index_dir=None, writable: bool = False, model: LoadedModel | None = None,
             mixed_precision: bool = False) -> "ImageIndex":
        """`mixed_precision`: accept a model whose precision differs from the index's (see `check_model`)."""
        path = index_path(name, index_dir)
        if not index_exists(name, index_dir):
            raise IndexStoreError(f"No index named {name!r} in {path.parent}. Build it first "
                                  f"(python -m engine index build FOLDER --name {name}).")
        lock = cls._acquire(path) if writable else None
        try:
            opened = cls(path, Catalog(path / CATALOG, readonly=not writable), lock, mixed_precision)
        except Exception:
            if lock:
                lock.release()
            raise
        if opened.meta.get("schema_version") != SCHEMA_VERSION:
            opened.close()
            raise IndexStoreError(f"Index {name!r} has schema {opened.meta.get('schema_version')}, this version "
                                  f"reads {SCHEMA_VERSION}; rebuild it.")
        if model is not None:
            try:
                opened.check_model(model)
                if writable:
                    opened.check_image_setting(model)
            except IndexStoreError:
                opened.close()  # release the lock: the caller may retry with another model in this process
                raise
        return opened

    def close(self) -> None:
        self.catalog.close()
        if self.lock:
            self.lock.release()
            self.lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def check_model(self, model: LoadedModel) -> None:
        """Refuse a model other than the one that built the index (its vectors would be garbage here)."""
        built_with = self.meta["model"]
        if not built_by(self.meta, model):
            raise IndexStoreError(
                f"Index {self.path.name!r} was built with {built_with} ({self.meta['arch']}, {self.dim}-d); the "
                f"loaded model is {model.name} ({model.arch}, {model.embed_dim}-d). Load {built_with} to use it.")
        self.check_precision(model)

    @property
    def precision(self) -> str:
        return self.meta.get("precision") or LEGACY_PRECISION

    @property
    def precisions(self) -> list[str]:
        """The precisions the stored vectors were computed in."""
        text = self.precision
        return text[len("mixed ("):-1].split(", ") if text.startswith("mixed (") else [text]

    def check_precision(self, model: LoadedModel) -> None:
        """Refuse an int8 model for a float index and the reverse, unless the caller asked for it: quantized
        vectors agree with float ones only to about 0.9997 cosine, so rankings shift slightly. fp32, bf16 and
        fp16 count as one family (an index built on a GPU in bf16 is searched on a CPU in fp32), and so do
        torch's int8 and OpenVINO's (int8-openvino): a mix of the two is recorded, not refused."""
        family = lambda precision: "int8" if precision.startswith("int8") else "float"  # noqa: E731
        if self.mixed_precision or {family(p) for p in self.precisions} == {family(model.precision)}:
            return
        raise IndexStoreError(
            f"Index {self.path.name!r} holds {self.precision} embeddings; the loaded model runs in {model.precision}. "
            f"Load the model with --dtype {self.precisions[0]} (dtype={self.precisions[0]!r}) to use the index as "
            f"built, or build a new index under another name in {model.precision}; to mix precisions on purpose, "
            "open the index with mixed_precision=True (ImageIndex.open / build_index).")

    def check_image_setting(self, model: LoadedModel) -> None:
        """Refuse to encode images for this index at another NaFlex sequence length than it was built at:
        embeddings made at different lengths would be mixed (text queries do not depend on it)."""
        built_at = self.meta.get("max_num_patches")
        now = model.image_preprocessor.max_num_patches
        if model.arch == "naflex" and built_at and int(built_at) != now:
            raise IndexStoreError(
                f"Index {self.path.name!r} was built at a NaFlex sequence length of {built_at} patches and the "
                f"model is set to {now}. Set the sequence length back to {built_at} (Models tab, or --max-patches "
                f"{built_at}) to add or search by images, or build a new index at {now}.")

    # the FAISS file ----------------------------------------------------------------------------
    def _faiss_files(self) -> dict[int, Path]:
        found = {}
        for entry in self.path.iterdir():
            match = _FAISS_FILE.match(entry.name)
            if match:
                found[int(match.group(1))] = entry
        return found

    def _load_faiss(self) -> faiss.Index:
        """The loaded FAISS index; read-only opens share one per catalogue version (see _READ_CACHE)."""
        if self.lock is not None:
            return self._read_faiss()
        path = str(self.path.resolve())
        version = self.catalog.version
        # created_at tells apart an index removed and built again under the same name (its versions restart);
        # factory and trained_for change when a build re-plans the index without a new version
        key = (path, self.meta.get("created_at"), version, self.meta.get("factory"), self.meta.get("trained_for"),
               json.dumps(self.meta.get("search_params") or {}, sort_keys=True))
        with _read_cache_lock:
            if key in _READ_CACHE:
                _READ_CACHE.move_to_end(key)
                self.index, self.faiss_version = _READ_CACHE[key]
                return self.index
        index = self._read_faiss()
        if self.catalog.version != version:  # a writer committed while the file was read: do not keep it
            return index
        with _read_cache_lock:
            for stale in [k for k in _READ_CACHE if k[0] == path]:  # one loaded copy per index
                del _READ_CACHE[stale]
            _READ_CACHE[key] = (index, self.faiss_version)
            while len(_READ_CACHE) > _READ_CACHE_SIZE:
                _READ_CACHE.popitem(last=False)
        return index

    def _read_faiss(self) -> faiss.Index:
        """The newest FAISS file not ahead of the catalogue, caught up by replaying the change log."""
        usable = {v: p for v, p in self._faiss_files().items() if v <= self.catalog.version}
        if not usable:
            return self._rebuild_from_catalog(self.meta.get("factory", "Flat"))
        version = max(usable)
        try:
            index = vi.read_index(usable[version])
        except RuntimeError:  # unreadable (truncated, empty) file: rebuild from the source of truth
            log.warning("%s: unreadable, rebuilt from the catalogue", usable[version])
            return self._rebuild_from_catalog(self.meta.get("factory", "Flat"))
        if vi.lists_file_of(index) is not None and version != self.catalog.version:
            # lists on disk are changed in place after a save, so an older header may not describe them
            return self._rebuild_from_catalog(self.meta.get("factory", "Flat"))
        self.faiss_version = version
        vi.set_search_params(index, self.meta.get("search_params") or {})
        self.index = index
        self._replay(index)
        if self.index.ntotal != self.catalog.count_images():  # a file that reads but holds other vectors
            log.warning("%s: %d vectors for %d catalogued images, rebuilt from the catalogue", usable[version],
                        self.index.ntotal, self.catalog.count_images())
            self.index = self._rebuild_from_catalog(self.meta.get("factory", "Flat"))
        return self.index

    def _replay(self, index: faiss.Index) -> None:
        version = self.catalog.version  # first: changes committed after it are left for the next replay
        changes = [change for change in self.catalog.changes_since(self.faiss_version) if change[0] <= version]
        if not changes:
            self.faiss_version = version
            return
        removed = sorted({image_id for _, image_id, op in changes if op == "remove"})
        last_change = {image_id: op for _, image_id, op in changes}  # an id freed and given to a new image
        added = [image_id for image_id, op in last_change.items() if op == "add"]  # ends with an add
        if removed:
            if vi.supports_removal(index):
                index.remove_ids(np.asarray(removed, dtype=np.int64))
            else:  # HNSW and refined indexes cannot remove: re-add everything, keeping the training
                self.index = self._rebuild_from_catalog(self.meta["factory"], trained=index)
                return
        if added:
            ids, vectors = self.catalog.stored_embeddings(added, self.dim)
            if len(ids):
                index.add_with_ids(vectors, ids)
        self.faiss_version = version

    def _rebuild_from_catalog(self, factory: str, trained: faiss.Index | None = None) -> faiss.Index:
        """Every catalogued vector in a new index (or in an emptied copy of `trained`)."""
        count = self.catalog.count_images()
        plan = vi.IndexPlan(factory, count)
        if trained is not None and not plan.on_disk:
            index = vi.emptied(trained)
        else:
            training = self.catalog.sample_embeddings(self.dim, vi.training_size(plan, self.dim))
            lists = self.path / f"lists.v{self.catalog.version}-{time.time_ns()}.ivfdata" if plan.on_disk else None
            index = vi.create_index(plan, self.dim, training, lists)
        for ids, vectors in self.catalog.iter_embeddings(self.dim):
            index.add_with_ids(vectors, ids)
        if factory == self.meta.get("factory"):  # tuned for this type (efSearch, nprobe); replan tunes a new one
            vi.set_search_params(index, self.meta.get("search_params") or {})
        self.faiss_version = self.catalog.version
        return index

    def sync(self) -> None:
        """Bring the in-memory FAISS index up to the catalogue's latest committed batch."""
        self._replay(self.index)

    def save(self) -> None:
        """Write the FAISS file for the current version atomically, then drop older files and log entries."""
        self.sync()
        version = self.faiss_version
        target = self.path / f"vectors.v{version}.faiss"
        crash_point("faiss-write")
        vi.write_index_atomic(self.index, target)
        crash_point("faiss-after-rename")
        for old_version, old in self._faiss_files().items():
            if old_version != version:
                old.unlink(missing_ok=True)
        in_use = vi.lists_file_of(self.index)
        for lists in self.path.glob("lists.*.ivfdata"):  # lists on disk of replaced indexes
            if in_use is None or lists.name != in_use.name:
                lists.unlink(missing_ok=True)
        self.catalog.forget_changes(version)

    def _set_meta(self, **values) -> None:
        self.catalog.set_meta(**values)
        self.meta.update(values)

    # growing -----------------------------------------------------------------------------------
    def replan(self, memory_budget: float = vi.DEFAULT_MEMORY_BUDGET, force: bool = False,
               recall_target: float = vi.DEFAULT_RECALL_TARGET) -> bool:
        """Rebuild with a new index type when the collection outgrew its plan; tune search parameters."""
        count = self.catalog.count_images()
        chosen = self.requested_factory or self.meta.get("factory_override")
        plan = vi.plan_index(count, self.dim, memory_budget, chosen)
        trained_for = int(self.meta.get("trained_for") or 0)
        changed_size = count > 2 * trained_for or count < trained_for / 4
        # a new index type, or an IVF whose clusters were trained on a much smaller or larger collection
        outgrown = changed_size and (plan.factory != self.meta["factory"] or plan.needs_training)
        rechosen = bool(chosen) and count > 0 and plan.factory != self.meta["factory"]
        if not (force or outgrown or rechosen):
            if self.requested_factory and count > 0:  # already in the named type: remember it
                self._set_meta(factory_override=self.requested_factory)
            return False
        try:
            self.index = self._rebuild_from_catalog(plan.factory)
        except RuntimeError as error:  # e.g. an IVF with more lists than images to train them
            raise IndexStoreError(f"Index {self.path.name!r} could not be built as {plan.factory} for {count} "
                                  f"images ({vi.faiss_reason(error, 'FAISS refused it')}); it stays "
                                  f"{self.meta['factory']}. Name another type, or none to let the index "
                                  "choose.") from None
        self._set_meta(factory=plan.factory, trained_for=count, factory_override=chosen)
        self.tune(recall_target)
        return True

    def tune(self, recall_target: float = vi.DEFAULT_RECALL_TARGET, queries: int = 200, k: int = 10) -> None:
        """Pick the cheapest efSearch / nprobe reaching the recall target on perturbed stored vectors."""
        count = self.catalog.count_images()
        if count <= k or self.meta["factory"] == "Flat":
            self._set_meta(search_params={}, recall_estimate=1.0)
            return
        sample = self.catalog.sample_embeddings(self.dim, queries)
        probes = sample + np.random.default_rng(0).normal(0, 0.02, sample.shape).astype(np.float32)
        probes /= np.linalg.norm(probes, axis=1, keepdims=True)
        truth = vi.exact_top_k(probes, self.catalog.iter_embeddings(self.dim), k)
        params, recall = vi.tune(self.index, probes, truth, recall_target, self._lookup())
        self._set_meta(search_params=params, recall_estimate=recall)

    # reading -----------------------------------------------------------------------------------
    def search_vectors(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores (q, k), ids (q, k)) by inner product; id -1 pads when fewer exist."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = max(1, min(k, max(self.index.ntotal, 1)))
        params = None
        if allowed_ids is not None:
            selector = faiss.IDSelectorBatch(np.asarray(allowed_ids, dtype=np.int64))
            params = vi.search_parameters(self.index, self.meta.get("search_params") or {}, selector)
        lookup = self._lookup()
        if lookup:
            return vi.search_reranked(self.index, queries, k, lookup, params)
        return self.index.search(queries, k, params=params)

    def _lookup(self) -> vi.VectorLookup | None:
        """Full vectors from the catalogue, for indexes whose codes are re-ranked exactly (PQ)."""
        if not vi.is_compressed(self.meta.get("factory", "Flat")):
            return None
        return lambda ids: self.catalog.embeddings_for(ids, self.dim)

    def ids_matching_path(self, fragment: str) -> np.ndarray:
        pattern = "%" + fragment.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self.catalog.db.execute("SELECT DISTINCT image_id FROM files WHERE path LIKE ? ESCAPE '\\'",
                                       (pattern,))
        return np.array([r[0] for r in rows], dtype=np.int64)

    def info(self) -> IndexInfo:
        meta = self.meta
        return IndexInfo(
            name=self.path.name, path=str(self.path), model=meta["model"], arch=meta["arch"],
            image_setting=meta["image_setting"], dim=self.dim, index_type=meta["factory"],
            search_params=meta.get("search_params") or {}, recall_estimate=meta.get("recall_estimate"),
            images=self.catalog.count_images(), files=self.catalog.count_files(),
            skipped=len(self.catalog.skipped()), version=self.catalog.version,
            schema_version=meta["schema_version"], untrained=bool(meta.get("untrained", meta.get("untrained_model"))),
            created_at=meta["created_at"], precision=self.precision, finished=self.finished)

    @property
    def finished(self) -> bool:
        return build_finished(self.meta)

    def mark_finished(self, finished: bool) -> None:
        self._set_meta(**{BUILD_FINISHED: finished})


def remove_index(name: str, index_dir=None) -> None:
    path = index_path(name, index_dir)
    if not index_exists(name, index_dir):
        raise IndexStoreError(f"No index named {name!r} in {path.parent}.")
    lock = ImageIndex._acquire(path)
    try:
        shutil.rmtree(path)
    finally:
        lock.release()
    with _read_cache_lock:
        for gone in [k for k in _READ_CACHE if k[0] == str(path.resolve())]:
            del _READ_CACHE[gone]
