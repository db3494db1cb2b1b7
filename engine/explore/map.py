"""A 2-D map of an index's embeddings (UMAP), coloured by cluster or zero-shot label, cached per index.

It sits above both the index (the points) and labelling (the zero-shot colours).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import IndexStoreError, StudioError
from ..index.store import ImageIndex
from ..label.zeroshot import prepare_labels
from ..model.encode import encode_texts
from ..model.loading import LoadedModel
from ..model.score import logits_for

log = logging.getLogger(__name__)
DEFAULT_MAX_POINTS = 20_000  # above this a WebGL scatter with thumbnails gets sluggish in a browser


@dataclass
class Projection:
    image_ids: np.ndarray  # (n,) int64, the index ids of the plotted points
    coords: np.ndarray  # (n, 2) float32
    vectors: np.ndarray  # (n, dim) float32 embeddings of those points
    total: int  # images in the index
    method: str  # "umap" or "pca" (too few points for UMAP)

    @property
    def subsampled(self) -> bool:
        return len(self.image_ids) < self.total

    def nearest(self, vector: np.ndarray, count: int = 12) -> np.ndarray:
        """Row positions of the `count` plotted points most similar to `vector` (dim,), best first."""
        return np.argsort(-(self.vectors @ vector))[:count]

    def place(self, vector: np.ndarray, neighbours: int = 10) -> np.ndarray:
        """Where a new embedding (dim,) lands: the similarity-weighted mean of its nearest plotted points."""
        top = self.nearest(vector, neighbours)
        scores = self.vectors[top] @ vector
        weights = np.exp((scores - scores.max()) * 20)
        return (self.coords[top] * weights[:, None]).sum(axis=0) / weights.sum()


_umap_ready = threading.Event()


def warm_up_umap() -> None:
    """Compile UMAP's numba code on a few random points (its first call costs ~40 s on a small CPU): run it in
    a background thread when a server starts, so the first real map is fast."""
    if not _umap_ready.is_set():
        started = time.monotonic()
        _umap_layout(np.random.default_rng(0).normal(size=(64, 16)).astype(np.float32), 0)
        _umap_ready.set()
        log.info("UMAP compiled in %.0f s: maps are drawn with it from now on", time.monotonic() - started)


def umap_is_warm() -> bool:
    return _umap_ready.is_set()


def _pca_layout(vectors: np.ndarray) -> np.ndarray:
    centred = vectors - vectors.mean(axis=0)
    _, _, components = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ components[:2].T if len(vectors) > 1 else np.zeros((len(vectors), 2))
    return np.pad(coords, ((0, 0), (0, max(0, 2 - coords.shape[1])))).astype(np.float32)


def _layout(vectors: np.ndarray, seed: int, quick: bool = False) -> tuple[np.ndarray, str]:
    """UMAP, or PCA for very few points or (`quick`) while UMAP is still compiling."""
    if len(vectors) < 8 or (quick and not umap_is_warm()):
        return _pca_layout(vectors), "pca"
    coords = _umap_layout(vectors, seed)
    _umap_ready.set()
    return coords, "umap"


def _umap_layout(vectors: np.ndarray, seed: int) -> np.ndarray:
    import umap

    # n_jobs=1: a seed makes UMAP run on one thread whatever it is told (and warn in the log when told more)
    reducer = umap.UMAP(n_neighbors=min(15, len(vectors) - 1), metric="cosine", random_state=seed, n_jobs=1,
                        init="spectral" if len(vectors) > 50 else "random")
    return reducer.fit_transform(vectors).astype(np.float32)


def project_index(index: ImageIndex, max_points: int = DEFAULT_MAX_POINTS, seed: int = 0,
                  quick: bool = False) -> Projection:
    """UMAP of the index's embeddings (subsampled above `max_points`), cached beside the index. `quick`: a PCA
    layout at once (not cached) while UMAP's first compilation is still running elsewhere."""
    total = index.catalog.count_images()
    cache = Path(index.path) / f"projection-v{index.catalog.version}-{max_points}-{seed}.npz"
    if cache.exists():
        stored = np.load(cache)
        vectors = index.catalog.embeddings_for(stored["image_ids"], index.dim)
        return Projection(stored["image_ids"], stored["coords"], vectors, total, str(stored["method"]))
    ids = index.catalog.image_ids()
    if total > max_points:  # only the plotted points' vectors are ever read
        ids = ids[np.sort(np.random.default_rng(seed).choice(total, size=max_points, replace=False))]
    vectors = index.catalog.embeddings_for(ids, index.dim)
    if total == 0:
        return Projection(ids, np.zeros((0, 2), np.float32), vectors, 0, "umap")
    coords, method = _layout(vectors, seed, quick)
    if method == "pca" and len(vectors) >= 8:
        return Projection(ids, coords, vectors, total, method)  # a stand-in: the next map will be UMAP
    try:  # the cache is a convenience: a read-only index folder just recomputes next time
        for old in Path(index.path).glob("projection-*.npz"):
            old.unlink(missing_ok=True)
        np.savez(cache, image_ids=ids, coords=coords, method=np.array(method))
    except OSError as error:
        log.info("projection not cached: %s", error)
    return Projection(ids, coords, vectors, total, method)


