"""JPEG files decoded, oriented and resized on a CUDA device: nvJPEG (the hardware JPEG engines of an
A100 or H100) through torchvision, where it is installed.

A GPU encodes B/16 images several times faster than 16 CPU cores decode camera photos, so on a GPU the
index build hands JPEG bytes to the device instead. Only what nvJPEG reads as PIL does takes this path:
complete RGB or grayscale JPEGs within Pillow's pixel limit (EXIF orientation is applied here, with
PIL's transposes). Everything else, and every file the decoder refuses, is decoded by PIL as before, with
its specific error reasons. Resizing uses torch's antialiased bilinear or bicubic filter in PIL's two
passes, within two levels of PIL's result and mostly equal to it (tests/test_device_decode.py).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import ExifTags, Image

from .images import MAX_IMAGE_PIXELS
from .preprocess import ImagePreprocessor, PreparedImage, patchify

log = logging.getLogger(__name__)

DEVICE_RESAMPLE = {2: "bilinear", 3: "bicubic"}  # PIL filter number -> torch's antialiased equivalent
# Full-size decoded pixels per decode call: 128 MP is 384 MB of uint8 RGB, and about 2.3 GB of device memory
# while it is resized (the decoded images, a group stacked, and its float copy). Nothing on the host waits for
# the resizing, so several calls' images can be held at once: in an index build at most about three batches'
# (it waits for the vectors of the batch two before), some 1.5 GB each for 512 camera photos.
MAX_DECODED_PIXELS = 128_000_000

JpegDecoder = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]  # bytes -> (3, H, W) uint8 each

# The files' bytes are read in place (torch.frombuffer) and only read: torch's warning that they are not
# writable does not apply (a writable copy of each file cost the reading threads the GIL for its memcpy).
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning, module=__name__)


@dataclass(frozen=True)
class DeviceJpeg:
    """A JPEG file's bytes and what its header says, for decoding on the device."""

    data: bytes  # the whole file
    height: int  # as stored, before EXIF orientation
    width: int
    orientation: int  # EXIF orientation, 1 to 8

    @property
    def full_size(self) -> tuple[int, int]:
        """(height, width) after orientation."""
        return (self.width, self.height) if self.orientation in (5, 6, 7, 8) else (self.height, self.width)


_FRAMES = {0xC0, 0xC1, 0xC2}  # baseline, extended and progressive Huffman frames: what nvJPEG decodes
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # markers without a length
_TABLES = {0xC4, 0xDB, 0xDD, 0xFE, *range(0xE0, 0xF0)}  # Huffman, quantisation, restart, comment, APPn


def device_jpeg(data: bytes) -> DeviceJpeg | None:
    """The header of a JPEG the device can decode as PIL would, or None (PIL decodes it).

    The markers are walked here rather than by `Image.open`, which parses every table in Python (about
    90 µs a file, more than the rest of reading it); only the EXIF block is read by PIL.
    tests/test_device_decode.py checks the walk against PIL on intact and damaged headers.
    Anything unusual goes to PIL: truncated files (no end-of-image marker; PIL reports them, nvJPEG might
    fill them in), CMYK and Adobe-transformed colour, 12-bit, arithmetic or lossless coding, orientation
    in XMP, and images over Pillow's pixel limit."""
    if not data.startswith(b"\xff\xd8") or not data.rstrip(b"\0").endswith(b"\xff\xd9"):
        return None
    position, orientation, exif, frame = 2, 1, False, None
    while position + 4 <= len(data):  # every segment up to the scan, as PIL reads them
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _STANDALONE:
            position += 2
            continue
        if marker == 0xDA:  # start of scan: the headers are complete
            break
        end = position + 2 + int.from_bytes(data[position + 2:position + 4], "big")
        segment = data[position + 4:end]
        if marker == 0xE1 and segment.startswith(b"Exif\0\0"):
            if exif:
                return None  # PIL joins a second EXIF segment to the first: let PIL read it
            orientation, exif = _exif_orientation(segment), True
        elif marker == 0xE1 and b"Orientation" in segment or marker == 0xEE and segment.startswith(b"Adobe"):
            return None
        elif marker in _FRAMES and frame is None:
            frame = segment
        elif marker not in _TABLES:
            return None  # another kind of frame, a second frame header, or damage
        position = end
    else:
        return None  # no scan
    if frame is None or len(frame) < 6 or frame[0] != 8 or frame[5] not in (1, 3) or orientation is None:
        return None
    height, width = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big")
    if not 0 < width * height <= MAX_IMAGE_PIXELS:
        return None
    return DeviceJpeg(data, height, width, orientation)


