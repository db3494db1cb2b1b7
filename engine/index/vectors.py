"""The FAISS side of an image index: which index type for how many vectors, tuning, atomic files.

Chosen by size the way autofaiss does: exact `Flat` for small collections, HNSW while the full vectors
fit the memory budget, IVF with 8-bit scalar quantisation beyond, IVF-PQ when even that does not fit, and
IVF-PQ with its inverted lists on disk (FAISS `OnDiskInvertedLists`, memory-mapped) when the PQ codes
outgrow the budget too (100M+ images). Vectors are L2-normalised, so inner product is cosine similarity.
Ids are the catalogue's image ids.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import faiss
import numpy as np

from ..errors import IndexStoreError
from ..faults import crash_point

FLAT_MAX = 20_000
DEFAULT_MEMORY_BUDGET = 1.2 * 2**30  # bytes for the index itself
DEFAULT_RECALL_TARGET = 0.95


ON_DISK = ",ondisk"  # appended to a factory string: the IVF's inverted lists live in a memory-mapped file


@dataclass(frozen=True)
class IndexPlan:
    factory: str  # FAISS index_factory string, e.g. "Flat", "HNSW32", "IVF4096,SQ8"; "…,ondisk": lists on disk
    trained_for: int  # collection size the plan was made for (IVF: training size)

    @property
    def needs_training(self) -> bool:
        return any(part in self.factory for part in ("IVF", "SQ", "PQ", "PCA", "OPQ", "LSH"))

    @property
    def on_disk(self) -> bool:
        return self.factory.endswith(ON_DISK)

    @property
    def faiss_factory(self) -> str:
        return self.factory[: -len(ON_DISK)] if self.on_disk else self.factory


def faiss_reason(error: Exception, default: str) -> str:
    """The last line of a FAISS error (its C++ message, without the file and line it came from)."""
    text = str(error).strip()
    return text.splitlines()[-1][:200] if text else default


def check_factory(factory: str, dim: int) -> None:
    """Raise IndexStoreError unless FAISS can build `factory` (an index type a user named) for `dim`-d vectors."""
    plan = IndexPlan(factory, 0)
    try:
        index = faiss.index_factory(dim, plan.faiss_factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise IndexStoreError(
            f"Index type {factory!r} is not one FAISS can build for {dim}-dimensional vectors "
            f"({faiss_reason(error, 'not understood')}). "
            "Use a FAISS index_factory string such as Flat, HNSW32 or IVF1024,SQ8 (add ,ondisk to keep an "
            "IVF's lists on disk), or leave it out to let the index choose.") from None
    if plan.on_disk and faiss.try_extract_index_ivf(index) is None:
        raise IndexStoreError(f"Index type {factory!r}: only an IVF index keeps its lists on disk ({ON_DISK}); "
                              f"use e.g. IVF1024,PQ32x8{ON_DISK}, or {plan.faiss_factory} without it.")


def plan_index(count: int, dim: int, memory_budget: float = DEFAULT_MEMORY_BUDGET, factory: str | None = None) -> IndexPlan:
    """Pick an index type for `count` vectors of `dim` floats within `memory_budget` bytes."""
    if factory:
        return IndexPlan(factory, count)
    if count <= FLAT_MAX:
        return IndexPlan("Flat", count)
    hnsw_bytes = count * (dim * 4 + 32 * 2 * 4 * 1.1)
    if hnsw_bytes <= memory_budget and count <= 200_000:
        return IndexPlan("HNSW32", count)
    lists = 2 ** max(8, min(16, round(math.log2(4 * math.sqrt(count)))))
    # An exact coarse quantizer up to 8192 lists: at 1M vectors an HNSW one cost 2.4x the latency for the
    # same recall (bench/index.py); it only pays off when scanning the centroids dominates.
    quantizer = f"IVF{lists}_HNSW32" if lists >= 16384 else f"IVF{lists}"
    if count * (dim + 8) <= memory_budget:
        return IndexPlan(f"{quantizer},SQ8", count)
    pq_bytes = next((m for m in (64, 48, 32, 24, 16) if dim % m == 0 and count * (m + 8) <= memory_budget), None)
    if pq_bytes:
        return IndexPlan(f"{quantizer},PQ{pq_bytes}x8", count)
    # not even 16-byte codes fit: keep 32-byte codes (recall) in memory-mapped lists on disk
    return IndexPlan(f"{quantizer},PQ{next(m for m in (32, 24, 16, 8) if dim % m == 0)}x8{ON_DISK}", count)


def training_size(plan: IndexPlan, dim: int) -> int:
    """How many vectors training `plan` wants (0 when it needs none): 40 per IVF list, as FAISS advises."""
    if not plan.needs_training:
        return 0
    try:
        lists = faiss.extract_index_ivf(faiss.index_factory(dim, plan.faiss_factory, faiss.METRIC_INNER_PRODUCT)).nlist
    except RuntimeError:
        return 100_000
    return max(lists * 40, 10_000)


def create_index(plan: IndexPlan, dim: int, training_vectors: np.ndarray | None = None,
                 lists_file: Path | None = None) -> faiss.Index:
    """An empty index with external ids (training IVF indexes on `training_vectors`); an on-disk plan keeps
    its inverted lists in `lists_file` (created anew)."""
    index = faiss.index_factory(dim, plan.faiss_factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        if training_vectors is None or len(training_vectors) == 0:
            raise ValueError(f"a {plan.factory} index needs training vectors")
        wanted = training_size(plan, dim)
        index.train(np.ascontiguousarray(training_vectors[:wanted], dtype=np.float32))
    if plan.on_disk:
        if lists_file is None:
            raise ValueError(f"a {plan.factory} index needs a file for its inverted lists")
        lists_file.unlink(missing_ok=True)
        ivf = faiss.extract_index_ivf(index)
        lists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(lists_file))
        lists.thisown = False  # the index owns (and frees) its lists from now on
        ivf.replace_invlists(lists, True)
    if plan.faiss_factory.startswith(("Flat", "HNSW")) or "Refine" in plan.factory:
        index = faiss.IndexIDMap2(index)
    return index


def lists_file_of(index: faiss.Index) -> Path | None:
    """The file holding an index's inverted lists when they are on disk."""
    try:
        lists = faiss.extract_index_ivf(index).invlists
    except RuntimeError:
        return None
    on_disk = faiss.downcast_InvertedLists(lists)
    return Path(on_disk.filename) if isinstance(on_disk, faiss.OnDiskInvertedLists) else None


