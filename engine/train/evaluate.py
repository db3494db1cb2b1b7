"""Evaluation: zero-shot top-1/top-5 on labelled images and image↔text recall@1/5/10 on captions, as
big_vision does it (canonicalised class names and templates, the 80 clip_paper templates averaged per
class, or the user's own); reports as JSON-ready dicts and before/after tables."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..errors import TrainError
from ..model.encode import ProgressCallback, embed_pixel_batch, encode_texts
from ..model.loading import LoadedModel
from .data import TrainData, load_example_image
from .templates import class_prompts

RECALL_AT = (1, 5, 10)


@dataclass
class EvalReport:
    """Metrics as fractions in [0, 1]: `top1`/`top5` (zero-shot), `recall@k` (image→text) and
    `text_recall@k` (text→image)."""

    metrics: dict[str, float]
    num_images: int
    num_texts: int = 0
    num_classes: int = 0
    skipped: list[str] = field(default_factory=list)  # unreadable images, "path: reason"

    def to_dict(self) -> dict:
        return asdict(self)


def embed_examples(model: LoadedModel, data: TrainData, batch_size: int = 32,
                   progress: ProgressCallback | None = None) -> tuple[np.ndarray, list[int], list[str]]:
    """(n_read, dim) normalised image vectors, the positions they came from, and skipped-image notes."""
    from ..errors import ImageReadError
    from ..model.encode import ordered_parallel_map

    def prepare(position):
        try:
            return position, model.image_preprocessor(load_example_image(data.examples[position])), None
        except ImageReadError as error:
            return position, None, str(error)

    vectors, kept, skipped, pending = [], [], [], []
    was_training = model.model.training
    model.model.eval()
    try:
        for position, prepared, problem in ordered_parallel_map(prepare, range(len(data))):
            if problem:
                skipped.append(problem)
                continue
            pending.append((position, prepared))
            if len(pending) == batch_size or position == len(data) - 1:
                vectors.append(embed_pixel_batch(model, [p for _, p in pending]))
                kept += [i for i, _ in pending]
                pending = []
                if progress:
                    progress(len(kept) + len(skipped), len(data))
        if pending:
            vectors.append(embed_pixel_batch(model, [p for _, p in pending]))
            kept += [i for i, _ in pending]
    finally:
        model.model.train(was_training)
    if not vectors:
        raise TrainError(f"{data.source}: none of the {len(data)} images could be read.")
    return np.concatenate(vectors), kept, skipped


def class_vectors(model: LoadedModel, classes: list[str], templates=None, canonicalize: bool = True) -> np.ndarray:
    """(n_classes, dim): per class, the mean of its template embeddings, L2-normalised."""
    prompts = class_prompts(classes, templates, canonicalize)
    was_training = model.model.training
    model.model.eval()
    try:
        flat = encode_texts(model, [p for per_class in prompts for p in per_class]).vectors
    finally:
        model.model.train(was_training)
    mean = flat.reshape(len(classes), len(prompts[0]), -1).mean(axis=1)
    return mean / np.linalg.norm(mean, axis=1, keepdims=True)


def zero_shot(model: LoadedModel, data: TrainData, templates=None, canonicalize: bool = True,
              progress: ProgressCallback | None = None) -> EvalReport:
    """Top-1 and top-5 zero-shot accuracy over `data.classes` (top-5 only with more than five classes, where
    it can miss)."""
    if not data.classes:
        raise TrainError(f"{data.source}: zero-shot accuracy needs classes (class subfolders or a label column).")
    images, kept, skipped = embed_examples(model, data, progress=progress)
    scores = images @ class_vectors(model, data.classes, templates, canonicalize).T
    truth = np.array([data.examples[i].label for i in kept])
    order = np.argsort(-scores, axis=1)
    metrics = {f"top{k}": float((order[:, :k] == truth[:, None]).any(axis=1).mean())
               for k in (1, 5) if k == 1 or k < len(data.classes)}
    return EvalReport(metrics, len(kept), num_classes=len(data.classes), skipped=skipped)


def retrieval(model: LoadedModel, data: TrainData, progress: ProgressCallback | None = None) -> EvalReport:
    """Image→text and text→image recall@1/5/10 over every caption of every image."""
    images, kept, skipped = embed_examples(model, data, progress=progress)
    texts, owner = [], []
    for row, position in enumerate(kept):
        for caption in data.examples[position].captions:
            texts.append(caption)
            owner.append(row)
    if not texts:
        raise TrainError(f"{data.source}: retrieval needs captions.")
    was_training = model.model.training
    model.model.eval()
    try:
        text_vectors = encode_texts(model, texts).vectors
    finally:
        model.model.train(was_training)
    owner = np.array(owner)
    similarity = torch.from_numpy(images @ text_vectors.T)  # (n_images, n_texts)
    metrics = {}
    ranked_texts = similarity.argsort(dim=1, descending=True).numpy()  # per image, texts best first
    ranked_images = similarity.T.argsort(dim=1, descending=True).numpy()  # per text, images best first
    for k in RECALL_AT:
        metrics[f"recall@{k}"] = float((owner[ranked_texts[:, :k]] == np.arange(len(kept))[:, None]).any(1).mean())
    for k in RECALL_AT:
        metrics[f"text_recall@{k}"] = float((ranked_images[:, :k] == owner[:, None]).any(1).mean())
    return EvalReport(metrics, len(kept), num_texts=len(texts), skipped=skipped)


def evaluate(model: LoadedModel, data: TrainData, templates=None, canonicalize: bool = True,
             progress: ProgressCallback | None = None) -> EvalReport:
    """Zero-shot accuracy when the data has classes, retrieval recall when it has captions, or both."""
    if data.classes and data.has_captions:
        first, second = zero_shot(model, data, templates, canonicalize, progress), retrieval(model, data)
        return EvalReport({**first.metrics, **second.metrics}, first.num_images, second.num_texts,
                          first.num_classes, first.skipped)
    if data.classes:
        return zero_shot(model, data, templates, canonicalize, progress)
    return retrieval(model, data, progress)


def headline(report: EvalReport) -> tuple[str, float]:
    """The one number a validation curve follows: top-1 accuracy, else image→text recall@1."""
    key = "top1" if "top1" in report.metrics else "recall@1"
    return key, report.metrics[key]


def comparison_table(before: EvalReport | None, after: EvalReport) -> str:
    """A plain-text before/after table (percentages)."""
    rows = [f"{'metric':<16}{'before':>10}{'after':>10}{'change':>10}"]
    for key, value in after.metrics.items():
        old = before.metrics.get(key) if before else None
        change = f"{100 * (value - old):+10.1f}" if old is not None else f"{'':>10}"
        rows.append(f"{key:<16}{'' if old is None else f'{100 * old:.1f}':>10}{100 * value:>10.1f}{change}")
    return "\n".join(rows)
