"""Where an index build's time goes on a GPU: nvJPEG's own decoding rate by batch size, whether it lets the
interpreter run meanwhile, and builds with the main thread's time split into its stages (waiting for the
reading threads, waiting for the decoding thread, starting the model, storing; and how busy the decoding
thread was), for each of Python's thread switch intervals asked for. B/16, bf16, generated checkpoint.
Needs a CUDA device and torchvision.
    python bench/gpu_stages.py [--images 8192] [--arch fixed] [--intervals 0.005,0.001] [--per-image-positions]
                               [--check] [--profile FOLDER] [--variants no-encoder,side-stream,urgent-decoding]
"""
import argparse
import sys
import tempfile
import threading
import time

sys.path.insert(0, ".")
import torch

from bench.common import checkpoint, machine, photos, timed, timed_build_stages
from bench.encode import device_decode_rate
from engine import load_model
from engine.index import build as build_module
from engine.model.device_decode import device_decoder, device_jpeg, prepare_on_device

parser = argparse.ArgumentParser()
parser.add_argument("--images", type=int, default=8192)
parser.add_argument("--arch", default="fixed", choices=["fixed", "naflex"])
parser.add_argument("--intervals", default=str(sys.getswitchinterval()), help="sys.setswitchinterval values, s")
parser.add_argument("--repeats", type=int, default=2)
parser.add_argument("--skip-decoding", action="store_true", help="builds only")
parser.add_argument("--per-image-positions", action="store_true",
                    help="NaFlex: also build with transformers' per-image position resizing")
parser.add_argument("--check", action="store_true",
                    help="compare a build's vectors with the same files decoded and encoded one batch at a time, "
                         "the device idle in between (a race between decoding and encoding would show)")
parser.add_argument("--variants", default="",
                    help="builds again with: no-encoder (the model's work replaced by zeros: the ceiling of reading, "
                         "decoding and storing), side-stream (the encoder on a stream of its own, not the legacy "
                         "default one), urgent-decoding (the decoding streams at high priority), threads-N (N "
                         "reading threads)")
parser.add_argument("--profile", metavar="FOLDER",
                    help="then one build under torch.profiler: a Chrome trace (.json.gz, every thread's torch calls "
                         "and the GPU's kernels) and the top operations by host and device time, into FOLDER")
args = parser.parse_args()
print("machine:", machine(), flush=True)
paths = photos(args.images)
model = load_model(str(checkpoint(args.arch, "base")), device="cuda", dtype="bf16")
decoder = device_decoder(model.device, model.image_preprocessor)
if decoder is None:
    sys.exit("no JPEG decoding on this device (a CUDA device and torchvision are needed)")


def decoding_figures() -> None:
    jpegs = [j for j in (device_jpeg(p.read_bytes()) for p in paths) if j is not None]
    encoded = [torch.frombuffer(j.data, dtype=torch.uint8) for j in jpegs]
    megapixels = sum(j.height * j.width for j in jpegs) / 1e6
    print(f"{len(jpegs)} JPEGs, {megapixels / len(jpegs):.2f} MP and {sum(len(j.data) for j in jpegs) / len(jpegs) / 1e3:.0f} kB "
          "each on average", flush=True)

    def decode_all(batch: int) -> None:
        for start in range(0, len(encoded), batch):
            decoder(encoded[start:start + batch], model.device)
        torch.cuda.synchronize()

    decode_all(256)
    for batch in (64, 256, 1024):
        seconds, _ = timed(decode_all, batch)
        print(f"nvJPEG alone, batch {batch}: {len(encoded) / seconds:,.0f} img/s ({megapixels / seconds:,.0f} MP/s)", flush=True)

    def python_steps(seconds: float) -> int:
        count, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            count += 1
        return count

    idle = python_steps(1.0)
    background = threading.Thread(target=decode_all, args=(256,))
    background.start()
    busy = python_steps(1.0)
    background.join()
    print(f"interpreter steps per second while nvJPEG decodes in another thread: {busy / idle:.0%} of idle", flush=True)

    for batch in (256, 512):  # the engine's decode, orient and resize
        print(device_decode_rate(model, paths, decoder, batch, torch.cuda.synchronize), flush=True)

if not args.skip_decoding:
    decoding_figures()

stage_seconds = timed_build_stages()