def _exif_orientation(exif: bytes) -> int | None:
    """The Orientation tag as PIL reads it from an EXIF segment (1 when absent), or None when PIL cannot."""
    try:  # (no warnings.catch_warnings here: it is not thread-safe)
        data = Image.Exif()
        data.load(exif)
        orientation = data.get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - PIL decides what it cannot read
        return None
    return orientation if orientation in range(1, 9) else None


def orient(pixels: torch.Tensor, orientation: int) -> torch.Tensor:
    """(C, H, W) turned as PIL's `ImageOps.exif_transpose` turns an image with this EXIF orientation."""
    if orientation == 2:
        return pixels.flip(-1)
    if orientation == 3:
        return pixels.flip(-2, -1)
    if orientation == 4:
        return pixels.flip(-2)
    if orientation == 5:
        return pixels.transpose(-2, -1)
    if orientation == 6:
        return torch.rot90(pixels, -1, (-2, -1))
    if orientation == 7:
        return pixels.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return torch.rot90(pixels, 1, (-2, -1))
    return pixels


def resize_pixels(pixels: torch.Tensor, height: int, width: int, resample: int) -> torch.Tensor:
    """(n, C, H, W) uint8 -> (n, C, height, width) uint8, antialiased as PIL's filter `resample`.

    Like PIL, across then down, rounding to whole levels in between: one 2-D pass differs from PIL by a
    level in a fifth of the values, this in under a tenth of them at most (tests/test_device_decode.py)."""
    values = pixels.float()
    for size in ((values.shape[-2], width), (height, width)):
        if tuple(values.shape[-2:]) != size:
            values = torch.nn.functional.interpolate(values, size=size, mode=DEVICE_RESAMPLE[resample],
                                                     antialias=True, align_corners=False).round_().clamp_(0, 255)
    return values.to(torch.uint8)


def torchvision_decoder() -> JpegDecoder | None:
    """nvJPEG through torchvision, or None where torchvision is not installed."""
    try:
        import torchvision.io  # noqa: F401
    except ImportError:
        return None
    return _decode_with_torchvision


def _decode_with_torchvision(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)


def device_decoder(device: torch.device, preprocessor: ImagePreprocessor) -> JpegDecoder | None:
    """The decoder to use for `device` and this checkpoint's resize filter, or None (decode with PIL)."""
    if device.type != "cuda" or preprocessor.resample not in DEVICE_RESAMPLE:
        return None
    decoder = torchvision_decoder()
    return decoder if decoder is not None and _decodes_a_sample(decoder, device) else None


_WORKING_DECODERS: set[tuple[JpegDecoder, torch.device]] = set()


def _decodes_a_sample(decoder: JpegDecoder, device: torch.device) -> bool:
    """Whether `decoder` decodes a tiny JPEG on `device`: a torchvision built without nvJPEG would otherwise
    fail every batch. A success is remembered for the process (this decode took nvJPEG 0.2 s after a build's
    batches, H200); a failure is tried again at the next build (it may have been a full GPU, for a while)."""
    if (decoder, device) in _WORKING_DECODERS:
        return True
    sample = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 30, 90)).save(sample, "JPEG")
    encoded = [torch.frombuffer(sample.getvalue(), dtype=torch.uint8)]
    try:
        with _outputs_stream(device):  # (not on the caller's stream: see _Streams)
            (pixels,) = decoder(encoded, device)
        if tuple(pixels.shape) != (3, 8, 16):
            raise ValueError(f"decoded to shape {tuple(pixels.shape)}")
    except Exception as error:  # noqa: BLE001 - any failure here means: decode with PIL
        log.warning("JPEG decoding on %s is not available (%s); decoding with PIL on the CPU", device, error)
        return False
    _WORKING_DECODERS.add((decoder, device))
    return True


