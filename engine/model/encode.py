"""Batched image and text encoding to L2-normalised float32 embeddings.

Images are decoded and preprocessed by a thread pool ahead of the model, so the model does not wait on
JPEG decoding; one unreadable image is reported and skipped, never losing the rest of the batch.
"""

from __future__ import annotations

import os
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ImageReadError
from .batcher import MicroBatcher
from .images import ImageInput, TargetSize, open_for_model, source_name
from .loading import LoadedModel
from .preprocess import PatchGrid, PreparedImage

ProgressCallback = Callable[[int, int], None]  # (done, total)

DEFAULT_IMAGE_BATCH = 32
DEFAULT_TEXT_BATCH = 64


@dataclass
class ImageFailure:
    source: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source}: {self.reason}, skipped"


@dataclass
class ImageEmbeddings:
    vectors: np.ndarray  # (n_encoded, dim) float32, rows L2-normalised, in input order
    sources: list[str]  # one per row
    input_positions: list[int]  # each row's position in the input sequence
    grids: list[PatchGrid]
    failures: list[ImageFailure] = field(default_factory=list)


@dataclass
class TextEmbeddings:
    vectors: np.ndarray  # (n, dim) float32, rows L2-normalised
    texts: list[str]
    truncated: list[bool]
    warnings: list[str] = field(default_factory=list)


def l2_normalize(vectors: torch.Tensor) -> np.ndarray:
    vectors = vectors.float()
    return torch.nn.functional.normalize(vectors, dim=-1).cpu().numpy().astype(np.float32)


@dataclass
class _Prepared:
    position: int
    source: str
    image: PreparedImage | None
    failure: ImageFailure | None


def decode_target(model: LoadedModel) -> TargetSize | None:
    """Whether JPEGs may be decoded at reduced scale for `model` (see images.open_for_model): never on the fp32
    reference path, whose pixels match transformers' exactly; the int8, bf16 and fp16 paths already differ
    from fp32 by more than reduced decoding adds (bench/encode.py measures both)."""
    return None if model.precision == "fp32" else model.image_preprocessor.target_size


def _prepare(model: LoadedModel, position: int, item: ImageInput) -> _Prepared:
    source = source_name(item, position)
    try:
        image, full_size = open_for_model(item, position, decode_target(model))
        return _Prepared(position, source, model.image_preprocessor(image, full_size), None)
    except ImageReadError as error:
        return _Prepared(position, source, None, ImageFailure(error.source, error.reason))


def ordered_parallel_map(fn: Callable, items: Sequence, workers: int | None = None, lookahead: int = 64,
                         chunk: int = 1) -> Iterator:
    """fn(item) for each item in a thread pool, yielded in input order with a bounded lookahead.

    Decoding (PIL releases the GIL) runs ahead of the caller, so the model does not wait on it. `chunk` items
    go to a thread at a time: for a cheap `fn` run thousands of times a second (an index build's reading on a
    GPU machine), a future per item cost the caller's thread more than the reading cost the workers.
    """
    workers = workers or min(8, (os.cpu_count() or 2))

    def run(part: Sequence) -> tuple[list, Exception | None]:
        """The results up to the first exception, and the exception: the caller gets those before it."""
        results = []
        try:
            for item in part:
                results.append(fn(item))
        except Exception as error:  # noqa: BLE001 - raised to the caller after the results before it
            return results, error
        return results, None

    def results_of(future) -> Iterator:
        results, error = future.result()
        yield from results
        if error is not None:
            raise error

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        for start in range(0, len(items), chunk):
            pending.append(pool.submit(run, items[start:start + chunk]))
            if len(pending) * chunk >= lookahead:
                yield from results_of(pending.popleft())
        for future in pending:
            yield from results_of(future)


@dataclass
class PendingVectors:
    """Embeddings that a GPU may still be computing and copying back; `result()` waits for them."""

    vectors: torch.Tensor  # (n, dim) float32 on the host (page-locked while a CUDA copy is under way)
    copied: torch.cuda.Event | None = None

    @property
    def done(self) -> bool:
        return self.copied is None or self.copied.query()

    def result(self) -> np.ndarray:
        if self.copied is not None:
            self.copied.synchronize()
        return self.vectors.numpy()


