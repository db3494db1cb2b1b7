"""Attention, on the image's real patch grid: the pooling head's probe over every patch (per head), and one
encoder layer's attention from a chosen patch (computed on demand, like eager attention)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InspectError
from ..model.features import patch_features, vision_tower
from ..model.images import ImageInput
from ..model.loading import LoadedModel
from ..model.openvino_int8 import OPENVINO_INT8
from ..model.quantize import query_key_projections
from .head import probe_attention
from .trace import ImageTrace, as_grid, trace_image


@dataclass
class AttentionMap:
    """The pooling head's probe attention; each head sums to 1 over the real patches."""

    trace: ImageTrace
    weights: np.ndarray  # (heads, rows, cols) float32

    @property
    def mean(self) -> np.ndarray:
        """(rows, cols) averaged over heads."""
        return self.weights.mean(axis=0)


def attention_map(model: LoadedModel, image: ImageInput, max_patches: int | None = None) -> AttentionMap:
    trace = trace_image(model, image, max_patches)
    return AttentionMap(trace, as_grid(probe_attention(model, trace.features.tokens).numpy(), trace))


@dataclass
class LayerAttention:
    """Where patch (row, col) looks in one encoder layer and head; sums to 1 over the real patches."""

    trace: ImageTrace
    layer: int
    head: int
    row: int
    col: int
    weights: np.ndarray  # (rows, cols) float32


def encoder_shape(model: LoadedModel) -> tuple[int, int]:
    """(layers, heads) of the vision encoder."""
    config = vision_tower(model).config
    return config.num_hidden_layers, config.num_attention_heads


def _check_layer_and_head(model: LoadedModel, layer: int, head: int) -> tuple[int, int]:
    layers, heads = encoder_shape(model)
    if not 0 <= int(layer) < layers:
        raise InspectError(f"Layer {layer} does not exist: this model has layers 0–{layers - 1}.")
    if not 0 <= int(head) < heads:
        raise InspectError(f"Head {head} does not exist: this model has heads 0–{heads - 1}.")
    return int(layer), int(head)


@torch.inference_mode()
def layer_attention(model: LoadedModel, image: ImageInput, max_patches: int | None = None, layer: int = 0,
                    head: int = 0, row: int = 0, col: int = 0) -> LayerAttention:
    """softmax(q·kᵀ/√d) of patch (row, col)'s query over every real patch in `layer`, `head`."""
    layer, head = _check_layer_and_head(model, layer, head)
    if model.quantization == OPENVINO_INT8:
        raise InspectError("Layer attention needs the encoder's own layers, which OpenVINO compiles into one graph: "
                           "load the model in fp32 or int8 for this view.")
    trace = trace_image(model, image, max_patches)
    query = trace.check_patch(row, col)
    prepared = trace.preprocessor(trace.image)
    hidden = patch_features(model, [prepared], trace.preprocessor, layer_inputs=True)[0].layer_inputs[layer]
    block = vision_tower(model).encoder.layers[layer]
    attention = block.self_attn
    normed = block.layer_norm1(hidden.to(device=model.device, dtype=model.dtype))
    span = slice(head * attention.head_dim, (head + 1) * attention.head_dim)
    queries, keys = query_key_projections(attention, normed)
    q, k = queries[query:query + 1, span], keys[:, span]
    weights = torch.softmax((q @ k.T).float() * attention.scale, dim=-1)[0]
    return LayerAttention(trace, layer, head, int(row), int(col), as_grid(weights.cpu().numpy(), trace))
