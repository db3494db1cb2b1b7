"""Building an index on Ray Data, for folders one machine encodes too slowly.

files to do → read, hash, decode and preprocess (an actor pool on CPUs) → encode (an actor pool, one model per
actor, GPU or CPU) → Parquet shards (engine.index.shards) → ingest into the index. Without an address Ray starts
on this machine's cores; with one it joins a running cluster (`ray start --head` on a node). Incremental and
resumable like the local build: files already stored are not encoded again, files already in a written shard are
not encoded again, and a killed run picks up from its shards.
"""

from __future__ import annotations

import logging
import os
import pickle
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ImageReadError, IndexStoreError
from ..faults import crash_point
from ..model.encode import ProgressCallback, decode_target, embed_pixel_batch
from ..model.images import decode_image_bytes, read_file_bytes
from ..model.loading import LoadedModel, load_model
from ..model.openvino_int8 import OPENVINO_INT8
from ..model.preprocess import ImagePreprocessor
from .build import BuildSummary, FolderBuild, building, folder_to_index
from .shards import ShardRows, ingest_shards, shard_files, write_shard, written_paths
from .listing import model_fingerprint

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SHARDS, INGESTED = "shards", "ingested"


@dataclass(frozen=True)
class ModelSpec:
    """What a Ray worker needs to load the driver's model again."""

    name: str
    device: str
    dtype: str
    max_num_patches: int | None
    compiled: bool = False

    @classmethod
    def of(cls, model: LoadedModel) -> "ModelSpec":
        patches = model.image_preprocessor.max_num_patches if model.arch == "naflex" else None
        return cls(model.name, model.device.type, model.precision, patches, model.compiled)


@dataclass
class DistributedBuildSummary(BuildSummary):
    """A local build's counts, plus the Ray side: shards written now and ingested, workers used."""

    stored: int = 0  # new image contents stored from the shards (encoded now or by a stopped run)
    shards_written: int = 0
    shards_ingested: int = 0
    encoders: int = 0
    address: str = "local"
    failures: list[tuple[str, str]] = field(default_factory=list)


def read_and_prepare(batch: dict, preprocessor: ImagePreprocessor, reduced: bool) -> dict:
    """A Ray Data batch of files → hashes, sizes and preprocessed pixels (pickled), or why a file failed."""
    out = {key: [] for key in ("sha256", "width", "height", "prepared", "error")}
    target = preprocessor.target_size if reduced else None
    for path in batch["path"]:
        try:
            data, sha = read_file_bytes(path)
            image, full_size = decode_image_bytes(data, path, target)
            prepared = preprocessor(image, full_size)
            values = (sha, prepared.grid.original_width, prepared.grid.original_height, pickle.dumps(prepared), "")
        except ImageReadError as error:
            values = ("", 0, 0, b"", error.reason)
        for key, value in zip(out, values):
            out[key].append(value)
    return {**batch, **{key: np.array(values, dtype=object) for key, values in out.items()}}


class Reader:
    """A Ray actor that reads files and prepares their pixels (`read_and_prepare`)."""

    def __init__(self, preprocessor: ImagePreprocessor, reduced: bool):
        self.preprocessor, self.reduced = preprocessor, reduced

    def __call__(self, batch: dict) -> dict:
        return read_and_prepare(batch, self.preprocessor, self.reduced)


class Encoder:
    """A Ray actor holding one copy of the model; turns prepared pixels into (n, dim) embeddings."""

    def __init__(self, spec: ModelSpec, threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.model = load_model(spec.name, device=spec.device, dtype=spec.dtype, max_num_patches=spec.max_num_patches,
                                compile=spec.compiled)

    def __call__(self, batch: dict) -> dict:
        count = len(batch["path"])
        vectors = np.zeros((count, self.model.embed_dim), dtype=np.float32)
        good = [i for i in range(count) if not batch["error"][i]]
        if good:
            prepared = [pickle.loads(batch["prepared"][i]) for i in good]
            vectors[good] = embed_pixel_batch(self.model, prepared)
        kept = {key: value for key, value in batch.items() if key != "prepared"}
        return {**kept, "vector": vectors}


class _RayNotices(logging.Filter):
    """Keeps off the console two notices about choices this module makes on purpose."""

    HIDDEN = ("Token authentication is enabled for this Ray cluster", "Progress bars disabled")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.HIDDEN)


