"""The pooling (MAP) head, opened up: its probe's attention over the patches, and each patch sent alone
through its value path (value projection → output projection → LayerNorm + MLP residual).

Because the head's attention output is Σ_heads Σ_patches a[h, i] · W_o,h v[h, i] + b_o with each head's
weights summing to 1, a patch's value-path output is what the pooled embedding would be if the probe
attended to that patch alone (up to the non-linear MLP): the basis of the "value" similarity map.
"""

from __future__ import annotations

import torch

from ..model.features import vision_tower
from ..model.loading import LoadedModel


def pooling_head(model: LoadedModel) -> torch.nn.Module:
    return vision_tower(model).head


def _as_model_input(model: LoadedModel, tokens: torch.Tensor) -> torch.Tensor:
    return tokens.to(device=model.device, dtype=model.dtype)[None]


@torch.inference_mode()
def probe_attention(model: LoadedModel, tokens: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
    """(heads, n) attention of the probe over `tokens` (n, dim); `padding` (n,) bool marks masked positions.

    Each head's row sums to 1 over the unmasked positions and is 0 on masked ones."""
    attention = pooling_head(model).attention
    x = _as_model_input(model, tokens)
    mask = None if padding is None else padding.to(model.device)[None]
    _, weights = attention(pooling_head(model).probe, x, x, key_padding_mask=mask, need_weights=True,
                           average_attn_weights=False)
    return weights[0, :, 0].float().cpu()  # (1, heads, 1, n) → (heads, n)


@torch.inference_mode()
def head_value_projections(model: LoadedModel, tokens: torch.Tensor) -> torch.Tensor:
    """(heads, n, dim): W_o,h · v[h, i], each head's share of the output projection of each patch's value."""
    attention = pooling_head(model).attention
    dim, heads = attention.embed_dim, attention.num_heads
    head_dim = dim // heads
    x = tokens.to(device=model.device, dtype=model.dtype)
    values = x @ attention.in_proj_weight[2 * dim:].T + attention.in_proj_bias[2 * dim:]  # (n, dim)
    per_head = values.reshape(len(x), heads, head_dim).transpose(0, 1)  # (heads, n, head_dim)
    out_weight = attention.out_proj.weight.reshape(dim, heads, head_dim).permute(1, 2, 0)  # (heads, head_dim, dim)
    return (per_head @ out_weight).float().cpu()


@torch.inference_mode()
def value_path_outputs(model: LoadedModel, tokens: torch.Tensor) -> torch.Tensor:
    """(n, dim): each patch alone through the head's value path, output projection and LayerNorm + MLP residual."""
    head = pooling_head(model)
    x = tokens.to(device=model.device, dtype=model.dtype)
    attended = head.attention.out_proj(x @ head.attention.in_proj_weight[2 * x.shape[-1]:].T
                                       + head.attention.in_proj_bias[2 * x.shape[-1]:])
    return (attended + head.mlp(head.layernorm(attended))).float().cpu()


def pooled_embedding(model: LoadedModel, tokens: torch.Tensor) -> torch.Tensor:
    """(dim,) the head's output on `tokens` (n, dim), differentiable: the image embedding before normalisation."""
    if tokens.is_inference():  # features come from inference mode; autograd needs an ordinary tensor
        tokens = tokens.clone()
    return pooling_head(model)(_as_model_input(model, tokens))[0].float()
