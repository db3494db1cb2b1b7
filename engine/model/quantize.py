"""The int8 CPU fast path: dynamic int8 quantization of both towers' transformer encoders.

Only the encoder blocks' Linear layers (attention projections and MLPs, about 95 % of the multiply-adds at
256 patches) become int8: weights per output channel, activations quantized per batch on the fly. What
stays exact, and why:
- the patch embedding and the position grids (fixed or NaFlex-interpolated): they act on raw pixels and
  positions, where a quantization error reaches every later layer;
- the attention-pooling head of the image tower and the linear head of the text tower: they write the
  embedding itself, so any error there lands directly in the cosine, and they are a few % of the work;
- LayerNorms, softmax and attention itself (SDPA in fp32).
One thing changes besides: the encoders' GELU is computed in its exact (erf) form instead of the tanh
approximation the checkpoints were trained with. The two differ by at most 5e-4 per activation, far below one
int8 step, and torch's tanh kernel costs about 3× the erf one here (6 % of an int8 image encode, cosine to
fp32 unchanged at 5 digits). It is written over its input, the MLP's first projection that nothing else
reads (a forward hook on `fc1` that keeps its output would see it changed), which spares a buffer of batch ×
tokens × the MLP's width per layer (25 MB for 8 images at 256 patches with B/16): about 8 % of an int8 image
encode on 2 AVX2 cores. Each attention's query, key and value projections become one matmul
(`FusedQKVAttention`): its input is quantized once instead of three times and the larger matmul runs a
little faster; the outputs are the same to the bit, as weight scales are per output row (3 % of an int8
image encode on 2 AVX2 cores, alternating runs of a one-off script).

Dynamic quantization ships with torch (`torch.ao.quantization.quantize_dynamic`; torch marks it as
deprecated in favour of torchao, which is not a dependency here) and runs on CPU kernels only. The weights
are packed for oneDNN where this torch has it: on an AVX2 CPU its single int8 matmuls ran about 1.2× fbgemm's
(torch's default), whole encodes 1.00–1.14× for images and 1.10–1.28× for texts in three runs, at the same
cosine (`python bench/encode.py --int8-kernels`).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings

import torch

INT8 = "int8"
TOWERS = ("vision", "text")


def ignore_quantization_notices() -> None:
    """Hide torch's notices that torch.ao is deprecated, given at every quantization: users cannot act on
    them. Filters for these messages alone, added for good (idempotent) rather than warnings.catch_warnings
    around each call, which is not thread-safe: two loads at once can leave its blanket "ignore" in force."""
    warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel",
                            category=UserWarning)


def encoder_towers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The two towers of a SiglipModel / Siglip2Model by name; the int8 paths replace each one's `.encoder`."""
    return dict(zip(TOWERS, (model.vision_model, model.text_model)))


def int8_kernels() -> str:
    """The quantized engine int8 weights are packed for: "onednn" where this torch build has it."""
    engines = torch.backends.quantized.supported_engines
    return "onednn" if "onednn" in engines else torch.backends.quantized.engine


@contextlib.contextmanager
def _packing_for(engine: str):
    # weights are packed for the engine current at quantization; the packed weights pick their kernels after
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def _dynamic_linear_type() -> type:
    from torch.ao.nn.quantized.dynamic import Linear

    return Linear


