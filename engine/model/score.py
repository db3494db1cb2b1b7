"""The SigLIP score, a property of the model: logit = exp(t)·cos + b, probability = sigmoid(logit).

Each image–text probability is independent (they do not sum to 1 over texts); t and b are the
checkpoint's own learned scale and bias.
"""

from __future__ import annotations

import numpy as np

from .loading import LoadedModel


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def logits_from_cosine(model: LoadedModel, cosine: np.ndarray, bias: float | None = None) -> np.ndarray:
    """SigLIP logits exp(t)·cos + b, with the model's scale and (unless overridden) its bias; same shape."""
    bias = model.logit_bias if bias is None else bias
    return (model.logit_scale * np.asarray(cosine, dtype=np.float32) + bias).astype(np.float32)


def probabilities_from_cosine(model: LoadedModel, cosine: np.ndarray, bias: float | None = None) -> np.ndarray:
    """sigmoid(exp(t)·cos + b); same shape as `cosine`."""
    return sigmoid(logits_from_cosine(model, cosine, bias))


def logits_for(model: LoadedModel, image_vectors: np.ndarray, text_vectors: np.ndarray,
               bias: float | None = None) -> np.ndarray:
    """(n_images, n_texts) SigLIP logits of L2-normalised image (n_images, dim) and text (n_texts, dim) vectors."""
    return logits_from_cosine(model, image_vectors @ text_vectors.T, bias)
