"""Image recipes: NaFlex sizing, pixels equal to transformers' processors, modes, EXIF and bad files."""

import io
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image
from transformers import AutoImageProcessor
from transformers.models.siglip2.image_processing_pil_siglip2 import get_image_size_for_max_num_patches

from conftest import random_image
from engine.errors import ImageReadError
from engine.model.images import open_image, to_rgb
from engine.model.preprocess import naflex_size, patchify


@pytest.mark.parametrize("size, expected", [((2200, 1700), (288, 224)), ((224, 224), (256, 256)),
                                             ((1024, 224), (512, 112))])
def test_naflex_reference_examples(size, expected):
    assert naflex_size(*size, patch_size=16, max_num_patches=256) == expected


@settings(max_examples=300, deadline=None)
@given(height=st.integers(1, 5000), width=st.integers(1, 5000), patch=st.sampled_from([14, 16, 32]),
       budget=st.integers(1, 1100))
def test_naflex_size_property(height, width, patch, budget):
    rows_px, cols_px = naflex_size(height, width, patch, budget)
    assert (rows_px, cols_px) == get_image_size_for_max_num_patches(height, width, patch, budget)
    assert rows_px % patch == 0 and cols_px % patch == 0 and rows_px >= patch and cols_px >= patch
    rows, cols = rows_px // patch, cols_px // patch
    assert rows * cols <= budget
    # maximal: one more patch row and column would not fit (unless a side is pinned to one patch, or the
    # reference's scale cap of 100 binds on a tiny image)
    if min(height, width) >= 64:
        assert (rows + 1) * (cols + 1) > budget or min(rows, cols) == 1


def _transformers_inputs(directory, images):
    processor = AutoImageProcessor.from_pretrained(str(directory))
    return processor(images=images, return_tensors="pt")


@pytest.mark.parametrize("size", [(224, 224), (480, 640), (37, 53), (1024, 224), (2200, 1700)])
def test_pixels_equal_transformers_processor(recipe_model, size):
    image = random_image(*size, seed=size[0])
    prepared = recipe_model.image_preprocessor(image)
    batch = recipe_model.image_preprocessor.collate([prepared])
    reference = _transformers_inputs(recipe_model.directory, [image])
    inputs = batch.model_inputs(torch.device("cpu"), torch.float32)
    np.testing.assert_allclose(inputs["pixel_values"].numpy(), reference["pixel_values"].numpy(), atol=1e-5)
    if recipe_model.arch == "naflex":
        np.testing.assert_array_equal(batch.pixel_attention_mask.numpy(), reference["pixel_attention_mask"].numpy())
        np.testing.assert_array_equal(batch.spatial_shapes.numpy(), reference["spatial_shapes"].numpy())


def test_patch_grid_description(naflex_model):
    grid = naflex_model.image_preprocessor(random_image(2200, 1700)).grid
    assert (grid.resized_height, grid.resized_width) == (288, 224)
    assert (grid.rows, grid.cols, grid.num_patches, grid.num_padding, grid.sequence_length) == (18, 14, 252, 4, 256)
    assert (grid.original_height, grid.original_width) == (2200, 1700)


def test_max_patches_is_settable(naflex_model):
    wide = naflex_model.image_preprocessor.with_max_patches(1024)
    prepared = wide(random_image(224, 224))
    assert prepared.array.shape == (1024, 16 * 16 * 3)
    assert prepared.grid.num_patches == 1024
    assert naflex_model.image_preprocessor.max_num_patches == 256  # the model's own is untouched


def test_patchify_is_row_major_channels_last():
    pixels = np.arange(4 * 6 * 3, dtype=np.float32).reshape(4, 6, 3)
    patches = patchify(pixels, 2)
    assert patches.shape == (6, 12)
    np.testing.assert_array_equal(patches[1], pixels[0:2, 2:4].reshape(-1))  # second patch: top row, next column
    np.testing.assert_array_equal(patches[3], pixels[2:4, 0:2].reshape(-1))