def _quiet_ray_console() -> None:
    """Ray's INFO lines off the console (Ray Data's log file keeps its own); its warnings and errors stay."""
    import ray.data  # noqa: F401  (sets up the ray.data logger's handlers, replacing earlier ones)

    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.setLevel(max(handler.level, logging.WARNING))
                if not any(isinstance(f, _RayNotices) for f in handler.filters):
                    handler.addFilter(_RayNotices())


def _start_ray(address: str | None, num_cpus: int | None) -> bool:
    """Connect to a cluster or start Ray here; False when the caller had started it already."""
    import ray

    if ray.is_initialized():
        return False
    _quiet_ray_console()  # before ray.init, which logs the token notice (and keeps these handlers)
    if address:  # a cluster: ship this engine to its workers
        ray.init(address=address, runtime_env={"py_modules": [str(PROJECT_ROOT / "engine")]}, log_to_driver=False)
    else:
        path = os.pathsep.join(x for x in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if x)
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path, "TOKENIZERS_PARALLELISM": "false"}})
    ray.data.DataContext.get_current().enable_progress_bars = False  # the caller's progress callback reports
    return True


@dataclass(frozen=True)
class CpuShare:
    """How a build shares Ray's CPUs: torch threads (and CPUs held, on CPU) per encoder, and reading actors."""

    per_encoder: int
    readers: int


def share_cpus(cluster_cpus: int, on_gpu: bool, encoders: int, per_encoder: int | None = None) -> CpuShare:
    """CPUs per encoder (given, or an even share of all but one) and the reading actors that fit beside the
    encoders; IndexStoreError when CPU encoders would leave no CPU to read with (the build would wait forever)."""
    per_encoder = per_encoder or max(1, (cluster_cpus - 1) // encoders)
    if on_gpu:  # a GPU encoder holds no CPU, but feeds its GPU from one
        return CpuShare(per_encoder, max(1, cluster_cpus - encoders))
    left = cluster_cpus - encoders * per_encoder
    if left < 1:
        raise IndexStoreError(f"{encoders} encoder(s) of {per_encoder} CPU(s) each leave none of Ray's "
                              f"{cluster_cpus} CPUs to read images with: use fewer encoders, or more CPUs.")
    return CpuShare(per_encoder, left)


def pipeline(model: LoadedModel, rows: list[dict], batch_size: int, encoders: int, share: CpuShare):
    """The Ray Data dataset that reads `rows` (path, size, mtime_ns) and encodes them; Ray must be running."""
    import ray

    on_gpu = model.device.type == "cuda"
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows) // 16, 512)))
    # readers in an actor pool of their own: Ray fuses a task step into the actor step after it, which would
    # leave decoding to the encoders' processes; an actor step is never fused into another
    readers = ray.data.ActorPoolStrategy(min_size=1, max_size=share.readers)
    dataset = dataset.map_batches(Reader, batch_size=16, batch_format="numpy", compute=readers, num_cpus=1,
                                  fn_constructor_kwargs={"preprocessor": model.image_preprocessor,
                                                         "reduced": decode_target(model) is not None})
    return dataset.map_batches(Encoder, batch_size=batch_size, batch_format="numpy",
                               compute=ray.data.ActorPoolStrategy(size=encoders),
                               num_gpus=1 if on_gpu else 0, num_cpus=0 if on_gpu else share.per_encoder,
                               fn_constructor_kwargs={"spec": ModelSpec.of(model), "threads": share.per_encoder})


