"""From a batch plan to model inputs: images through the checkpoint's own preprocessor and `collate`
(NaFlex at the plan's bucket length), captions through the reference tokenizer, group ids for the loss.
Unreadable images are skipped and reported, never stopping the run."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ImageReadError
from ..model.encode import ordered_parallel_map
from ..model.loading import LoadedModel
from ..model.preprocess import PixelBatch
from .data import BatchPlan, TrainData, load_example_image, stable_hash
from .templates import canonical_class_name, canonical_template


@dataclass
class TrainBatch:
    pixels: PixelBatch
    input_ids: torch.Tensor  # (n, 64) int64, the reference recipe (no attention mask)
    groups: torch.Tensor  # (n,) int64: equal ids are positives for each other
    captions: list[str]
    skipped: list[str]  # "path: reason" of images left out of this batch

    def __len__(self) -> int:
        return len(self.captions)


def caption_for(data: TrainData, position: int, choice: int, templates: list[str]) -> str:
    """The caption a plan picked: one of the example's captions, or a template filled with its class."""
    example = data.examples[position]
    if example.captions:
        return example.captions[choice % len(example.captions)]
    template = canonical_template(templates[choice % len(templates)])
    return template.format(canonical_class_name(data.classes[example.label]))


def group_of(data: TrainData, position: int, caption: str) -> int:
    """The class when there is one, else the caption text itself (identical captions are positives)."""
    label = data.examples[position].label
    return int(label) if label is not None else stable_hash("caption:" + caption)


def build_batch(model: LoadedModel, data: TrainData, plan: BatchPlan, templates: list[str],
                workers: int | None = None) -> TrainBatch:
    preprocessor = model.image_preprocessor
    if plan.sequence_length is not None:
        preprocessor = preprocessor.with_max_patches(plan.sequence_length)

    def prepare(item):
        position, choice = item
        try:
            return position, choice, preprocessor(load_example_image(data.examples[position])), None
        except ImageReadError as error:
            return position, choice, None, str(error)

    prepared, captions, groups, skipped = [], [], [], []
    for position, choice, image, problem in ordered_parallel_map(prepare, list(zip(plan.positions, plan.caption_choice)),
                                                                workers):
        if problem:
            skipped.append(problem)
            continue
        caption = caption_for(data, position, choice, templates)
        prepared.append(image)
        captions.append(caption)
        groups.append(group_of(data, position, caption))
    if not prepared:
        return TrainBatch(None, torch.zeros((0, 64), dtype=torch.long), torch.zeros(0, dtype=torch.long), [], skipped)
    tokens = model.tokenizer(captions)
    return TrainBatch(preprocessor.collate(prepared), torch.from_numpy(tokens.input_ids), torch.tensor(groups),
                      captions, skipped)