def _mode_case(mode: str) -> tuple[Image.Image, np.ndarray]:
    """An image in `mode` built from known values, and the RGB pixels it must become (written out by hand)."""
    rng = np.random.default_rng(5)
    gray = rng.integers(0, 256, (6, 7)).astype(np.uint8)
    alpha = rng.integers(0, 256, (6, 7)).astype(np.uint8)
    rgb = rng.integers(0, 256, (6, 7, 3)).astype(np.uint8)
    as_rgb = lambda g: np.repeat(np.asarray(g, dtype=np.float64)[..., None], 3, axis=2)  # noqa: E731
    on_white = lambda c, a: c * (a[..., None] / 255.0) + 255.0 * (1 - a[..., None] / 255.0)  # noqa: E731
    if mode == "L":
        return Image.fromarray(gray, "L"), as_rgb(gray)
    if mode == "1":
        bits = gray > 127
        return Image.fromarray(bits), as_rgb(bits * 255)
    if mode == "P":
        palette = rng.integers(0, 256, (256, 3)).astype(np.uint8)
        image = Image.fromarray(gray, "P")
        image.putpalette(palette.tobytes())
        return image, palette[gray].astype(np.float64)
    if mode == "RGBA":
        return Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), on_white(rgb.astype(np.float64), alpha)
    if mode == "LA":
        return Image.fromarray(np.dstack([gray, alpha]), "LA"), on_white(as_rgb(gray), alpha)
    if mode == "CMYK":
        cmyk = rng.integers(0, 256, (6, 7, 4)).astype(np.uint8)
        c, k = cmyk[..., :3].astype(np.float64), cmyk[..., 3:].astype(np.float64)
        return Image.fromarray(cmyk, "CMYK"), (255 - c) * (255 - k) / 255
    if mode == "I;16":  # 16-bit: rescaled from 0…65535, not clipped to white
        wide = rng.integers(0, 65536, (6, 7)).astype(np.uint16)
        return Image.fromarray(wide, "I;16"), as_rgb(wide / 65535 * 255)
    if mode == "I":  # 32-bit integers: scaled by their maximum
        wide = rng.integers(0, 1_000_000, (6, 7)).astype(np.int32)
        return Image.fromarray(wide, "I"), as_rgb(wide / wide.max() * 255)
    if mode == "F":  # floats in 0…1
        unit = rng.random((6, 7)).astype(np.float32)
        return Image.fromarray(unit, "F"), as_rgb(unit * 255)
    if mode == "HSV":  # pure hues and black
        hsv = np.array([[[0, 255, 255], [85, 255, 255], [170, 255, 255], [40, 0, 0]]], dtype=np.uint8)
        return Image.fromarray(hsv, "HSV"), np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 0, 0]]], float)
    if mode == "YCbCr":  # neutral chroma: grey at the luma value
        ycc = np.dstack([gray, np.full_like(gray, 128), np.full_like(gray, 128)])
        return Image.fromarray(ycc, "YCbCr"), as_rgb(gray)
    return Image.fromarray(rgb, "RGB"), rgb.astype(np.float64)


@pytest.mark.parametrize("mode", ["RGB", "L", "1", "P", "RGBA", "LA", "CMYK", "I;16", "I", "F", "HSV", "YCbCr"])
def test_every_mode_becomes_rgb_by_pixel_values(mode):
    image, expected = _mode_case(mode)
    assert image.mode == mode
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.size == image.size
    np.testing.assert_allclose(np.asarray(rgb, dtype=np.float64), expected, atol=1.01)


def test_transparency_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgb = np.asarray(to_rgb(rgba))
    assert tuple(rgb[1, 1]) == (255, 255, 255)
    assert tuple(rgb[0, 0]) == (255, 0, 0)
    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.info["transparency"] = 0
    palette.putpixel((1, 1), 1)
    rgb = np.asarray(to_rgb(palette))
    assert tuple(rgb[0, 0]) == (255, 255, 255) and tuple(rgb[1, 1]) == (10, 200, 30)


