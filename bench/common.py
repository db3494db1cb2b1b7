"""Shared pieces of the benchmarks: a cached generated checkpoint and synthetic photos."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parent / "out"


# the released checkpoint each generated fixed-resolution size stands for (NaFlex ones: 256 patches of 16)
RELEASED_SHAPES = {"base": dict(image_size=224, patch_size=16),  # siglip2-base-patch16-224
                   "large": dict(image_size=256, patch_size=16),  # siglip2-large-patch16-256
                   "so400m": dict(image_size=224, patch_size=14)}  # siglip2-so400m-patch14-224


def checkpoint(arch: str, size: str) -> Path:
    """A generated (random-weight) checkpoint, made once and kept in bench/out/ (drawn on the GPU if any)."""
    import torch

    from engine.model.testmodel import make_test_model

    directory = OUT / f"{size}-{arch}"
    if not (directory / "model.safetensors").exists():
        shape = RELEASED_SHAPES.get(size, {}) if arch == "fixed" else {}
        try:
            make_test_model(directory, arch=arch, size=size, seed=0,
                            device="cuda" if torch.cuda.is_available() else "cpu", **shape)
        except RuntimeError as error:  # e.g. a GPU too small for So400m's two towers in fp32: draw on the CPU
            print(f"(drawing the {size} weights on the CPU: {error})")
            make_test_model(directory, arch=arch, size=size, seed=0, **shape)
    return directory


_CAMERA_SIZES = [(480, 640), (640, 480), (900, 1600), (1200, 1600), (768, 1024)]  # (height, width)


def _write_photo(path: Path, seed: int, number: int) -> None:
    height, width = _CAMERA_SIZES[number % len(_CAMERA_SIZES)]
    rng = np.random.default_rng([seed, number])
    small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC).save(path, quality=90)


def photos(count: int, folder: Path | None = None, seed: int = 0) -> list[Path]:
    """Distinct JPEG files of camera-like sizes (640×480 to 1600×1200, both orientations), written by all
    cores when there are many; by default in a folder of their own count, which the benchmarks that build an
    index from the folder index whole (a shared folder held every photo an earlier, larger run had made)."""
    from concurrent.futures import ProcessPoolExecutor

    # each file seeded by its own number: files made by an earlier, shorter call must not repeat (an index
    # build stores repeated content once, and would skip the work being measured)
    folder = folder or OUT / f"camera-photos-{count}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"photo_{i:05d}.jpg" for i in range(count)]
    missing = [(path, seed, i) for i, path in enumerate(paths) if not path.exists()]
    if len(missing) > 64:
        with ProcessPoolExecutor() as pool:
            list(pool.map(_write_photo, *zip(*missing), chunksize=16))
    else:
        for arguments in missing:
            _write_photo(*arguments)
    return paths


def machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def build_line(model, folder: Path, batch: int, workers: int | None = None, device_decode: bool = False) -> str:
    """`build_index` of `folder` into a fresh temporary index (every image encoded), as one line of figures."""
    import tempfile

    from engine.index.build import build_index

    with tempfile.TemporaryDirectory() as index_dir:
        summary = build_index(model, folder, "bench", index_dir, batch_size=batch, workers=workers,
                              device_decode=device_decode)
    decoded_by = "nvJPEG on the device" if device_decode else "PIL in threads"
    return (f"JPEG files → index, batch {batch}, {workers or 'default'} threads, decoded by {decoded_by}: "
            f"{summary.rate:,.0f} img/s ({summary.encoded} images, {summary.seconds:.2f} s)")


def timed_build_stages() -> dict[str, float]:
    """Wraps the index build's stages with timers: the returned dict sums each stage's seconds on the main
    thread (and the decoding thread's busy time) until cleared. For benchmarks only: the patch stays."""
    from collections import defaultdict

    from engine.index import build as build_module

    seconds: dict[str, float] = defaultdict(float)

    def timed_stage(name, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[name] += time.perf_counter() - start
        return wrapper

    def timed_iterator(name, function):
        def wrapper(*args, **kwargs):
            iterator = function(*args, **kwargs)
            while True:
                start = time.perf_counter()
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                finally:
                    seconds[name] += time.perf_counter() - start
                yield item
        return wrapper

    build_module.ordered_parallel_map = timed_iterator("waiting for the reading threads",
                                                       build_module.ordered_parallel_map)
    build_module.start_pixel_batch = timed_stage("starting the model (collate, launch)", build_module.start_pixel_batch)
    for method, name in (("_take_decoded", "waiting for the decoding thread"),
                         ("_store", "storing (waits for vectors)"), ("_take", "taking reads"),
                         ("_decode_on_device", "(the decoding thread busy)")):
        setattr(build_module.FolderBuild, method, timed_stage(name, getattr(build_module.FolderBuild, method)))
    return seconds