def _unwrapped(index: faiss.Index) -> faiss.Index:
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index


def supports_removal(index: faiss.Index) -> bool:
    return not isinstance(_unwrapped(index), (faiss.IndexHNSW, faiss.IndexRefine))


def emptied(index: faiss.Index) -> faiss.Index:
    """A copy with no vectors that keeps the training (IVF centroids, quantiser ranges)."""
    fresh = faiss.clone_index(index)
    fresh.reset()
    return fresh


def set_search_params(index: faiss.Index, params: dict) -> None:
    """Apply tuned parameters (nprobe for IVF, efSearch for HNSW); empty for exact search."""
    if params:
        faiss.ParameterSpace().set_index_parameters(index, ",".join(f"{k}={v}" for k, v in params.items()))


def search_parameters(index: faiss.Index, params: dict, selector: faiss.IDSelector) -> faiss.SearchParameters:
    """One search's parameters: the tuned `params` (as set_search_params takes them) plus an id filter.

    Built with keyword arguments so that the Python objects they point at stay alive with them.
    """
    inner = _unwrapped(index)
    if isinstance(inner, faiss.IndexRefine):
        # IndexIDMap2 translates only an outer selector; the refined base index sees internal ids
        if isinstance(index, faiss.IndexIDMap2):
            selector = faiss.IDSelectorTranslated(index.id_map, selector)
        base = search_parameters(inner.base_index, params, selector)
        return faiss.IndexRefineSearchParameters(k_factor=float(params.get("k_factor_rf", inner.k_factor)),
                                                 base_index_params=base)
    if "nprobe" in params:
        quantizer = {"quantizer_params": faiss.SearchParametersHNSW(efSearch=int(params["quantizer_efSearch"]))} \
            if "quantizer_efSearch" in params else {}
        return faiss.SearchParametersIVF(sel=selector, nprobe=int(params["nprobe"]), **quantizer)
    if "efSearch" in params:
        return faiss.SearchParametersHNSW(sel=selector, efSearch=int(params["efSearch"]))
    return faiss.SearchParameters(sel=selector)


PROBES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)


def _parameter_ladder(index: faiss.Index) -> list[dict]:
    """Search settings from cheapest to most thorough, for `tune` to walk up."""
    inner = _unwrapped(index)
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return [{"efSearch": e} for e in (16, 24, 32, 48, 64, 96, 128, 192, 256, 512)] \
            if isinstance(inner, faiss.IndexHNSW) else []
    hnsw_quantizer = isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)
    # an HNSW coarse quantizer must look at least as wide as the number of lists probed
    steps = [{"nprobe": n, **({"quantizer_efSearch": max(64, 2 * n)} if hnsw_quantizer else {})}
             for n in PROBES if n <= ivf.nlist]
    if isinstance(inner, faiss.IndexRefine):
        return [{**step, "k_factor_rf": factor} for step in steps for factor in (2, 4, 8)]
    return steps


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found, truth)]))