def _chunks(jpegs: list[DeviceJpeg]) -> list[list[int]]:
    """Positions of `jpegs` in groups of at most MAX_DECODED_PIXELS (at least one image each)."""
    groups, pixels = [[]], 0
    for position, jpeg in enumerate(jpegs):
        if groups[-1] and pixels + jpeg.height * jpeg.width > MAX_DECODED_PIXELS:
            groups.append([])
            pixels = 0
        groups[-1].append(position)
        pixels += jpeg.height * jpeg.width
    return groups


@dataclass(frozen=True)
class _Streams:
    """A device's two decoding streams. torchvision allocates nvJPEG's output on the caller's current stream,
    and nvJPEG writes it from a stream of torchvision's own, which the caching allocator knows nothing of:
    on the encoder's stream that memory could be a block freed while queued kernels still read it. So the
    decoded images are allocated on `outputs`, where nothing else runs, and read (oriented, resized) on
    `work`, each marked as used there: their memory comes back to a later decode only once those reads are
    done. nvJPEG's writes are finished when a decode call returns (torchvision waits for its stream at the
    start and end of each call: the host waits for nvJPEG), and no one waits for `work` or the encoder."""

    outputs: torch.cuda.Stream
    work: torch.cuda.Stream


@functools.lru_cache(maxsize=8)
def _streams(device: torch.device) -> _Streams:
    return _Streams(torch.cuda.Stream(device), torch.cuda.Stream(device))


