"""NaFlex position embeddings resized once per patch grid in a batch, not once per image.

transformers' `Siglip2VisionEmbeddings.resize_positional_embeddings` interpolates the learned grid for each
image in a Python loop: about a dozen small operations an image, which in an index build on a GPU took more
of the host's time than the rest of the encode (bench/gpu_stages.py). Photos share a few aspect ratios, so
a batch holds few distinct grids: each is resized once, by the same call (the same values), and the rows
are stacked.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F


def resize_once_per_grid(positional_embeddings: torch.Tensor, spatial_shapes: torch.Tensor,
                         max_length: int) -> torch.Tensor:
    """(side, side, dim) learned grid and (n, 2) rows, cols -> (n, max_length, dim): the grid resized to each
    image's rows × cols, then padded with its first position, as transformers does."""
    embed_dim, dtype = positional_embeddings.shape[-1], positional_embeddings.dtype
    grid = positional_embeddings.permute(2, 0, 1).unsqueeze(0)
    if grid.device.type == "cpu":  # no antialiased bf16/fp16 interpolation on the CPU
        grid = grid.to(torch.float32)
    padded: dict[tuple[int, int], torch.Tensor] = {}
    rows = []
    for height, width in spatial_shapes.tolist():
        if (height, width) not in padded:
            if not (height > 0 and width > 0 and height * width <= max_length):
                raise ValueError(f"a patch grid of {height} × {width} does not fit {max_length} positions")
            resized = F.interpolate(grid, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
            resized = resized.reshape(embed_dim, height * width).transpose(0, 1).to(dtype)
            padding = resized[:1].expand(max_length - height * width, embed_dim)
            padded[(height, width)] = torch.cat([resized, padding])
        rows.append(padded[(height, width)])
    return torch.stack(rows) if rows else grid.new_empty((0, max_length, embed_dim), dtype=dtype)


def resize_positions_once_per_grid(model: torch.nn.Module) -> None:
    """Make a loaded SigLIP 2 NaFlex model use `resize_once_per_grid` (fixed-resolution models are left)."""
    vision = getattr(model, "vision_model", None)
    embeddings = getattr(vision, "embeddings", None)
    theirs = getattr(type(embeddings), "resize_positional_embeddings", None)
    if theirs is not None and _parameters(theirs) == _parameters(resize_once_per_grid):  # a changed call: leave it
        embeddings.resize_positional_embeddings = resize_once_per_grid  # shadows transformers' staticmethod


def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)
