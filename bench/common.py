"""Shared pieces of the benchmarks: a cached generated checkpoint and synthetic photos."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).resolve().parent / "out"


def checkpoint(arch: str, size: str) -> Path:
    """A generated (random-weight) checkpoint, made once and kept in bench/out/."""
    from engine.model.testmodel import make_test_model

    directory = OUT / f"{size}-{arch}"
    if not (directory / "model.safetensors").exists():
        make_test_model(directory, arch=arch, size=size, seed=0)
    return directory


def photos(count: int, folder: Path | None = None, seed: int = 0) -> list[Path]:
    """Distinct JPEG files of camera-like sizes (640×480 to 1600×1200, both orientations)."""
    # each file seeded by its own number: files made by an earlier, shorter call must not repeat (an index
    # build stores repeated content once, and would skip the work being measured)
    folder = folder or OUT / "camera-photos"
    folder.mkdir(parents=True, exist_ok=True)
    sizes = [(480, 640), (640, 480), (900, 1600), (1200, 1600), (768, 1024)]
    paths = []
    for i in range(count):
        path = folder / f"photo_{i:05d}.jpg"
        if not path.exists():
            height, width = sizes[i % len(sizes)]
            rng = np.random.default_rng([seed, i])
            small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
            Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads" + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result
