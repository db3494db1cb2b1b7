"""Dense features: the final patch tokens as colours (PCA to RGB) and as patch-to-patch cosine similarity."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..model.images import ImageInput
from ..model.loading import LoadedModel
from .trace import ImageTrace, as_grid, trace_images


@dataclass
class DensePCA:
    """Each image's patches coloured by the first three principal components of the patch features."""

    traces: list[ImageTrace]
    colours: list[np.ndarray]  # per image (rows, cols, 3) float32 in [0, 1]
    explained_variance: np.ndarray  # (3,) share of the variance each component holds (of the fit)
    joint: bool  # one fit over all images (colours compare) or one per image


def _pca_colours(tokens: list[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """One PCA fit over the stacked (n_i, dim) tokens; components scaled to [0, 1] over all of them."""
    from sklearn.decomposition import PCA

    stacked = np.concatenate(tokens)
    components = min(3, len(stacked), stacked.shape[1])
    pca = PCA(n_components=components, svd_solver="randomized", random_state=0).fit(stacked)
    projected = np.zeros((len(stacked), 3), dtype=np.float32)
    projected[:, :components] = pca.transform(stacked)
    low, high = projected.min(axis=0), projected.max(axis=0)
    scaled = (projected - low) / np.where(high > low, high - low, 1.0)
    parts = np.split(scaled, np.cumsum([len(t) for t in tokens])[:-1])
    variance = np.zeros(3, dtype=np.float32)
    variance[:components] = pca.explained_variance_ratio_
    return parts, variance


def dense_pca(model: LoadedModel, images: ImageInput | list[ImageInput], max_patches: int | None = None,
              joint: bool = True) -> DensePCA:
    """PCA of the patch features to RGB, fitted jointly over `images` (or per image with joint=False)."""
    images = images if isinstance(images, list) else [images]
    traces = trace_images(model, images, max_patches)
    tokens = [trace.features.tokens.numpy() for trace in traces]
    if joint:
        parts, variance = _pca_colours(tokens)
    else:
        fits = [_pca_colours([t]) for t in tokens]
        parts, variance = [fit[0][0] for fit in fits], fits[0][1]
    colours = [part.reshape(*trace.shape, 3) for part, trace in zip(parts, traces)]
    return DensePCA(traces, colours, variance, joint)


@dataclass
class PatchSimilarity:
    """Cosine similarity of one patch's features to every patch of its image (and of a second image)."""

    trace: ImageTrace
    row: int
    col: int
    similarity: np.ndarray  # (rows, cols) float32 in [-1, 1]
    second: ImageTrace | None = None
    second_similarity: np.ndarray | None = None  # (rows2, cols2) float32


def patch_similarity(model: LoadedModel, image: ImageInput, row: int, col: int,
                     second_image: ImageInput | None = None, max_patches: int | None = None) -> PatchSimilarity:
    images = [image] + ([second_image] if second_image is not None else [])
    traces = trace_images(model, images, max_patches)
    anchor = traces[0].check_patch(row, col)
    normed = [torch.nn.functional.normalize(t.features.tokens, dim=-1) for t in traces]
    query = normed[0][anchor]
    maps = [as_grid((tokens @ query).numpy().astype(np.float32), trace) for tokens, trace in zip(normed, traces)]
    result = PatchSimilarity(traces[0], int(row), int(col), maps[0])
    if len(traces) > 1:
        result.second, result.second_similarity = traces[1], maps[1]
    return result