@torch.inference_mode()
def start_pixel_batch(model: LoadedModel, prepared: list[PreparedImage]) -> PendingVectors:
    """Start embedding already-preprocessed images; on a GPU this returns before the device is done, so the
    caller can prepare the next batch (or store the last one) meanwhile. On a CPU it returns when done."""
    batch = model.image_preprocessor.collate(prepared)
    features = model.image_features(**batch.model_inputs(model.device, model.dtype)).float()
    features = torch.nn.functional.normalize(features, dim=-1)
    if not features.is_cuda:
        return PendingVectors(features.cpu())  # MPS and XLA tensors too
    with torch.cuda.device(features.device):  # the copy and its event on the features' own device
        host = torch.empty(features.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(features, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record(torch.cuda.current_stream(features.device))
    return PendingVectors(host, copied)


def embed_pixel_batch(model: LoadedModel, prepared: list[PreparedImage]) -> np.ndarray:
    """(n, dim) normalised embeddings for already-preprocessed images."""
    return start_pixel_batch(model, prepared).result()


@torch.inference_mode()
def embed_token_batch(model: LoadedModel, input_ids: np.ndarray) -> np.ndarray:
    """(n, dim) normalised embeddings of tokenized texts (n, 64)."""
    ids = torch.from_numpy(np.ascontiguousarray(input_ids)).to(model.device)
    return l2_normalize(model.model.get_text_features(input_ids=ids).pooler_output)


@dataclass
class _Shared:
    images: MicroBatcher
    texts: MicroBatcher


_serving: weakref.WeakKeyDictionary[LoadedModel, _Shared] = weakref.WeakKeyDictionary()


def serve_concurrently(model: LoadedModel) -> None:
    """From now on, single-image and single-text encodes of `model` that arrive together from several threads
    (a server's concurrent requests) share one forward pass. `stop_serving` ends it."""
    if model in _serving:
        return
    ref = weakref.ref(model)  # the worker threads must not keep a replaced model alive

    def images(prepared: list[PreparedImage]) -> np.ndarray:
        return embed_pixel_batch(ref(), prepared)

    def texts(rows: list[np.ndarray]) -> np.ndarray:
        return embed_token_batch(ref(), np.stack(rows))

    # images of one batch must share a shape (a sequence-length change may land between requests)
    _serving[model] = _Shared(MicroBatcher(images, key=lambda p: p.array.shape, name="image-batcher"),
                              MicroBatcher(texts, name="text-batcher"))


def stop_serving(model: LoadedModel) -> None:
    shared = _serving.pop(model, None)
    if shared:
        shared.images.close()
        shared.texts.close()


def serving_stats(model: LoadedModel) -> tuple[int, int]:
    """(forward passes, items) run by the concurrent-serving batchers of `model` so far."""
    shared = _serving.get(model)
    return (shared.images.batches + shared.texts.batches, shared.images.items + shared.texts.items) if shared \
        else (0, 0)


def _embed_images(model: LoadedModel, prepared: list[PreparedImage]) -> np.ndarray:
    shared = _serving.get(model)
    if shared is None or len(prepared) != 1:
        return embed_pixel_batch(model, prepared)
    return shared.images(prepared[0])[None]


def encode_images(
    model: LoadedModel,
    images: Sequence[ImageInput],
    batch_size: int = DEFAULT_IMAGE_BATCH,
    progress: ProgressCallback | None = None,
    workers: int | None = None,
) -> ImageEmbeddings:
    """Embed images (paths or PIL images); unreadable ones are listed in `failures`."""
    vectors, sources, positions, grids, failures = [], [], [], [], []
    pending: list[_Prepared] = []
    done = 0

    def flush():
        nonlocal done
        if pending:
            vectors.append(_embed_images(model, [p.image for p in pending]))
            sources.extend(p.source for p in pending)
            positions.extend(p.position for p in pending)
            grids.extend(p.image.grid for p in pending)
            done += len(pending)
            pending.clear()
        if progress:
            progress(done + len(failures), len(images))

    prepare = lambda pair: _prepare(model, *pair)  # noqa: E731
    for item in ordered_parallel_map(prepare, list(enumerate(images)), workers):
        if item.failure:
            failures.append(item.failure)
            continue
        pending.append(item)
        if len(pending) >= batch_size:
            flush()
    flush()
    stacked = np.concatenate(vectors) if vectors else np.zeros((0, model.embed_dim), dtype=np.float32)
    return ImageEmbeddings(stacked, sources, positions, grids, failures)


@torch.inference_mode()
def encode_texts(
    model: LoadedModel,
    texts: Sequence[str],
    batch_size: int = DEFAULT_TEXT_BATCH,
    progress: ProgressCallback | None = None,
) -> TextEmbeddings:
    """Embed texts by the reference recipe (64 ids, no attention mask, pooled at the last position)."""
    texts = list(texts)
    tokens = model.tokenizer(texts)
    chunks, shared = [], _serving.get(model)
    if shared is not None and len(texts) == 1:
        chunks.append(shared.texts(tokens.input_ids[0])[None])
    else:
        for start in range(0, len(texts), batch_size):
            chunks.append(embed_token_batch(model, tokens.input_ids[start : start + batch_size]))
            if progress:
                progress(min(start + batch_size, len(texts)), len(texts))
    vectors = np.concatenate(chunks) if chunks else np.zeros((0, model.embed_dim), dtype=np.float32)
    return TextEmbeddings(vectors, texts, tokens.truncated, tokens.warnings)