def builds(label: str, workers: int | None = None) -> None:
    for interval in map(float, args.intervals.split(",")):
        sys.setswitchinterval(interval)
        for _ in range(args.repeats):
            stage_seconds.clear()
            with tempfile.TemporaryDirectory() as index_dir:
                summary = build_module.build_index(model, paths[0].parent, "bench", index_dir, batch_size=512,
                                                   workers=workers)
            stages = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in stage_seconds.items())
            print(f"build {label}, switch interval {interval * 1e3:g} ms: {summary.rate:,.0f} img/s ({summary.encoded} "
                  f"in {summary.seconds:.2f} s); main thread: {stages}", flush=True)


with tempfile.TemporaryDirectory() as warm_up:  # the first build after loading runs slower (not printed)
    build_module.build_index(model, paths[0].parent, "bench", warm_up, batch_size=512)
builds(f"B/16 {args.arch}")


def variant_builds(variant: str) -> None:
    """The builds again with one thing changed (see --variants), then put back."""
    from contextlib import ExitStack

    from engine.model import device_decode

    with ExitStack() as undo:
        workers = None
        if variant == "no-encoder":
            def zeros(**inputs):
                first = next(iter(inputs.values()))
                return torch.ones((first.shape[0], model.embed_dim), device=first.device)
            model.image_features = zeros
            undo.callback(delattr, model, "image_features")
        elif variant == "side-stream":
            undo.enter_context(torch.cuda.stream(torch.cuda.Stream()))
        elif variant == "urgent-decoding":
            highest = -100  # (torch maps a priority beyond the device's range to its end)
            urgent = device_decode._Streams(torch.cuda.Stream(priority=highest), torch.cuda.Stream(priority=highest))
            original = device_decode._streams
            device_decode._streams = lambda device: urgent
            undo.callback(setattr, device_decode, "_streams", original)
        elif variant.startswith("threads-"):
            workers = int(variant.removeprefix("threads-"))
        else:
            raise ValueError(f"unknown variant {variant!r}")
        builds(f"B/16 {args.arch}, {variant}", workers)


for variant in filter(None, args.variants.split(",")):
    try:
        variant_builds(variant)
    except Exception as error:  # noqa: BLE001 - the other variants and checks still run
        print(f"variant {variant} failed: {error!r}", flush=True)
if args.check:
    import numpy as np

    from engine.index.store import ImageIndex
    from engine.model.encode import embed_pixel_batch

    alone = {}
    for first in range(0, len(paths), 512):
        chunk = paths[first:first + 512]
        jpegs = [device_jpeg(p.read_bytes()) for p in chunk]
        assert all(jpegs), "every bench photo is a JPEG the device takes"
        prepared = prepare_on_device(jpegs, model.image_preprocessor, model.device, decoder)
        torch.cuda.synchronize()
        alone.update(zip(map(str, chunk), embed_pixel_batch(model, prepared)))
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as index_dir:
        build_module.build_index(model, paths[0].parent, "bench", index_dir, batch_size=512)
        with ImageIndex.open("bench", index_dir) as index:
            files = index.catalog.all_files()
            built = index.catalog.embeddings_for([files[str(p)].image_id for p in paths], model.embed_dim)
    cosines = np.einsum("nd,nd->n", built, np.stack([alone[str(p)] for p in paths]))
    print(f"check: the build's vectors against one batch at a time: cosine min {cosines.min():.6f}, "
          f"median {np.median(cosines):.6f}, {int((cosines < 0.999).sum())} of {len(cosines)} under 0.999", flush=True)
if args.profile:
    from pathlib import Path

    from torch.profiler import ProfilerActivity, profile

    folder = Path(args.profile)
    folder.mkdir(parents=True, exist_ok=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as profiled, \
            tempfile.TemporaryDirectory() as index_dir:
        summary = build_module.build_index(model, paths[0].parent, "bench", index_dir, batch_size=512)
    print(f"profiled build: {summary.rate:,.0f} img/s", flush=True)
    profiled.export_chrome_trace(str(folder / f"build-{args.arch}.json.gz"))
    for key in ("self_cpu_time_total", "self_device_time_total"):
        table = profiled.key_averages().table(sort_by=key, row_limit=25)
        (folder / f"build-{args.arch}-{key}.txt").write_text(table)
        print(table, flush=True)
if args.per_image_positions and args.arch == "naflex":
    del model.model.vision_model.embeddings.resize_positional_embeddings  # transformers' own, once per image
    builds(f"B/16 {args.arch} with transformers' per-image position resizing")
