"""Searching an index: text in any language, an example image, or a weighted mix of both.

Query syntax: terms joined by ` + ` or ` - `, each optionally weighted `W:term`; a term that names an
existing image file is an image query, anything else is text. Example: `2:red car + ./photo.jpg - night`.
A shared server passes its `AllowedRoots`: then only image files inside them are read, and any other
path is searched as text, without saying whether such a file exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import QueryError
from ..model.encode import encode_images, encode_texts
from ..model.images import IMAGE_EXTENSIONS
from ..model.text import short_text
from ..model.loading import LoadedModel
from ..model.score import probabilities_from_cosine
from ..paths import AllowedRoots
from .store import ImageIndex

_SPLIT = re.compile(r"\s+([+-])\s+")
_LEADING_SIGN = re.compile(r"^([+-])\s+")
_SIGNS_ONLY = re.compile(r"^[\s+\-:;,.]+$")  # a slip of the keyboard, not something to search for
_EXAMPLE = "`2:red car + sunset - night`"
_WEIGHT = re.compile(r"^(-?\d+(?:\.\d+)?)\s*:\s*(.*)$")
_ATTACHED_SIGN = re.compile(r"(?:^|\s)[+-](?=\w)")  # "-night": searched as written ("t-shirt", "-20 °C" stay text)


@dataclass(frozen=True)
class QueryTerm:
    weight: float
    kind: str  # "text" or "image"
    value: str


def looks_like_image_path(text: str) -> bool:
    return Path(text.strip()).suffix.lower() in IMAGE_EXTENSIONS


def _is_readable_image(raw: str, readable: AllowedRoots | None) -> bool:
    if not looks_like_image_path(raw):
        return False
    if readable is None:
        return Path(raw).expanduser().is_file()
    real = readable.resolve(raw)
    return real is not None and real.is_file()


def _term(sign: str, raw: str, readable: AllowedRoots | None) -> QueryTerm:
    raw = raw.strip()
    weight = 1.0
    match = _WEIGHT.match(raw)
    if match:
        weight, raw = float(match.group(1)), match.group(2).strip()
        if not raw:
            raise QueryError(f"“{match.group(0).strip()}” gives a weight to nothing: write the term after the "
                             f"colon, e.g. {_EXAMPLE}.")
    if not raw:
        raise QueryError("Empty term in query: write e.g. `2:red car + ./photo.jpg - night`.")
    if _LEADING_SIGN.match(raw):
        raise QueryError(f"Two signs in a row, “{sign} {raw[0]}”, before “{short_text(raw[1:].strip())}”: join "
                         f"terms with one ` + ` or ` - `, e.g. {_EXAMPLE}.")
    if _SIGNS_ONLY.match(raw):
        raise QueryError(f"“{short_text(raw)}” is not a term, only signs: join terms with ` + ` or ` - `, "
                         f"e.g. {_EXAMPLE}.")
    kind = "image" if _is_readable_image(raw, readable) else "text"
    return QueryTerm(-weight if sign == "-" else weight, kind, raw)


def parse_query(query: str, readable: AllowedRoots | None = None) -> list[QueryTerm]:
    """Split a combined query into weighted text and image terms; with `readable`, only image files inside
    those roots become image terms."""
    query = (query or "").strip()
    if not query:
        raise QueryError("Empty query: type what to look for, or give an example image.")
    first_sign = "+"
    leading = _LEADING_SIGN.match(query)  # "- night + city": the first term may carry a sign too
    if leading:
        first_sign, query = leading.group(1), query[leading.end():]
    parts = _SPLIT.split(query)
    terms = [_term(first_sign, parts[0], readable)]
    terms += [_term(sign, raw, readable) for sign, raw in zip(parts[1::2], parts[2::2])]
    if all(t.weight <= 0 for t in terms):
        raise QueryError("A query needs at least one positive term.")
    return terms


@dataclass
class QueryVector:
    vector: np.ndarray  # (dim,) float32, L2-normalised weighted sum of the terms
    terms: list[QueryTerm]
    warnings: list[str] = field(default_factory=list)


def embed_query(model: LoadedModel, query: str | Image.Image | list[QueryTerm],
                readable: AllowedRoots | None = None) -> QueryVector:
    """The query's embedding: a weighted sum of its terms' normalised embeddings, renormalised."""
    if isinstance(query, Image.Image):
        terms, images = [QueryTerm(1.0, "image", "(uploaded image)")], [query]
    else:
        terms = parse_query(query, readable) if isinstance(query, str) else list(query)
        images = [t.value for t in terms if t.kind == "image"]
    texts = [t.value for t in terms if t.kind == "text"]
    warnings: list[str] = [f"“{short_text(t.value)}” was searched as text: "
                           + ("only image files inside this server's allowed folders can be query images"
                              if readable is not None else "no such image file")
                           for t in terms if t.kind == "text" and looks_like_image_path(t.value)]
    warnings += [f"“{short_text(t.value)}” was searched as written: a sign joins terms with a space on each "
                 f"side, e.g. `city - night`" for t in terms if t.kind == "text" and _ATTACHED_SIGN.search(t.value)]
    vectors: dict[int, np.ndarray] = {}
    if texts:
        encoded = encode_texts(model, texts)
        warnings += encoded.warnings
        text_rows = iter(encoded.vectors)
        vectors.update({i: next(text_rows) for i, t in enumerate(terms) if t.kind == "text"})
    if images:
        encoded_images = encode_images(model, images)
        if encoded_images.failures:
            failure = encoded_images.failures[0]  # by its name: an upload's path is a temporary folder's
            raise QueryError(f"Query image {Path(failure.source).name}: {failure.reason}.")
        image_rows = iter(encoded_images.vectors)
        vectors.update({i: next(image_rows) for i, t in enumerate(terms) if t.kind == "image"})
    total = sum(t.weight * vectors[i] for i, t in enumerate(terms))
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise QueryError("The query's terms cancel out; change their weights.")
    return QueryVector((total / norm).astype(np.float32), terms, warnings)


@dataclass
class SearchHit:
    path: str  # first matching path of this content
    paths: list[str]  # every path holding the same content
    score: float  # cosine similarity
    probability: float  # sigmoid(exp(t)·cos + b): calibrated for text queries only
    image_id: int
    width: int
    height: int


@dataclass
class SearchResult:
    query: str
    hits: list[SearchHit]
    terms: list[QueryTerm]
    warnings: list[str] = field(default_factory=list)
    untrained: bool = False  # found with a generated, random-weight model


def search(index: ImageIndex, model: LoadedModel, query: str | Image.Image | list[QueryTerm], k: int = 20,
           min_score: float | None = None, path_contains: str | None = None,
           readable: AllowedRoots | None = None) -> SearchResult:
    """Top-k images for a query, best first; optional score threshold and path/folder filter. `readable`:
    the folders a shared server may read query images from (None: any file, for local use)."""
    index.check_model(model)
    if k < 1:
        raise QueryError("k must be at least 1")
    label = query if isinstance(query, str) else "(image)"
    if isinstance(query, str):
        query = parse_query(query, readable)
    if isinstance(query, Image.Image) or any(t.kind == "image" for t in query):
        index.check_image_setting(model)  # image queries must be encoded as the index's images were
    embedded = embed_query(model, query, readable)
    hits = _nearest(index, model, embedded.vector, k, min_score, path_contains)
    warnings = list(embedded.warnings) + unfinished_warning(index)
    if not hits and path_contains and not len(index.ids_matching_path(path_contains)):
        warnings.append(f"no stored file's path contains “{short_text(path_contains)}”")
    elif not hits and min_score is not None and index.index.ntotal:
        warnings.append(f"no result scored at least the minimum cosine score, {min_score:g}")
    return SearchResult(label, hits, embedded.terms, warnings, model.untrained)


def unfinished_warning(index: ImageIndex) -> list[str]:
    """A search in an index whose last build stopped early finds only what that build stored."""
    if index.finished:
        return []
    return [f"index {index.path.name!r}: its last build has not finished (it was stopped, or is still running); "
            f"it holds {index.catalog.count_files()} files so far. Build it again to go on from there."]


def _nearest(index: ImageIndex, model: LoadedModel, vector: np.ndarray, k: int, min_score: float | None = None,
             path_contains: str | None = None, exclude: int | None = None) -> list[SearchHit]:
    """The stored images nearest to `vector` (dim,), best first, as hits."""
    allowed = index.ids_matching_path(path_contains) if path_contains else None
    if not index.index.ntotal or (allowed is not None and not len(allowed)):
        return []
    scores, ids = index.search_vectors(vector[None, :], k + (exclude is not None), allowed)
    # slots FAISS could not fill (id -1) carry a score of -FLT_MAX: left out before it is scaled into a logit
    kept = [(float(s), int(i)) for s, i in zip(scores[0], ids[0]) if i >= 0 and i != exclude][:k]
    probabilities = probabilities_from_cosine(model, np.array([s for s, _ in kept], dtype=np.float32))
    found = [(score, image_id, float(p)) for (score, image_id), p in zip(kept, probabilities)]
    records = index.catalog.images(i for _, i, _ in found)
    hits = []
    for score, image_id, probability in found:
        record = records.get(image_id)
        if record is None or (min_score is not None and score < min_score):
            continue
        paths = [p for p in record.paths if not path_contains or path_contains in p] or record.paths
        hits.append(SearchHit(paths[0], paths, score, probability, image_id, record.width, record.height))
    return hits


def similar_images(index: ImageIndex, model: LoadedModel, image_id: int, k: int = 20) -> SearchResult:
    """The stored images most like stored image `image_id` (by its stored vector: nothing is encoded again),
    itself left out."""
    index.check_model(model)
    record = index.catalog.images([image_id]).get(image_id)
    if record is None:
        raise QueryError(f"Image {image_id} is not in index {index.path.name!r} (it may have been removed).")
    vector = index.catalog.embeddings_for([image_id], index.dim)[0]
    hits = _nearest(index, model, vector, k, exclude=image_id)
    return SearchResult(f"like {Path(record.paths[0]).name}", hits, [QueryTerm(1.0, "image", record.paths[0])],
                        unfinished_warning(index), model.untrained)


@dataclass
class QueryComparison:
    """The same search phrased several ways (languages): each result, and how far their top-k agree."""

    queries: list[str]
    results: list[SearchResult]
    overlap: np.ndarray  # (q, q) float32: images in both top-k lists / images in row query's top-k


def compare_queries(index: ImageIndex, model: LoadedModel, queries: list[str], k: int = 12,
                    readable: AllowedRoots | None = None) -> QueryComparison:
    """Search each query and measure the overlap of their top-k, by image (not by file name)."""
    if len(queries) < 2:
        raise QueryError("Give at least two versions of the query, one per line.")
    results = [search(index, model, query, k=k, readable=readable) for query in queries]
    tops = [{hit.image_id for hit in result.hits} for result in results]
    overlap = np.array([[len(a & b) / max(len(a), 1) for b in tops] for a in tops], dtype=np.float32)
    return QueryComparison(list(queries), results, overlap)
