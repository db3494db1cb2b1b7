"""Zero-shot labelling: per image and label, logit = exp(t)·cos + b and probability = sigmoid(logit).

SigLIP's probabilities are independent per label (multi-label by nature); a softmax over labels is only
offered as an explicitly named alternative view.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import LabelError
from ..model.encode import ImageFailure, ProgressCallback, encode_images, encode_texts
from ..model.images import ImageInput
from ..model.loading import LoadedModel
from ..model.score import logits_for, sigmoid
from ..model.text import grouped, lowercase_ascii, short_text

DEFAULT_TEMPLATES = ("this is a photo of {}.",)
MAX_LABELS = 1000
_LABEL_CACHE_SIZE = 32


def parse_labels(text: str) -> list[str]:
    """Labels from one string: one per line if several lines hold text (a label may hold commas; a comma ending
    a line is dropped), else comma-separated."""
    lines = [line.strip(" \t,") for line in text.splitlines()]
    if sum(map(bool, lines)) > 1:
        return lines
    return [part.strip() for part in text.strip().split(",")]


def parse_templates(text: str | Sequence[str] | None) -> list[str]:
    """Prompt templates, one per line (or a list); none given: DEFAULT_TEMPLATES."""
    items = [t.strip() for t in ((text or "").splitlines() if isinstance(text, str) or text is None else text)]
    return [t for t in items if t] or list(DEFAULT_TEMPLATES)


@dataclass
class LabelSet:
    """Labels with their text embeddings, computed once and reused for every image."""

    labels: list[str]
    templates: list[str]
    text_vectors: np.ndarray  # (n_labels, dim) float32, mean over templates, L2-normalised
    warnings: list[str] = field(default_factory=list)
    encode_warnings: list[str] = field(default_factory=list)  # the prompts' own (cached with their vectors)


def clean_labels(labels: Sequence[str] | str) -> tuple[list[str], list[str]]:
    """Strip, drop empty and duplicate labels; returns (labels, warnings) or raises LabelError."""
    raw = parse_labels(labels) if isinstance(labels, str) else [str(label).strip() for label in labels]
    kept, seen, duplicates = [], {}, []
    empty = sum(1 for label in raw if not label)
    warnings = [f"{empty} empty label(s) ignored"] if empty else []
    for label in (label for label in raw if label):
        key = lowercase_ascii(label)  # the model sees lowercased text: "Cat" and "cat" are one label
        if key in seen:
            duplicates.append(repr(short_text(label)))
            continue
        seen[key] = label
        kept.append(label)
    warnings += grouped(duplicates, "duplicate label(s) ignored (labels are compared lowercased)")
    with_commas = [label for label in kept if "," in label] if isinstance(labels, str) else []
    if with_commas:  # said, in case they were meant to separate labels
        warnings.append(f"{short_text(with_commas[0])!r} is one label: with several lines, each line is one label, "
                        "commas included (to separate labels by commas, put them all on one line)")
    if not kept:
        raise LabelError("No labels given: enter at least one label (one per line, or separated by commas).")
    if len(kept) > MAX_LABELS:
        raise LabelError(f"{len(kept)} labels is more than the limit of {MAX_LABELS}; split them into several runs.")
    return kept, warnings


def check_templates(templates: Sequence[str]) -> None:
    for template in templates:
        if template.count("{}") != 1:
            raise LabelError(f"Prompt template {template!r} must contain '{{}}' exactly once, where the label goes.")


_label_sets: weakref.WeakKeyDictionary[LoadedModel, OrderedDict] = weakref.WeakKeyDictionary()


def prepare_labels(model: LoadedModel, labels: Sequence[str] | str,
                   templates: Sequence[str] | str | None = None) -> LabelSet:
    """Embed a label set (averaging over templates); cached per model, labels and templates."""
    kept, warnings = clean_labels(labels)
    template_list = parse_templates(templates)
    check_templates(template_list)
    key = (tuple(kept), tuple(template_list), model.tokenizer.lowercase)
    cache = _label_sets.setdefault(model, OrderedDict())
    if key in cache:  # the input's own warnings, the cached encoding's (the same input may be typed otherwise)
        cached = cache[key]
        return replace(cached, warnings=warnings + cached.encode_warnings)
    prompts = [template.format(label) for label in kept for template in template_list]
    encoded = encode_texts(model, prompts)
    per_template = encoded.vectors.reshape(len(kept), len(template_list), -1).mean(axis=1)
    vectors = per_template / np.linalg.norm(per_template, axis=1, keepdims=True)
    label_set = LabelSet(kept, template_list, vectors.astype(np.float32), warnings + encoded.warnings,
                         encoded.warnings)
    if len(cache) >= _LABEL_CACHE_SIZE:
        cache.popitem(last=False)
    cache[key] = label_set
    return label_set


@dataclass
class ZeroShotResult:
    labels: list[str]
    sources: list[str]  # one per row
    logits: np.ndarray  # (n_images, n_labels) float32
    probabilities: np.ndarray  # (n_images, n_labels) sigmoid(logits), independent per label
    failures: list[ImageFailure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    untrained: bool = False  # produced by a random-weight test model

    def softmax_over_labels(self) -> np.ndarray:
        """Alternative single-label view: softmax of the logits across labels (rows sum to 1)."""
        shifted = self.logits - self.logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)

    def top(self, row: int, k: int = 5) -> list[tuple[str, float]]:
        order = np.argsort(-self.probabilities[row])[:k]
        return [(self.labels[i], float(self.probabilities[row, i])) for i in order]

    def records(self) -> list[dict]:
        """One JSON-ready record per image: each label's logit and probability."""
        return [
            {"image": source,
             "scores": [{"label": label, "logit": float(self.logits[row, col]),
                         "probability": float(self.probabilities[row, col])}
                        for col, label in enumerate(self.labels)]}
            for row, source in enumerate(self.sources)
        ]


def classify(
    model: LoadedModel,
    images: Sequence[ImageInput],
    labels: Sequence[str] | str | LabelSet,
    templates: Sequence[str] | str | None = None,
    bias: float | None = None,
    batch_size: int = 32,
    progress: ProgressCallback | None = None,
) -> ZeroShotResult:
    """Label images zero-shot; unreadable images are reported in `failures`, never dropping the rest."""
    label_set = labels if isinstance(labels, LabelSet) else prepare_labels(model, labels, templates)
    embedded = encode_images(model, images, batch_size=batch_size, progress=progress)
    logits = logits_for(model, embedded.vectors, label_set.text_vectors, bias)
    return ZeroShotResult(label_set.labels, embedded.sources, logits, sigmoid(logits), embedded.failures,
                          list(label_set.warnings), model.untrained)


