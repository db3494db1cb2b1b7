"""big_vision's zero-shot text conventions: `canonicalize_text` and the 80 "clip_paper" templates.

As in `big_vision/evaluators/proj/image_text/prompt_engineering.py`: `_` → space, ASCII punctuation
removed (except `keep` strings such as `{}` in templates), lowercased, whitespace collapsed; a class name
with aliases separated by `,` keeps its first alias.
"""

from __future__ import annotations

import re
import string

from ..errors import TrainError

CLIP_PAPER_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)
assert len(CLIP_PAPER_TEMPLATES) == 80


def canonicalize_text(text: str, keep: tuple[str, ...] = ()) -> str:
    """big_vision's cleaning: `_` → space, punctuation removed (but `keep` strings survive), lowercase, spaces."""
    text = text.replace("_", " ")
    pieces = text.split(keep[0]) if keep else [text]
    drop = str.maketrans("", "", string.punctuation)
    cleaned = [piece.translate(drop) for piece in pieces]
    text = keep[0].join(cleaned) if keep else cleaned[0]
    text = text.lower()
    return re.sub(r"\s+", " ", text).strip()


def canonical_class_name(name: str) -> str:
    """First alias of a comma-separated class name ("tench, Tinca tinca" → "tench"), canonicalised."""
    return canonicalize_text(name.split(",")[0])


def canonical_template(template: str) -> str:
    return canonicalize_text(template, keep=("{}",))


def class_prompts(class_names: list[str], templates: tuple[str, ...] | list[str] | None = None,
                  canonicalize: bool = True) -> list[list[str]]:
    """Per class, one prompt per template (the 80 clip_paper templates by default)."""
    templates = list(templates or CLIP_PAPER_TEMPLATES)
    for template in templates:
        if template.count("{}") != 1:
            raise TrainError(f"Template {template!r} must contain '{{}}' exactly once, where the class name goes.")
    if canonicalize:
        class_names = [canonical_class_name(n) for n in class_names]
        templates = [canonical_template(t) for t in templates]
    return [[t.format(name) for t in templates] for name in class_names]