class InPlaceGELU(torch.nn.Module):
    """Exact (erf) GELU written over its input; out of place where autograd needs the input."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.requires_grad and torch.is_grad_enabled():
            return torch.nn.functional.gelu(hidden_states)
        return torch.ops.aten.gelu_(hidden_states)


def _exact_gelu(encoder: torch.nn.Module) -> None:
    from transformers.activations import GELUTanh

    for module in encoder.modules():
        if isinstance(getattr(module, "activation_fn", None), GELUTanh):
            module.activation_fn = InPlaceGELU()


class FusedQKVAttention(torch.nn.Module):
    """A SigLIP encoder's attention block with its q, k and v projections stacked into one Linear (`qkv_proj`);
    otherwise transformers' own forward (same attention function, scale, mask and outputs). Mixed into the
    block's own class (`fuse_query_key_value`), so that transformers still finds it, e.g. to record attentions."""

    def projections(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(queries, keys, values), each (..., tokens, embed_dim)."""
        return self.qkv_proj(hidden_states).chunk(3, dim=-1)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        by_head = (*hidden_states.shape[:-1], -1, self.head_dim)
        queries, keys, values = (part.view(by_head).transpose(1, 2) for part in self.projections(hidden_states))
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, self.eager_attention)
        output, weights = attention(self, queries, keys, values, attention_mask, is_causal=self.is_causal,
                                    scaling=self.scale, dropout=self.dropout if self.training else 0.0)
        return self.out_proj(output.reshape(*hidden_states.shape[:-1], -1).contiguous()), weights


FUSED_PREFIX = "FusedQKV"


@functools.cache
def _fused_class(attention_class: type) -> type:
    # the eager attention function of the block's own modelling file, as its forward uses
    eager = staticmethod(sys.modules[attention_class.__module__].eager_attention_forward)
    name = f"{FUSED_PREFIX}{attention_class.__name__}"
    return type(name, (FusedQKVAttention, attention_class),
                {"eager_attention": eager, "__module__": __name__, "__qualname__": name})


def __getattr__(name: str) -> type:
    """The fused classes by name (engine.model.quantize.FusedQKVSiglip2Attention), made on first use: so that
    pickle finds them, also in a process that has not quantized a model yet."""
    if name.startswith(FUSED_PREFIX):
        from transformers.models.siglip import modeling_siglip
        from transformers.models.siglip2 import modeling_siglip2

        for modelling in (modeling_siglip2, modeling_siglip):
            attention_class = getattr(modelling, name[len(FUSED_PREFIX):], None)
            if isinstance(attention_class, type):
                return _fused_class(attention_class)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def fuse_query_key_value(attention: torch.nn.Module) -> None:
    """Stack `attention`'s q_proj, k_proj and v_proj into one `qkv_proj`, in place."""
    projections = (attention.q_proj, attention.k_proj, attention.v_proj)
    stacked = torch.nn.Linear(attention.q_proj.in_features, 3 * attention.q_proj.out_features,
                              device=attention.q_proj.weight.device, dtype=attention.q_proj.weight.dtype)
    with torch.no_grad():
        stacked.weight.copy_(torch.cat([projection.weight for projection in projections]))
        stacked.bias.copy_(torch.cat([projection.bias for projection in projections]))
    del attention.q_proj, attention.k_proj, attention.v_proj
    attention.qkv_proj = stacked
    attention.__class__ = _fused_class(type(attention))


def query_key_projections(attention: torch.nn.Module, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(queries, keys), each (..., tokens, embed_dim), of an encoder attention block, fused or not."""
    if isinstance(attention, FusedQKVAttention):
        queries, keys, _ = attention.projections(hidden_states)
        return queries, keys
    return attention.q_proj(hidden_states), attention.k_proj(hidden_states)


def quantize_int8(model: torch.nn.Module, kernels: str | None = None) -> torch.nn.Module:
    """Quantize `model`'s two encoders in place (fp32, on CPU, in eval mode) for `kernels` (a quantized
    engine; default `int8_kernels()`); returns the model."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    ignore_quantization_notices()
    with _packing_for(kernels or int8_kernels()):
        for tower in encoder_towers(model).values():
            for layer in tower.encoder.layers:
                fuse_query_key_value(layer.self_attn)
            # per-channel weight scales: a few output rows with large weights do not flatten the rest
            tower.encoder = quantize_dynamic(tower.encoder, {torch.nn.Linear: per_channel_dynamic_qconfig},
                                             dtype=torch.qint8, inplace=True)
            _exact_gelu(tower.encoder)
    return model


def quantized_linears(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The dynamic int8 Linear modules of `model` (empty for a model that was not quantized)."""
    linear = _dynamic_linear_type()
    return [module for module in model.modules() if isinstance(module, linear)]


def packed_weights(model: torch.nn.Module) -> tuple[int, int]:
    """(values, bytes) of the int8 weights and fp32 biases, which `parameters()` no longer lists (torch's
    packed Linears, and the encoders OpenVINO holds: engine.model.openvino_int8)."""
    values = size = 0
    for module in model.modules():
        held = getattr(module, "packed_weights", None)
        if isinstance(held, tuple):
            values, size = values + held[0], size + held[1]
    for module in quantized_linears(model):
        weight, bias = module._weight_bias()
        values += weight.numel()
        size += weight.numel() * weight.element_size()
        if bias is not None:
            values += bias.numel()
            size += bias.numel() * bias.element_size()
    return values, size
