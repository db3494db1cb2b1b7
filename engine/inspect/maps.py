"""Text-to-patch similarity maps, two ways:

- "value": each patch token sent alone through the pooling head's value path (see `head`), L2-normalised and
  scored like a whole image, logit = exp(t)·cos + b with the model's own t and b: the map is in logits.
- "gradient": gradient × activation (Grad-CAM style, per token rather than per channel) of the image–text
  logit with respect to the final post-LayerNorm patch tokens the head reads: Σ_d ∂logit/∂x[i, d] · x[i, d],
  a first-order estimate of each patch's contribution to the logit. One backward pass through the head per query.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InspectError
from ..model.encode import encode_texts
from ..model.images import ImageInput
from ..model.loading import LoadedModel
from ..model.score import logits_for
from .head import pooled_embedding, value_path_outputs
from .trace import ImageTrace, as_grid, trace_image

METHODS = ("value", "gradient")
MAX_QUERIES = 8  # side by side, more stop being readable
QUERY_CACHE_SIZE = 64


@dataclass
class SimilarityMaps:
    """One map per query on the image's real patch grid."""

    trace: ImageTrace
    queries: list[str]
    method: str
    maps: np.ndarray  # (queries, rows, cols) float32: value → patch logits exp(t)·cos + b; gradient → ∂logit/∂x · x
    image_logits: np.ndarray  # (queries,) float32: the whole image's logit for each query
    warnings: list[str] = field(default_factory=list)
    untrained: bool = False

    @property
    def maxima(self) -> np.ndarray:
        """(queries,) each map's largest value."""
        return self.maps.reshape(len(self.queries), -1).max(axis=1)


def parse_queries(queries: str | list[str]) -> list[str]:
    """Queries, one per line (or a list); empty lines dropped; at least one, at most MAX_QUERIES."""
    lines = queries.splitlines() if isinstance(queries, str) else [str(q) for q in queries]
    kept = [line.strip() for line in lines if line and line.strip()]
    if not kept:
        raise InspectError("No query: type what to look for, one query per line.")
    if len(kept) > MAX_QUERIES:
        raise InspectError(f"{len(kept)} queries is more than the {MAX_QUERIES} that can be shown side by side; "
                           "split them into several runs.")
    return kept


_query_vectors: weakref.WeakKeyDictionary[LoadedModel, OrderedDict] = weakref.WeakKeyDictionary()


def query_vectors(model: LoadedModel, queries: list[str]) -> tuple[np.ndarray, list[str]]:
    """(queries, dim) text embeddings, cached per model (a map redrawn at another length or method reuses them),
    and the text pipeline's warnings for the new ones."""
    cache = _query_vectors.setdefault(model, OrderedDict())
    new = [q for q in dict.fromkeys(queries) if q not in cache]
    warnings: list[str] = []
    if new:
        encoded = encode_texts(model, new)
        cache.update(zip(new, encoded.vectors))
        warnings = encoded.warnings
        while len(cache) > QUERY_CACHE_SIZE:
            cache.popitem(last=False)
    return np.stack([cache[q] for q in queries]), warnings


def value_maps(model: LoadedModel, trace: ImageTrace, text_vectors: np.ndarray) -> np.ndarray:
    """(queries, n) logits of each patch's value-path output against each text vector (queries, dim)."""
    outputs = torch.nn.functional.normalize(value_path_outputs(model, trace.features.tokens), dim=-1).numpy()
    return logits_for(model, outputs, text_vectors).T


def gradient_maps(model: LoadedModel, trace: ImageTrace, text_vectors: np.ndarray) -> np.ndarray:
    """(queries, n) Σ_d ∂logit/∂x[i, d] · x[i, d] over the final patch tokens x."""
    tokens = trace.features.tokens.to(device=model.device, dtype=torch.float32).clone().requires_grad_(True)
    texts = torch.from_numpy(text_vectors).to(model.device)
    maps = []
    with torch.enable_grad():
        embedding = torch.nn.functional.normalize(pooled_embedding(model, tokens), dim=-1)
        logits = model.logit_scale * (texts @ embedding) + model.logit_bias
        for query in range(len(texts)):
            (gradient,) = torch.autograd.grad(logits[query], tokens, retain_graph=query < len(texts) - 1)
            maps.append((gradient * tokens).sum(dim=-1).detach().float().cpu().numpy())
    return np.stack(maps).astype(np.float32)


def similarity_maps(model: LoadedModel, image: ImageInput, queries: str | list[str], max_patches: int | None = None,
                    method: str = "value") -> SimilarityMaps:
    """Where in the image each query is found, on the real patch grid (padding never included)."""
    if method not in METHODS:
        raise InspectError(f"Method {method!r}: choose {' or '.join(METHODS)}.")
    kept = parse_queries(queries)
    trace = trace_image(model, image, max_patches)
    texts, warnings = query_vectors(model, kept)
    compute = value_maps if method == "value" else gradient_maps
    maps = as_grid(compute(model, trace, texts), trace).astype(np.float32)
    image_vector = torch.nn.functional.normalize(trace.features.pooled, dim=-1).numpy()
    image_logits = logits_for(model, image_vector[None], texts)[0]
    return SimilarityMaps(trace, kept, method, maps, image_logits, warnings, model.untrained)
