"""One image as the inspection views see it: preprocessed at a chosen sequence length and run through the
vision tower once. Traces are cached per model, so the value map, the attention and the PCA share a pass."""

from __future__ import annotations

import hashlib
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import InspectError
from ..model.features import PatchFeatures, patch_features
from ..model.images import ImageInput, open_image, source_name
from ..model.loading import LoadedModel
from ..model.preprocess import ImagePreprocessor, PatchGrid, check_sequence_length

TRACE_CACHE_SIZE = 8


@dataclass
class ImageTrace:
    """An image, its patch grid at one sequence length and its final patch features."""

    source: str
    image: Image.Image  # the decoded RGB original, EXIF-oriented
    preprocessor: ImagePreprocessor
    features: PatchFeatures

    @property
    def grid(self) -> PatchGrid:
        return self.features.grid

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the real patch grid."""
        return self.grid.rows, self.grid.cols

    def resized(self) -> Image.Image:
        """The image as the model sees it: resized to the grid (squashed for fixed-resolution models)."""
        return self.image.resize((self.grid.resized_width, self.grid.resized_height), Image.Resampling(
            self.preprocessor.resample))

    def check_patch(self, row: int, col: int) -> int:
        """The token index of patch (row, col), or InspectError if it lies outside the grid."""
        rows, cols = self.shape
        if not (0 <= int(row) < rows and 0 <= int(col) < cols):
            raise InspectError(f"Patch (row {row}, column {col}) is outside this image's {rows}×{cols} grid "
                               f"(rows 0–{rows - 1}, columns 0–{cols - 1}).")
        return int(row) * cols + int(col)


def preprocessor_for(model: LoadedModel, max_patches: int | None) -> ImagePreprocessor:
    """The model's preprocessor at `max_patches` (NaFlex); fixed-resolution models ignore it."""
    if model.arch == "fixed" or max_patches is None:
        return model.image_preprocessor
    return model.image_preprocessor.with_max_patches(check_sequence_length(max_patches))


_traces: weakref.WeakKeyDictionary[LoadedModel, OrderedDict] = weakref.WeakKeyDictionary()


def _content_key(image: Image.Image) -> str:
    return hashlib.sha256(image.tobytes() + repr((image.size, image.mode)).encode()).hexdigest()


def trace_images(model: LoadedModel, images: list[ImageInput], max_patches: int | None = None) -> list[ImageTrace]:
    """Trace several images in one batch (padded together); cached traces are reused."""
    preprocessor = preprocessor_for(model, max_patches)
    decoded = [open_image(image, position) for position, image in enumerate(images)]
    cache = _traces.setdefault(model, OrderedDict())
    keys = [(_content_key(image), preprocessor) for image in decoded]
    missing = [i for i, key in enumerate(keys) if key not in cache]
    if missing:
        prepared = [preprocessor(decoded[i]) for i in missing]
        for i, features in zip(missing, patch_features(model, prepared, preprocessor)):
            cache[keys[i]] = features
            while len(cache) > TRACE_CACHE_SIZE:
                cache.popitem(last=False)
    return [ImageTrace(source_name(image, position), rgb, preprocessor, cache[key])
            for position, (image, rgb, key) in enumerate(zip(images, decoded, keys))]


def trace_image(model: LoadedModel, image: ImageInput, max_patches: int | None = None) -> ImageTrace:
    """One image's trace (cached per model, content and sequence length)."""
    return trace_images(model, [image], max_patches)[0]


def as_grid(values: np.ndarray, trace: ImageTrace) -> np.ndarray:
    """(..., rows*cols) per-patch values → (..., rows, cols)."""
    return values.reshape(*values.shape[:-1], *trace.shape)