def test_exif_orientation_applied(tmp_path):
    image = random_image(40, 100)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif)
    assert open_image(path).size == (40, 100)  # (width, height) after rotation


def _bad_files(folder):
    good = io.BytesIO()
    random_image(200, 200).save(good, format="JPEG")
    files = {
        "zero.jpg": (b"", "empty file"),
        "truncated.jpg": (good.getvalue()[: len(good.getvalue()) // 2], "truncated"),
        "notes.jpg": (b"this is not an image at all", "not an image"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    bomb = folder / "bomb.png"
    Image.new("L", (20000, 10000)).save(bomb)  # 200 MP of zeros compresses to almost nothing
    expectations = {name: reason for name, (_, reason) in files.items()}
    expectations["bomb.png"] = "decompression bomb"
    os.symlink(folder / "missing.jpg", folder / "broken-link.jpg")
    expectations["broken-link.jpg"] = "broken symbolic link"
    (folder / "a folder.jpg").mkdir()
    expectations["a folder.jpg"] = "is a folder"
    return expectations


def test_bad_files_give_specific_errors(tmp_path):
    for name, reason in _bad_files(tmp_path).items():
        with pytest.raises(ImageReadError) as caught:
            open_image(tmp_path / name)
        assert reason in str(caught.value), (name, str(caught.value))
        assert name in str(caught.value)


def _as_unprivileged(check) -> str:
    """Run `check()` in a forked child that has dropped to the user nobody (when run as root) and return what
    it returned, or the text of what it raised. The child needs no file of the project: it is already loaded."""
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child reports through the pipe)
        try:
            os.close(reader)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            try:
                outcome = f"ok {check()}"
            except Exception as error:  # the child reports everything it meets
                outcome = f"{type(error).__name__}: {error}"
            os.write(writer, outcome.encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        outcome = pipe.read()
    os.waitpid(child, 0)
    return outcome


def test_unreadable_permission_as_an_unprivileged_user():
    from engine.model.images import read_file_bytes

    folder = Path(tempfile.mkdtemp(prefix="studio-permissions-"))  # in /tmp: reachable by every user
    try:
        folder.chmod(0o755)
        readable, secret = folder / "shared.png", folder / "secret.png"
        random_image(10, 10).save(readable)
        random_image(10, 10).save(secret)
        readable.chmod(0o644)
        secret.chmod(0)
        open_image(readable)  # PIL's format plugins are loaded before the fork
        # the same user can read the shared file, so a refusal below is about the file's own permission
        assert _as_unprivileged(lambda: open_image(readable).size) == "ok (10, 10)"
        for reader in (open_image, read_file_bytes):
            outcome = _as_unprivileged(lambda: reader(secret))
            assert outcome.startswith("ImageReadError") and "secret.png" in outcome, outcome
            assert "permission denied" in outcome, outcome
    finally:
        shutil.rmtree(folder)




def test_reading_names_what_is_wrong_and_never_waits_on_a_pipe(tmp_path):
    from engine.model.images import read_file_bytes

    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "empty.jpg").write_bytes(b"")
    os.symlink(tmp_path / "gone.jpg", tmp_path / "dangling.jpg")
    with open(tmp_path / "huge.jpg", "wb") as sparse:  # 2 GiB that take no disk; read whole, they would take RAM
        sparse.truncate(2 << 30)
    expected = {"pipe.jpg": "not a regular file", "folder.jpg": "is a folder", "empty.jpg": "empty file",
                "dangling.jpg": "broken symbolic link", "missing.jpg": "file not found",
                "huge.jpg": "2.0 GiB, over the 1 GiB an image file may have"}
    for name, reason in expected.items():
        with pytest.raises(ImageReadError, match=reason):
            read_file_bytes(tmp_path / name)
    (tmp_path / "fine.jpg").write_bytes(b"\xff\xd8 bytes")
    assert read_file_bytes(tmp_path / "fine.jpg")[0] == b"\xff\xd8 bytes"
