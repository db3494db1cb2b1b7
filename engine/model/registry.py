"""The 17 released SigLIP 2 checkpoints, as data (paper numbers from arXiv 2502.14786)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass


@dataclass(frozen=True)
class Checkpoint:
    hub_id: str
    arch: str  # "fixed" (SiglipModel) or "naflex" (Siglip2Model)
    family: str  # B, L, So400m, g-opt
    patch_size: int
    resolution: int | None  # None for NaFlex (variable)
    image_tower_params: str
    imagenet_zero_shot: float
    coco_text_to_image: float
    coco_image_to_text: float

    @property
    def label(self) -> str:
        size = f"{self.resolution}px" if self.resolution else "NaFlex"
        return f"{self.family}/{self.patch_size} {size}"


_TOWER = {"B": "86M", "L": "303M", "So400m": "400M", "g-opt": "1B"}


def _row(hub_id, arch, family, patch, res, inet, t2i, i2t) -> Checkpoint:
    return Checkpoint(hub_id, arch, family, patch, res, _TOWER[family], inet, t2i, i2t)


CHECKPOINTS: tuple[Checkpoint, ...] = (
    _row("google/siglip2-base-patch16-224", "fixed", "B", 16, 224, 78.2, 52.1, 68.9),
    _row("google/siglip2-base-patch16-256", "fixed", "B", 16, 256, 79.1, 53.2, 69.7),
    _row("google/siglip2-base-patch16-384", "fixed", "B", 16, 384, 80.6, 54.6, 71.4),
    _row("google/siglip2-base-patch16-512", "fixed", "B", 16, 512, 81.2, 55.2, 71.2),
    _row("google/siglip2-base-patch32-256", "fixed", "B", 32, 256, 74.0, 47.2, 63.7),
    _row("google/siglip2-large-patch16-256", "fixed", "L", 16, 256, 82.5, 54.7, 71.5),
    _row("google/siglip2-large-patch16-384", "fixed", "L", 16, 384, 83.1, 55.3, 71.4),
    _row("google/siglip2-large-patch16-512", "fixed", "L", 16, 512, 83.5, 55.2, 72.1),
    _row("google/siglip2-so400m-patch14-224", "fixed", "So400m", 14, 224, 83.2, 55.1, 71.5),
    _row("google/siglip2-so400m-patch14-384", "fixed", "So400m", 14, 384, 84.1, 55.8, 71.7),
    _row("google/siglip2-so400m-patch16-256", "fixed", "So400m", 16, 256, 83.4, 55.4, 71.5),
    _row("google/siglip2-so400m-patch16-384", "fixed", "So400m", 16, 384, 84.1, 56.0, 71.2),
    _row("google/siglip2-so400m-patch16-512", "fixed", "So400m", 16, 512, 84.3, 56.0, 71.3),
    _row("google/siglip2-giant-opt-patch16-256", "fixed", "g-opt", 16, 256, 84.5, 55.7, 72.5),
    _row("google/siglip2-giant-opt-patch16-384", "fixed", "g-opt", 16, 384, 85.0, 56.1, 72.8),
    _row("google/siglip2-base-patch16-naflex", "naflex", "B", 16, None, 78.5, 51.1, 67.3),
    _row("google/siglip2-so400m-patch16-naflex", "naflex", "So400m", 16, None, 83.5, 55.1, 71.2),
)

DEFAULT_MODEL = "google/siglip2-base-patch16-naflex"


def find_checkpoint(hub_id: str) -> Checkpoint | None:
    """The registry entry for a Hub id, or None for any other id or a local path."""
    return next((c for c in CHECKPOINTS if c.hub_id == hub_id), None)


def unknown_id_hint(hub_id: str) -> str:
    """For an id in Google's SigLIP 2 namespace that is not a released checkpoint (a misspelling): a sentence
    saying so, naming the closest one; "" for any other id (a fine-tuned copy elsewhere is not flagged)."""
    if find_checkpoint(hub_id) or not hub_id.startswith("google/siglip"):
        return ""
    close = difflib.get_close_matches(hub_id, [c.hub_id for c in CHECKPOINTS], n=1, cutoff=0.8)
    hint = f" {hub_id!r} is not one of the {len(CHECKPOINTS)} released SigLIP 2 checkpoints"
    return hint + (f": did you mean {close[0]!r}?" if close else ".")
