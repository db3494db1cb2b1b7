"""How an image becomes patches: the NaFlex aspect-preserving grid (or the fixed square), the padding, and
how the learned position grid is stretched to it. Preprocessing only: no forward pass."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..model.features import vision_tower
from ..model.images import ImageInput, open_image, source_name
from ..model.loading import LoadedModel
from ..model.preprocess import PatchGrid
from .trace import preprocessor_for


@dataclass
class PositionGrid:
    """The learned position embeddings, as colours of their first three principal components (one fit)."""

    learned: np.ndarray  # (side, side, 3) float32 in [0, 1]: the grid as trained
    stretched: np.ndarray  # (rows, cols, 3) float32 in [0, 1]: resized to this image's grid, as the model does
    norms: np.ndarray  # (side, side) float32: L2 norm of each learned embedding (a few are extreme)
    stretched_embeddings: np.ndarray  # (rows, cols, dim) float32: what the model adds to this image's patches


@dataclass
class GridView:
    """One image's patch layout for a model, beside the squashed square a fixed-resolution model sees."""

    source: str
    image: Image.Image  # the decoded original
    arch: str
    grid: PatchGrid  # the model's own layout of this image
    squashed: PatchGrid  # the fixed-resolution layout (for a fixed model: the same as `grid`)
    positions: PositionGrid

    def info(self) -> dict:
        """rows, cols, real and padding patch counts, and the resized width and height."""
        return {"rows": self.grid.rows, "cols": self.grid.cols, "real_patches": self.grid.num_patches,
                "padding_patches": self.grid.num_padding, "width": self.grid.resized_width,
                "height": self.grid.resized_height}


def _squashed_grid(image: Image.Image, patch: int, side: int) -> PatchGrid:
    return PatchGrid(image.height, image.width, side * patch, side * patch, patch, side, side, side * side)


def _position_colours(model: LoadedModel, grid: PatchGrid) -> PositionGrid:
    from sklearn.decomposition import PCA

    embeddings = vision_tower(model).embeddings
    learned = embeddings.position_embedding.weight.detach().float().cpu()  # (side*side, dim)
    side = int(round(math.sqrt(len(learned))))
    square = learned.reshape(side, side, -1)
    if model.arch == "naflex":
        shapes = torch.tensor([[grid.rows, grid.cols]])
        stretched = type(embeddings).resize_positional_embeddings(square, shapes, grid.num_patches)[0]
    else:
        stretched = learned
    pca = PCA(n_components=3, svd_solver="randomized", random_state=0).fit(learned.numpy())
    before, after = pca.transform(learned.numpy()), pca.transform(stretched.numpy())
    low, high = before.min(axis=0), before.max(axis=0)
    scale = np.where(high > low, high - low, 1.0)
    to_colour = lambda values: np.clip((values - low) / scale, 0, 1).astype(np.float32)  # noqa: E731
    rows, cols = (grid.rows, grid.cols) if model.arch == "naflex" else (side, side)
    return PositionGrid(to_colour(before).reshape(side, side, 3), to_colour(after).reshape(rows, cols, 3),
                        learned.norm(dim=-1).numpy().reshape(side, side).astype(np.float32),
                        stretched.numpy().reshape(rows, cols, -1).astype(np.float32))


def patch_grid(model: LoadedModel, image: ImageInput, max_patches: int | None = None) -> GridView:
    """The patch layout of `image` at `max_patches` (NaFlex; ignored by fixed-resolution models)."""
    preprocessor = preprocessor_for(model, max_patches)
    decoded = open_image(image)
    grid = preprocessor(decoded).grid
    if model.arch == "naflex":
        squashed = _squashed_grid(decoded, preprocessor.patch_size, max(1, math.isqrt(preprocessor.max_num_patches)))
    else:
        squashed = grid
    return GridView(source_name(image), decoded, model.arch, grid, squashed, _position_colours(model, grid))
