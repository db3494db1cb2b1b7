"""Opening image files safely: EXIF orientation, any PIL mode to RGB, specific errors for bad files."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import numpy as np
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import ImageReadError

try:  # HEIC/AVIF where the maintained plugin is installed
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:  # pragma: no cover - optional
    pass

ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow's own default (about 89 megapixels); above it an image is treated as a decompression bomb.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
# a file is read whole into memory before it is decoded: past this it is refused unread (a sparse or runaway file;
# the largest image within the pixel limit, 16-bit RGBA and incompressible, is about 0.7 GiB)
MAX_FILE_BYTES = 1 << 30

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)

ImageInput = Union[str, os.PathLike, Image.Image]
TargetSize = Callable[[int, int], tuple[int, int]]  # full (height, width) -> the model's input (height, width)
# Reduced-scale JPEG decoding keeps at least this multiple of the model's input size, so the antialiased
# resize that follows still averages several real pixels into each input pixel.
DRAFT_MARGIN = 2


def source_name(image: ImageInput, position: int | None = None) -> str:
    """A short human name for an input: its path, or its position for in-memory images."""
    if isinstance(image, Image.Image):
        return getattr(image, "filename", "") or f"image #{position if position is not None else '?'}"
    return str(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited on white, 16-bit and float are rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info or image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(values.max()), 1.0)
        if image.mode == "F" and values.max() <= 1.0:
            top = 1.0
        gray = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    return image.convert("RGB")


def _read_reason(error: Exception) -> str:
    text = str(error).lower()
    if isinstance(error, UnidentifiedImageError):
        return "not an image, or a format this installation cannot read"
    if "truncated" in text or "premature end" in text or "broken data stream" in text:
        return "truncated or corrupt image data"
    return f"corrupt image ({error})"


def _check_file(path: Path, name: str) -> None:
    if path.is_symlink() and not path.exists():
        raise ImageReadError(name, "broken symbolic link")
    if not path.exists():
        raise ImageReadError(name, "file not found")
    if path.is_dir():
        raise ImageReadError(name, "is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageReadError(name, "empty file (0 bytes)")


def _draft(opened: Image.Image, target: TargetSize) -> tuple[int, int] | None:
    """Let libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale where that keeps DRAFT_MARGIN × the model's input
    size; returns the full (height, width) after EXIF orientation, or None when it decodes at full scale."""
    if opened.format != "JPEG":
        return None
    width, height = opened.size
    swapped = opened.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)  # turned by 90° later
    full = (width, height) if swapped else (height, width)
    target_h, target_w = target(*full)
    want_w, want_h = DRAFT_MARGIN * target_w, DRAFT_MARGIN * target_h
    if swapped:
        want_w, want_h = want_h, want_w
    if min(width // want_w, height // want_h) < 2:  # no real reduction: leave decoding exactly as it is
        return None
    opened.draft("RGB", (want_w, want_h))
    return full


def _decode(name: str, source, target: TargetSize | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """Open, fully load and orient `source` (a path or a file object), mapping failures to ImageReadError.

    Returns the image and its full (height, width); with `target`, JPEGs may be decoded at reduced scale."""
    bomb = f"too many pixels (over {MAX_IMAGE_PIXELS:,}; possible decompression bomb)"
    try:
        with Image.open(source) as opened:
            # checked here rather than by turning Pillow's warning into an error: warnings.catch_warnings is
            # not thread-safe, and images are decoded in threads
            if opened.width * opened.height > MAX_IMAGE_PIXELS:
                raise ImageReadError(name, bomb)
            full = _draft(opened, target) if target else None
            opened.load()
            image = to_rgb(ImageOps.exif_transpose(opened))
            return image, full or (image.height, image.width)
    except PermissionError:
        raise ImageReadError(name, "permission denied") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageReadError(name, bomb) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageReadError(name, _read_reason(error)) from None


def open_image(image: ImageInput, position: int | None = None) -> Image.Image:
    """Load an image fully as RGB with EXIF orientation applied, or raise ImageReadError."""
    return open_for_model(image, position)[0]


def open_for_model(image: ImageInput, position: int | None = None,
                   target: TargetSize | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """`open_image`, and the full (height, width); with `target`, a JPEG file may be decoded at reduced scale
    (see `_draft`), which changes pixels slightly: the fp32 reference path passes no target."""
    name = source_name(image, position)
    if isinstance(image, Image.Image):
        oriented = to_rgb(ImageOps.exif_transpose(image))
        return oriented, (oriented.height, oriented.width)
    path = Path(image)
    try:
        _check_file(path, name)
    except PermissionError:
        raise ImageReadError(name, "permission denied") from None
    return _decode(name, path, target)


def read_file_bytes(path: str | os.PathLike) -> tuple[bytes, str]:
    """A file's bytes and SHA-256, or ImageReadError (missing, empty, a folder or pipe, unreadable, broken link).

    One open and one fstat per file: an index build reads thousands of files a second on a GPU machine.
    Non-blocking, so that a named pipe is refused instead of waited on."""
    name = str(path)
    try:
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except PermissionError:
        raise ImageReadError(name, "permission denied") from None
    except OSError as error:
        _check_file(Path(path), name)  # names a missing file or a broken link
        raise ImageReadError(name, f"cannot be read ({error.strerror or error})") from None
    try:
        info = os.fstat(descriptor)
        if stat.S_ISDIR(info.st_mode):
            raise ImageReadError(name, "is a folder, not an image")
        if not stat.S_ISREG(info.st_mode):
            raise ImageReadError(name, "not a regular file")
        if info.st_size == 0:
            raise ImageReadError(name, "empty file (0 bytes)")
        if info.st_size > MAX_FILE_BYTES:
            raise ImageReadError(name, f"{info.st_size / 2**30:,.1f} GiB, over the {MAX_FILE_BYTES >> 30} GiB an "
                                       "image file may have")
        data = _read_all(descriptor, info.st_size)
    except OSError as error:
        raise ImageReadError(name, f"cannot be read ({error.strerror or error})") from None
    except MemoryError:
        raise ImageReadError(name, f"not enough memory to read its {info.st_size:,} bytes") from None
    finally:
        os.close(descriptor)
    return data, hashlib.sha256(data).hexdigest()


def _read_all(descriptor: int, size: int) -> bytes:
    """The file's bytes by `os.read` (no file object: its setup cost the GIL as much as the read)."""
    chunks = [os.read(descriptor, size + 1)]  # one read where the file still has the size fstat saw
    while chunks[-1]:
        chunks.append(os.read(descriptor, 1 << 20))
    return chunks[0] if len(chunks) == 2 else b"".join(chunks)


