"""The baseline: plain transformers (its image processor + get_image_features, fp32), what a careful user
writes, run in a process of its own. `load_model` makes the engine's process keep freed memory
(engine.model.allocator); a user's own script keeps glibc's defaults, and so does this process."""

from __future__ import annotations

import multiprocessing
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def plain_transformers(model, processor, images, batch: int) -> np.ndarray:
    """(n, dim) normalised embeddings: batched processor + get_image_features."""
    import torch

    chunks = []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            inputs = processor(images=images[start : start + batch], return_tensors="pt").to(model.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
            output = model.get_image_features(**inputs).pooler_output
            chunks.append(torch.nn.functional.normalize(output.float(), dim=-1).cpu().numpy())
    return np.concatenate(chunks)


@dataclass(frozen=True)
class Measured:
    """A run timed where it ran, and the minor page faults it took."""

    seconds: float
    output: np.ndarray
    faults: float


class PlainProcess:
    """Plain transformers on `paths`, in a spawned child process; `run(from_files)` times one pass."""

    def __init__(self, directory: Path, max_num_patches: int | None, paths: list[Path], batch: int):
        context = multiprocessing.get_context("spawn")
        self._connection, child = context.Pipe()
        self._process = context.Process(target=_serve, daemon=True,
                                        args=(child, str(directory), max_num_patches, [str(p) for p in paths], batch))
        self._process.start()
        self._connection.recv()  # loaded and warmed up

    def run(self, from_files: bool) -> Measured:
        self._connection.send(from_files)
        return self._connection.recv()

    def close(self) -> None:
        self._connection.send(None)
        self._process.join()


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _serve(connection, directory: str, max_num_patches: int | None, paths: list[str], batch: int) -> None:
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained(directory, dtype=torch.float32).eval()
    processor = AutoImageProcessor.from_pretrained(directory)
    if max_num_patches:
        processor.max_num_patches = max_num_patches
    decoded = [Image.open(p).convert("RGB") for p in paths]
    plain_transformers(model, processor, decoded[:batch], batch)
    connection.send("ready")
    while (from_files := connection.recv()) is not None:
        start, faults = time.perf_counter(), minor_faults()
        images = [Image.open(p).convert("RGB") for p in paths] if from_files else decoded
        vectors = plain_transformers(model, processor, images, batch)
        seconds = time.perf_counter() - start
        connection.send(Measured(seconds, vectors, minor_faults() - faults))