def _encode_on_ray(model: LoadedModel, todo: list, shards_dir: Path, shard_size: int, batch_size: int,
                   encoders: int, share: CpuShare, progress: ProgressCallback | None) -> tuple[int, int]:
    """Run the pipeline over `todo` (FileStates) and write its output as shards: (shards written, images
    encoded)."""
    rows = [{"path": s.path, "size": s.size, "mtime_ns": s.mtime_ns} for s in todo]
    dataset = pipeline(model, rows, batch_size, encoders, share)
    run, written, done, encoded = uuid.uuid4().hex[:8], 0, 0, 0
    fingerprint = model_fingerprint(model)
    for batch in dataset.iter_batches(batch_size=shard_size, batch_format="numpy"):
        errors = [e or None for e in batch["error"]]
        shard = ShardRows([s or None for s in batch["sha256"]], list(batch["path"]), batch["size"].tolist(),
                          batch["mtime_ns"].tolist(), [int(w) for w in batch["width"]],
                          [int(h) for h in batch["height"]], np.asarray(batch["vector"], np.float32), errors)
        write_shard(shard, shards_dir / f"{run}-{written:05d}.parquet", model.name, fingerprint)
        written += 1
        done += len(shard)
        encoded += sum(1 for e in errors if not e)
        crash_point("ray-shard")
        if progress:
            progress(done, len(rows))
    return written, encoded


def build_index_on_ray(
    model: LoadedModel,
    folder: str | Path,
    name: str,
    index_dir: str | Path | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    encoders: int = 1,
    cpus_per_encoder: int | None = None,
    batch_size: int = 32,
    shard_size: int = 1000,
    factory: str | None = None,
    progress: ProgressCallback | None = None,
) -> DistributedBuildSummary:
    """Create or update index `name` from `folder` with Ray; safe to kill and run again (see the module)."""
    try:
        import ray
    except ImportError:
        raise IndexStoreError("The Ray engine needs Ray: pip install -r requirements-scale.txt") from None
    if address and model.quantization == OPENVINO_INT8:
        raise IndexStoreError("int8-openvino is calibrated on this project's example photos, which are not shipped "
                              "to a cluster's machines: build there with --dtype int8, or without --address.")
    start = time.perf_counter()
    root = folder_to_index(folder)
    summary = DistributedBuildSummary(name=name, folder=str(root), address=address or "local")
    with building(name, model, index_dir, factory) as index:
        shards_dir, ingested_dir = index.path / SHARDS, index.path / SHARDS / INGESTED
        ingested_dir.mkdir(parents=True, exist_ok=True)
        todo = FolderBuild(model, index, root, summary, batch_size, float("inf")).plan()
        in_shards = written_paths(shards_dir)  # from a run that was stopped before it ingested them
        todo = [state for state in todo if state.path not in in_shards]
        if todo:
            started = _start_ray(address, num_cpus)
            summary.encoders = encoders
            try:
                share = share_cpus(int(ray.cluster_resources().get("CPU", 1)), model.device.type == "cuda",
                                   encoders, cpus_per_encoder)
                summary.shards_written, summary.encoded = _encode_on_ray(
                    model, todo, shards_dir, shard_size, batch_size, encoders, share, progress)
            finally:
                if started:
                    ray.shutdown()
        pending = shard_files(shards_dir)
        ingested = ingest_shards(index, pending)
        for shard in pending:  # ingesting again would be harmless; moving keeps the next build from re-reading
            shard.rename(ingested_dir / shard.name)
        summary.shards_ingested = ingested.shards
        summary.stored, summary.linked = ingested.encoded, summary.linked + ingested.linked
        summary.unchanged += ingested.unchanged
        summary.skipped += ingested.skipped
        info = index.info()
        summary.images, summary.files, summary.index_type = info.images, info.files, info.index_type
    summary.seconds = time.perf_counter() - start
    return summary