RERANK_FACTOR = 10  # PQ indexes fetch 10 × k candidates and re-score them with the stored full vectors
VectorLookup = Callable[[np.ndarray], np.ndarray]  # ids (n,) -> their full vectors (n, dim), in that order


def is_compressed(factory: str) -> bool:
    """PQ codes rank too coarsely on their own (recall@10 ≈ 0.7 at 32 bytes); they are re-ranked exactly."""
    return "PQ" in factory and "Refine" not in factory


def rerank_exact(queries: np.ndarray, candidates: np.ndarray, lookup: VectorLookup, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores (q, k), ids (q, k)): `candidates` (q, k') re-scored with their full vectors; -1 pads."""
    unique = np.unique(candidates[candidates >= 0])
    position = {int(i): row for row, i in enumerate(unique)}
    vectors = lookup(unique) if len(unique) else np.zeros((0, queries.shape[1]), np.float32)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    ids = np.full((len(queries), k), -1, dtype=np.int64)
    for row, (query, found) in enumerate(zip(queries, candidates)):
        found = found[found >= 0]
        exact = vectors[[position[int(i)] for i in found]] @ query if len(found) else np.zeros(0, np.float32)
        best = np.argsort(-exact, kind="stable")[:k]
        scores[row, : len(best)], ids[row, : len(best)] = exact[best], found[best]
    return scores, ids


def search_reranked(index: faiss.Index, queries: np.ndarray, k: int, lookup: VectorLookup,
                    params: faiss.SearchParameters | None = None) -> tuple[np.ndarray, np.ndarray]:
    _, candidates = index.search(queries, k * RERANK_FACTOR, params=params)
    return rerank_exact(queries, candidates, lookup, k)


def tune(index: faiss.Index, queries: np.ndarray, true_ids: np.ndarray, target: float = DEFAULT_RECALL_TARGET,
         lookup: VectorLookup | None = None) -> tuple[dict, float]:
    """The cheapest search parameters reaching `target` recall@k against exact `true_ids` (n, k); with
    `lookup`, as searched with exact re-ranking."""
    ladder = _parameter_ladder(index)
    if not ladder:
        return {}, 1.0
    recall = 0.0
    k = true_ids.shape[1]
    for params in ladder:
        set_search_params(index, params)
        found = search_reranked(index, queries, k, lookup)[1] if lookup else index.search(queries, k)[1]
        recall = recall_at_k(found, true_ids)
        if recall >= target:
            return params, recall
    return ladder[-1], recall


def exact_top_k(queries: np.ndarray, chunks: Iterable[tuple[np.ndarray, np.ndarray]], k: int) -> np.ndarray:
    """Brute-force top-k ids (n_queries, k) by inner product over (ids (n,), vectors (n, dim)) chunks.

    The ground truth for tuning and tests; streams, so a million stored vectors never sit in memory at once.
    """
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    for ids, vectors in chunks:
        scores = np.concatenate([best_scores, queries @ vectors.T], axis=1)
        candidates = np.concatenate([best_ids, np.broadcast_to(ids, (len(queries), len(ids)))], axis=1)
        keep = min(k, scores.shape[1])
        top = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]
        best_scores, best_ids = np.take_along_axis(scores, top, 1), np.take_along_axis(candidates, top, 1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_ids, order, 1)


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_index_atomic(index: faiss.Index, path: Path) -> None:
    """Write to a temporary file, fsync, rename over `path`, fsync the folder. A failed write (a full disk)
    removes the temporary file and leaves the previous file as it was."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        faiss.write_index(index, str(tmp))
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
    except (RuntimeError, OSError) as error:  # faiss reports a failed fwrite as RuntimeError
        tmp.unlink(missing_ok=True)
        reason = "no space left on device" if "space" in str(error).lower() or getattr(error, "errno", 0) == 28 \
            else faiss_reason(error, "write failed")
        raise IndexStoreError(
            f"Saving the index in {path.parent.name!r} failed ({reason}). Everything already stored is safe in "
            "its catalogue and the previous index file is intact; free some space and build again (stored "
            "images are not encoded again).") from None
    crash_point("faiss-before-rename")
    os.replace(tmp, path)
    fsync_directory(path.parent)


def read_index(path: Path) -> faiss.Index:
    """Read an index file; inverted lists on disk are looked for beside it (the folder may have moved)."""
    return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR)


def memory_bytes(index: faiss.Index) -> int:
    """Serialized size: a close proxy for the index's resident memory."""
    return int(faiss.serialize_index(index).nbytes)


def stored_ids(index: faiss.Index) -> np.ndarray:
    """Every id held by an IDMap or IVF index (for consistency checks)."""
    if isinstance(index, faiss.IndexIDMap2) or hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = faiss.extract_index_ivf(index)
    lists = ivf.invlists
    chunks = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
              for i in range(ivf.nlist) if lists.list_size(i)]
    return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, np.int64)
