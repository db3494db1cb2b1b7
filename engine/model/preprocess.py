"""Image preprocessing to the reference recipe, as small named ops composed per architecture.

Fixed resolution: squash-resize to the checkpoint's size, scale to [-1, 1].
NaFlex: aspect-preserving resize to the largest patch grid within `max_num_patches`, scale, cut into
row-major patches (channels last inside a patch), pad the sequence, keep a mask and the grid shape.

Prepared images stay uint8 until they reach the model's device, where they are scaled and standardised in
float32 (the same arithmetic as the processor's, a quarter of the bytes to collate and copy).
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import StudioError

DEFAULT_MAX_PATCHES = 256
TRAINED_SEQUENCE_LENGTHS = (128, 256, 576, 784, 1024)
SEQUENCE_LENGTH_RANGE = (16, 4096)  # beyond 1024 quality degrades; beyond 4096 only memory grows


def check_sequence_length(value) -> int:
    """A NaFlex sequence length (max patches) as an int, or StudioError naming the allowed range."""
    low, high = SEQUENCE_LENGTH_RANGE
    try:
        patches = int(value)
    except (TypeError, ValueError):
        raise StudioError(f"Sequence length {value!r} is not a whole number.") from None
    if not low <= patches <= high:
        raise StudioError(f"Sequence length {patches} must be between {low} and {high} patches "
                          f"(SigLIP 2 was trained at {', '.join(map(str, TRAINED_SEQUENCE_LENGTHS))}).")
    return patches


@dataclass(frozen=True)
class PatchGrid:
    """How one image was laid out as patches (what the visualisations draw)."""

    original_height: int
    original_width: int
    resized_height: int
    resized_width: int
    patch_size: int
    rows: int
    cols: int
    sequence_length: int  # padded length fed to the model

    @property
    def num_patches(self) -> int:
        return self.rows * self.cols

    @property
    def num_padding(self) -> int:
        return self.sequence_length - self.num_patches


# --- ops -------------------------------------------------------------------------------------------


def naflex_size(height: int, width: int, patch_size: int, max_num_patches: int, eps: float = 1e-5) -> tuple[int, int]:
    """Largest aspect-preserving (height, width), each rounded up to a multiple of the patch, within the budget.

    Binary search over the scale, as big_vision and transformers do it.
    """
    if max_num_patches < 1:
        raise ValueError("max_num_patches must be at least 1")

    def scaled(scale: float, size: int) -> int:
        return max(patch_size, math.ceil(size * scale / patch_size) * patch_size)

    low, high = eps / 10, 100.0
    while high - low >= eps:
        scale = (low + high) / 2
        if (scaled(scale, height) // patch_size) * (scaled(scale, width) // patch_size) <= max_num_patches:
            low = scale
        else:
            high = scale
    return scaled(low, height), scaled(low, width)


def resize(image: Image.Image, height: int, width: int, resample: int) -> Image.Image:
    """PIL resize (bilinear and bicubic filters antialias when shrinking)."""
    if image.size == (width, height):
        return image
    return image.resize((width, height), resample=Image.Resampling(resample))


@functools.lru_cache(maxsize=64)
def _channel_values(values: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """A per-channel float32 constant on `device`, made once: creating it per batch would wait for the copy
    of the batch queued before it on a GPU. A normal tensor even when first asked for under inference mode."""
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=torch.float32, device=device)


def standardize(pixels: torch.Tensor, rescale_factor: float, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 RGB values -> float32 scaled then standardised (to [-1, 1] for 0.5, 0.5); mean and std shaped
    to broadcast over the channel axis."""
    return (pixels.float() * rescale_factor - mean) / std


def patchify(pixels_hwc, patch_size: int):
    """(H, W, C) -> (rows*cols, p*p*C): row-major patches, channels last within a patch (numpy or torch)."""
    height, width, channels = pixels_hwc.shape
    rows, cols = height // patch_size, width // patch_size
    patches = pixels_hwc.reshape(rows, patch_size, cols, patch_size, channels).swapaxes(1, 2)
    return patches.reshape(rows * cols, patch_size * patch_size * channels)