def cluster_colours(vectors: np.ndarray, clusters: int = 8, seed: int = 0) -> np.ndarray:
    """(n,) cluster number per point, k-means (FAISS) on the embeddings."""
    import faiss

    clusters = max(1, min(clusters, len(vectors)))
    kmeans = faiss.Kmeans(vectors.shape[1], clusters, niter=20, seed=seed, spherical=True, verbose=False,
                          min_points_per_centroid=1)
    kmeans.train(np.ascontiguousarray(vectors, dtype=np.float32))
    return kmeans.index.search(np.ascontiguousarray(vectors, dtype=np.float32), 1)[1][:, 0]


def label_colours(model: LoadedModel, vectors: np.ndarray, label_text: str) -> list[str]:
    """The best zero-shot label of each image embedding (n, dim) among the labels in `label_text`."""
    label_set = prepare_labels(model, label_text)
    return [label_set.labels[j] for j in logits_for(model, vectors, label_set.text_vectors).argmax(axis=1)]


COLOURINGS = ("cluster", "zero-shot label")


@dataclass
class ExploreMap:
    """Everything the Explore view draws: the points, their colours, and a text query placed among them."""

    projection: Projection
    paths: list[str]  # first stored path of each plotted point
    colours: list[str]  # one group name per point: "cluster 3" or a zero-shot label
    query: str = ""
    query_point: np.ndarray | None = None  # (2,) map position of the query, when one was given
    nearest_paths: list[str] = field(default_factory=list)  # plotted images nearest the query, best first
    nearest_scores: list[float] = field(default_factory=list)  # their cosines to the query
    untrained: bool = False
    warnings: list[str] = field(default_factory=list)  # e.g. the query cut to the model's text length


def explore_index(index: ImageIndex, model: LoadedModel, colour_by: str = "cluster", clusters: int = 8,
                  labels: str = "", query: str = "", max_points: int = DEFAULT_MAX_POINTS,
                  nearest: int = 12, quick: bool = False) -> ExploreMap:
    """The map of an index, coloured by k-means cluster or best zero-shot label, with `query` placed on it."""
    if colour_by not in COLOURINGS:
        raise StudioError(f"Colour by {colour_by!r}: choose one of {', '.join(COLOURINGS)}.")
    index.check_model(model)
    projection = project_index(index, max_points=int(max_points), quick=quick)
    if not len(projection.image_ids):
        raise IndexStoreError(f"Index {index.path.name!r} is empty.")
    records = index.catalog.images(projection.image_ids)
    paths = [records[int(i)].paths[0] for i in projection.image_ids]
    if colour_by == "zero-shot label":
        colours = label_colours(model, projection.vectors, labels or "")
    else:
        colours = [f"cluster {c}" for c in cluster_colours(projection.vectors, int(clusters))]
    result = ExploreMap(projection, paths, colours, untrained=model.untrained)
    if (query or "").strip():
        encoded = encode_texts(model, [query])
        vector = encoded.vectors[0]
        result.query, result.query_point, result.warnings = query, projection.place(vector), encoded.warnings
        top = projection.nearest(vector, nearest)
        result.nearest_paths = [paths[i] for i in top]
        result.nearest_scores = [float(score) for score in projection.vectors[top] @ vector]
    return result


@dataclass
class PointDetails:
    """One point of the map, for its card: where the image is and how close it is to the query."""

    image_id: int
    path: str  # the first stored path
    paths: list[str]  # every path holding the same content
    width: int
    height: int
    query_score: float | None = None  # cosine to the query text, when one was given


def point_details(index: ImageIndex, model: LoadedModel, image_id: int, query: str = "") -> PointDetails:
    record = index.catalog.images([int(image_id)]).get(int(image_id))
    if record is None:
        raise IndexStoreError(f"Image {image_id} is not in index {index.path.name!r} (it may have been removed).")
    details = PointDetails(record.id, record.paths[0], record.paths, record.width, record.height)
    if (query or "").strip():
        vector = index.catalog.embeddings_for([record.id], index.dim)[0]
        details.query_score = float(vector @ encode_texts(model, [query]).vectors[0])
    return details
