"""Per-patch features of the vision tower, shared by inspection and training.

One forward pass gives the final, post-LayerNorm patch tokens (what the pooling head reads) and the pooled
image embedding; padding patches of a NaFlex batch are dropped, so every array is on the image's own grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .loading import LoadedModel
from .preprocess import ImagePreprocessor, PatchGrid, PreparedImage


@dataclass
class PatchFeatures:
    """One image's features; token rows are the grid's patches in row-major order."""

    grid: PatchGrid
    tokens: torch.Tensor  # (rows*cols, dim) float32 on the CPU: final patch tokens after the post-LayerNorm
    pooled: torch.Tensor  # (dim,) float32: the pooling head's output, the image embedding before L2 normalisation
    layer_inputs: list[torch.Tensor] | None = None  # per encoder layer, its input (rows*cols, dim), when asked for


def vision_tower(model: LoadedModel) -> torch.nn.Module:
    return model.model.vision_model


def patch_features(model: LoadedModel, prepared: list[PreparedImage], preprocessor: ImagePreprocessor | None = None,
                   layer_inputs: bool = False) -> list[PatchFeatures]:
    """Features of images prepared by `preprocessor` (default: the model's), in one forward pass;
    `layer_inputs` also keeps each encoder layer's input."""
    batch = (preprocessor or model.image_preprocessor).collate(prepared)
    with torch.inference_mode():
        output = vision_tower(model)(**batch.model_inputs(model.device, model.dtype),
                                     output_hidden_states=layer_inputs)
    found = []
    for row, grid in enumerate(batch.grids):
        count = grid.num_patches
        layers = None
        if layer_inputs:  # hidden_states[0] is the embeddings' output, [i] the input of layer i
            layers = [h[row, :count].float().cpu() for h in output.hidden_states[:-1]]
        found.append(PatchFeatures(grid, output.last_hidden_state[row, :count].float().cpu(),
                                   output.pooler_output[row].float().cpu(), layers))
    return found