def _on_cuda(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available()  # (tests stand a decoder in for "cuda" on a CPU)


def _outputs_stream(device: torch.device):
    """The context that allocates the decoder's outputs on `_Streams.outputs` (none off CUDA)."""
    return torch.cuda.stream(_streams(device).outputs) if _on_cuda(device) else contextlib.nullcontext()


@dataclass
class DevicePrepared:
    """Images prepared on a device, perhaps by another thread; `hand_over()`, on the thread that goes on to
    use them, orders that thread's stream after the work that made them."""

    images: list[PreparedImage | None]  # None: refused by the decoder
    ready: torch.cuda.Event | None = None  # recorded after the last kernel that writes them (CUDA)

    def hand_over(self) -> list[PreparedImage | None]:
        if self.ready is not None:
            arrays = [image.array for image in self.images if image is not None]
            if arrays:
                consumer = torch.cuda.current_stream(arrays[0].device)
                consumer.wait_event(self.ready)
                for array in arrays:
                    array.record_stream(consumer)  # not reused by `work` until the consumer is done with it
        return self.images


def _on_work_stream(prepare: Callable[[], list], device: torch.device) -> DevicePrepared:
    if not _on_cuda(device):
        return DevicePrepared(prepare())
    with torch.cuda.stream(_streams(device).work):
        images = prepare()
        ready = torch.cuda.Event()
        ready.record()
    return DevicePrepared(images, ready)


def prepare_on_device(jpegs: list[DeviceJpeg], preprocessor: ImagePreprocessor, device: torch.device,
                      decoder: JpegDecoder) -> list[PreparedImage]:
    """Decode, orient and resize on `device`; arrays of the result stay there (uint8, as `collate` expects),
    ready for the caller's stream. Raises whatever the decoder raises for a batch it cannot decode."""
    return _on_work_stream(lambda: _prepare(jpegs, preprocessor, device, decoder), device).hand_over()


def prepare_what_decodes(jpegs: list[DeviceJpeg], preprocessor: ImagePreprocessor, device: torch.device,
                         decoder: JpegDecoder) -> DevicePrepared:
    """`prepare_on_device`, with None for the images the decoder refuses, for `hand_over()` on the thread that
    uses them (an index build decodes in a thread of its own)."""
    return _on_work_stream(lambda: _what_decodes(jpegs, preprocessor, device, decoder), device)


def _what_decodes(jpegs: list[DeviceJpeg], preprocessor: ImagePreprocessor, device: torch.device,
                  decoder: JpegDecoder) -> list[PreparedImage | None]:
    """A refused batch is halved until the files at fault are alone (one bad file costs about twice the
    batch's decoding, not the batch)."""
    if not jpegs:
        return []
    try:
        return _prepare(jpegs, preprocessor, device, decoder)
    except Exception as error:  # noqa: BLE001 - the caller decodes refused files with PIL, which says why
        if len(jpegs) == 1:
            log.info("the device refused a JPEG (%s)", error)
            return [None]
    half = len(jpegs) // 2
    return (_what_decodes(jpegs[:half], preprocessor, device, decoder)
            + _what_decodes(jpegs[half:], preprocessor, device, decoder))


def _decode(decoder: JpegDecoder, encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """The decoder's images, ready for the current (work) stream (see `_Streams`)."""
    with _outputs_stream(device):
        decoded = decoder(encoded, device)
    if _on_cuda(device):
        streams = _streams(device)
        streams.work.wait_stream(streams.outputs)  # (nothing runs there: in case a decoder queues work on it)
        for pixels in decoded:
            pixels.record_stream(streams.work)
    return decoded


def _prepare(jpegs: list[DeviceJpeg], preprocessor: ImagePreprocessor, device: torch.device,
             decoder: JpegDecoder) -> list[PreparedImage]:
    prepared: list[PreparedImage | None] = [None] * len(jpegs)
    for positions in _chunks(jpegs):
        encoded = _encoded([jpegs[i].data for i in positions])
        decoded = [orient(pixels, jpegs[i].orientation)
                   for i, pixels in zip(positions, _decode(decoder, encoded, device))]
        del encoded
        by_shape: dict[tuple, list[int]] = {}  # images of one shape are resized in one call
        for k, (position, pixels) in enumerate(zip(positions, decoded)):
            by_shape.setdefault(tuple(pixels.shape), []).append(k)
        for members in by_shape.values():
            grid = preprocessor.grid_for(*jpegs[positions[members[0]]].full_size)
            resized = resize_pixels(torch.stack([decoded[k] for k in members]), grid.resized_height,
                                    grid.resized_width, preprocessor.resample)
            for k, pixels in zip(members, resized):
                prepared[positions[k]] = PreparedImage(_model_layout(pixels, preprocessor, grid.num_patches), grid)
        del decoded
    return prepared


def _encoded(files: list[bytes]) -> list[torch.Tensor]:
    """The files' bytes as the decoder takes them, read in place. (Copied in one call into page-locked memory
    instead, the decoding thread was busy 3.9–4.4 s of a build against 2.8 s, and fixed-size builds ran at
    1,846–2,107 img/s against 2,178–2,664: H200, 2026-11-28.)"""
    return [torch.frombuffer(data, dtype=torch.uint8) for data in files]


def _model_layout(pixels_chw: torch.Tensor, preprocessor: ImagePreprocessor, num_patches: int) -> torch.Tensor:
    """Fixed: (3, H, W) as it is; NaFlex: (max_num_patches, p*p*3) row-major patches, zero-padded."""
    if preprocessor.arch == "fixed":
        return pixels_chw
    patches = pixels_chw.new_zeros((preprocessor.max_num_patches, preprocessor.patch_size**2 * 3))
    patches[:num_patches] = patchify(pixels_chw.permute(1, 2, 0), preprocessor.patch_size)
    return patches