# --- batches ---------------------------------------------------------------------------------------


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """To `device`; from the host to a GPU through page-locked memory, a copy that does not wait for the
    work already queued there (a batch still being encoded)."""
    if device.type == "cuda" and not tensor.is_cuda:
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@dataclass
class PixelBatch:
    """A batch of images as uint8 values, plus each image's patch grid; `model_inputs` makes the model's
    float tensors on its device."""

    pixel_values: torch.Tensor  # uint8; fixed: (n, 3, H, W); NaFlex: (n, max_num_patches, p*p*3), 0-padded
    grids: list[PatchGrid]
    rescale_factor: float
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    pixel_attention_mask: torch.Tensor | None = None  # NaFlex: (n, max_num_patches), 1 = real patch
    spatial_shapes: torch.Tensor | None = None  # NaFlex: (n, 2) rows, cols

    def model_inputs(self, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        pixels = _to_device(self.pixel_values, device)
        mean, std = _channel_values(tuple(self.image_mean), device), _channel_values(tuple(self.image_std), device)
        if self.pixel_attention_mask is None:  # (n, 3, H, W)
            values = standardize(pixels, self.rescale_factor, mean.view(3, 1, 1), std.view(3, 1, 1))
            return {"pixel_values": values.to(dtype)}
        n, length, width = pixels.shape  # channels last within a patch
        values = standardize(pixels.view(n, length, width // 3, 3), self.rescale_factor, mean, std).view(n, length, width)
        mask = _to_device(self.pixel_attention_mask, device)
        values = torch.where(mask[..., None].bool(), values, 0.0)  # padding patches are zeros, as the processor's
        # spatial_shapes stay on the host: transformers reads each image's row with .tolist(), which on a GPU
        # would wait for all queued work (the batch before) once per image
        return {"pixel_values": values.to(dtype), "pixel_attention_mask": mask, "spatial_shapes": self.spatial_shapes}


@dataclass
class PreparedImage:
    """One preprocessed image, uint8: fixed (3, H, W) pixels, or NaFlex (max_num_patches, p*p*3) patches;
    a numpy array, or a tensor already on the model's device (device_decode)."""

    array: np.ndarray | torch.Tensor
    grid: PatchGrid


@dataclass(frozen=True)
class ImagePreprocessor:
    """The checkpoint's image recipe, read from its processor config."""

    arch: str  # "fixed" or "naflex"
    patch_size: int
    image_size: tuple[int, int] | None  # fixed: (height, width)
    max_num_patches: int  # NaFlex sequence length; fixed: rows*cols
    resample: int
    rescale_factor: float
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]

    def with_max_patches(self, max_num_patches: int) -> "ImagePreprocessor":
        if self.arch != "naflex":
            return self
        from dataclasses import replace

        return replace(self, max_num_patches=int(max_num_patches))

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) the model sees for an image of (height, width)."""
        if self.arch == "fixed":
            return tuple(self.image_size)
        return naflex_size(height, width, self.patch_size, self.max_num_patches)

    def grid_for(self, height: int, width: int) -> PatchGrid:
        """How an image of (height, width) is laid out for the model."""
        target_h, target_w = self.target_size(height, width)
        rows, cols = target_h // self.patch_size, target_w // self.patch_size
        return PatchGrid(height, width, target_h, target_w, self.patch_size, rows, cols,
                         self.max_num_patches if self.arch == "naflex" else rows * cols)

    def __call__(self, image: Image.Image, original_size: tuple[int, int] | None = None) -> PreparedImage:
        """`original_size`: the full (height, width) when `image` was decoded at reduced scale, so that the
        patch grid, and the size recorded for the image, are those of the full image."""
        grid = self.grid_for(*(original_size or (image.height, image.width)))
        pixels = np.asarray(resize(image, grid.resized_height, grid.resized_width, self.resample),
                            dtype=np.uint8)  # (H, W, 3)
        if self.arch == "fixed":
            return PreparedImage(np.ascontiguousarray(pixels.transpose(2, 0, 1)), grid)
        patches = np.zeros((self.max_num_patches, self.patch_size**2 * 3), dtype=np.uint8)
        patches[: grid.num_patches] = patchify(pixels, self.patch_size)
        return PreparedImage(patches, grid)

    def collate(self, prepared: list[PreparedImage]) -> PixelBatch:
        arrays = [p.array for p in prepared]
        device = next((a.device for a in arrays if isinstance(a, torch.Tensor)), None)
        if device is not None:  # decoded on the device, perhaps beside files PIL decoded (PNGs, refused JPEGs)
            pixel_values = torch.stack([_to_device(torch.as_tensor(a), device) for a in arrays])
        else:  # numpy's stack copies uint8 arrays about twice as fast as torch's on a CPU
            pixel_values = torch.from_numpy(np.stack(arrays))
        grids = [p.grid for p in prepared]
        recipe = dict(rescale_factor=self.rescale_factor, image_mean=tuple(self.image_mean),
                      image_std=tuple(self.image_std))
        if self.arch == "fixed":
            return PixelBatch(pixel_values, grids, **recipe)
        mask = torch.zeros((len(prepared), self.max_num_patches), dtype=torch.int32)
        for row, grid in enumerate(grids):
            mask[row, : grid.num_patches] = 1
        shapes = torch.tensor([[g.rows, g.cols] for g in grids], dtype=torch.long)
        return PixelBatch(pixel_values, grids, **recipe, pixel_attention_mask=mask, spatial_shapes=shapes)

    @classmethod
    def from_checkpoint(cls, directory: Path, arch: str, patch_size: int, image_size: int) -> "ImagePreprocessor":
        """Read preprocessor_config.json (Hub layout) or processor_config.json (transformers 5 layout)."""
        config: dict = {}
        if (directory / "preprocessor_config.json").exists():
            config = json.loads((directory / "preprocessor_config.json").read_text())
        elif (directory / "processor_config.json").exists():
            config = json.loads((directory / "processor_config.json").read_text()).get("image_processor", {})
        size = config.get("size") or {}
        fixed_size = (int(size.get("height", image_size)), int(size.get("width", image_size)))
        max_patches = int(config.get("max_num_patches", DEFAULT_MAX_PATCHES))
        return cls(
            arch=arch,
            patch_size=int(config.get("patch_size", patch_size)),
            image_size=fixed_size if arch == "fixed" else None,
            max_num_patches=max_patches if arch == "naflex" else (fixed_size[0] // patch_size) * (fixed_size[1] // patch_size),
            # transformers' class defaults where the file is silent: bicubic (Siglip), bilinear (Siglip2)
            resample=int(config.get("resample", 3 if arch == "fixed" else 2)),
            rescale_factor=float(config.get("rescale_factor", 1 / 255)),
            image_mean=tuple(config.get("image_mean", (0.5, 0.5, 0.5))),
            image_std=tuple(config.get("image_std", (0.5, 0.5, 0.5))),
        )