def decode_image_bytes(data: bytes, name: str,
                       target: TargetSize | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """The image and its full (height, width); `target` as in `open_for_model`."""
    return _decode(name, io.BytesIO(data), target)


@dataclass
class FileState:
    path: str
    size: int
    mtime_ns: int


@dataclass
class FolderScan:
    """What a folder holds: its image files, the entries that cannot be used as (path, reason), and among
    those the folders that could not be listed (whatever they held is unknown, not gone)."""

    files: list[FileState]
    problems: list[tuple[str, str]]
    unlisted: list[str]


def scan_folder(folder: Path) -> FolderScan:
    """Image files under `folder` (recursively, symlinked files followed) and unusable entries."""
    scan = FolderScan([], [], [])

    def on_error(error: OSError):
        scan.unlisted.append(error.filename or str(folder))
        scan.problems.append((scan.unlisted[-1], f"cannot be listed ({error.strerror})"))

    for root, dirs, names in os.walk(folder, onerror=on_error):
        dirs.sort()
        for name in sorted(names):
            path = os.path.join(root, name)
            if _suffix(name).lower() not in IMAGE_EXTENSIONS:
                continue
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                scan.problems.append((path, "broken symbolic link"))
                continue
            except OSError as error:
                scan.problems.append((path, f"cannot be read ({error.strerror})"))
                continue
            scan.files.append(FileState(path, stat.st_size, stat.st_mtime_ns))
    return scan


def _suffix(name: str) -> str:
    """`Path(name).suffix` ("..jpg" -> ".jpg", ".jpg" -> ""), at a quarter of its cost: a GPU build scans
    thousands of names a second."""
    dot = name.rfind(".")
    return name[dot:] if 0 < dot < len(name) - 1 else ""


def find_images(folder: str | Path) -> tuple[list[str], list[tuple[str, str]]]:
    """Paths of the image files under `folder`, sorted, and (path, reason) for entries that cannot be used."""
    scan = scan_folder(Path(folder))
    return [state.path for state in scan.files], scan.problems
