"""Image-encoding throughput of the B/16 configuration, fixed 224 and NaFlex 256, in one run on the same
images: transformers called plainly (its image processor + get_image_features, fp32, in a process of its own:
bench/plain.py), the engine in fp32,
the engine's int8 CPU paths (torch's dynamic int8, and OpenVINO's static int8 where openvino and nncf are
installed), and any other backend asked for, with each one's ratio to plain transformers
given the same input (decoded images, or the JPEG files: what a user has) and the cosine of its embeddings
to the engine's fp32 ones.

Timings on a shared machine are noisy, so the variants run interleaved, round after round, and each
reports its median round. Generated (random-weight) checkpoints: real checkpoints, whose activations have
outliers, need their own parity check (`--model DIR_OR_HUB_ID`).

    python bench/encode.py [--images 24] [--rounds 2] [--batch 8] [--arch naflex] [--compile] [--int8-kernels]
    python bench/encode.py --device cuda --size base,large,so400m [--images 4096] [--batch 0 = sized to the
        device] [--compile]   (bench/gpu.sh runs it on a GPU machine: model on device, from prepared inputs,
        decoding alone, JPEG files → index)
    python bench/encode.py --build-only            (JPEG files → index against the model alone, int8 and fp32)
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.common import build_line, checkpoint, machine, photos, timed  # noqa: E402
from bench.plain import Measured, PlainProcess, minor_faults  # noqa: E402
from engine.model.openvino_int8 import openvino_available  # noqa: E402

TEXTS = ["a photo of a cat", "ein foto von einem hund im park", "a red car parked on the street at night",
         "一只猫坐在沙发上", "une photo d'un chat sur le canapé", "a bowl of fruit on a wooden table"] * 4


def cosine_to(reference: np.ndarray, vectors: np.ndarray) -> str:
    cosines = (reference * vectors).sum(axis=1)
    return f"cos min {cosines.min():.5f} mean {cosines.mean():.5f}"


def interleaved(variants: dict, rounds: int) -> dict[str, Measured]:
    """{name: median seconds and page faults of its rounds, and its last output}, running the variants in turn,
    `rounds` times. A variant may time itself where it runs (bench.plain's process) by returning Measured."""
    measured: dict[str, list[Measured]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            faults = minor_faults()
            elapsed, output = timed(run)
            if not isinstance(output, Measured):
                output = Measured(elapsed, output, minor_faults() - faults)
            measured[name].append(output)
    return {name: Measured(statistics.median(m.seconds for m in runs), runs[-1].output,
                           statistics.median(m.faults for m in runs)) for name, runs in measured.items()}


def cpu_comparison(args, arch: str) -> None:
    from PIL import Image

    from engine import load_model
    from engine.model.encode import embed_pixel_batch, encode_images, encode_texts
    from engine.model.images import open_image

    source = args.model or str(checkpoint(arch, args.size))
    fp32 = load_model(source, device="cpu", dtype="fp32", max_num_patches=args.max_patches)
    if fp32.arch != arch:
        return
    paths = photos(args.images)
    batch = args.batch or 8
    plain = PlainProcess(fp32.directory, fp32.image_preprocessor.max_num_patches if arch == "naflex" else None,
                         paths, batch)
    int8 = load_model(source, dtype="int8", max_num_patches=args.max_patches)
    # first load of a checkpoint calibrates (about 40 s for B/16 here), later ones read the kept encoders
    openvino = load_model(source, dtype="int8-openvino", max_num_patches=args.max_patches) \
        if openvino_available() else None
    decoded = [Image.open(p).convert("RGB") for p in paths]
    batches = -(-len(paths) // batch)
    print(f"\n{args.size if not args.model else source} {arch} {fp32.image_setting}, {len(paths)} JPEGs "
          f"(640×480 to 1600×1200), batch {batch}, {args.rounds} interleaved rounds, median round; plain "
          f"transformers in a process of its own (glibc's default malloc):")

    engines = {"engine fp32": fp32, "engine int8": int8}
    if openvino:
        engines["engine int8-openvino"] = openvino
    if args.int8_kernels:
        engines["engine int8, fbgemm kernels"] = int8_packed_for(source, args.max_patches, "fbgemm")
    if args.compile:
        for name, model in (("fp32", fp32), ("int8", int8)):  # the same weights, compiled (no second load)
            engines[f"engine {name} + torch.compile"] = dataclasses.replace(model, compiled=True)
    variants = {"transformers fp32 (plain)": lambda: plain.run(from_files=False)}
    for name, model in engines.items():
        variants[name] = lambda model=model: encode_images(model, decoded, batch_size=batch).vectors
    variants["transformers fp32 (plain), from JPEG files"] = lambda: plain.run(from_files=True)
    variants["engine fp32, from JPEG files"] = lambda: encode_images(fp32, paths, batch_size=batch).vectors
    variants["engine int8, from JPEG files"] = lambda: encode_images(int8, paths, batch_size=batch).vectors
    if openvino:
        variants["engine int8-openvino, from JPEG files"] = lambda: encode_images(
            openvino, paths, batch_size=batch).vectors
    if args.compile:
        compiled = engines["engine int8 + torch.compile"]
        variants["engine int8 + torch.compile, from JPEG files"] = lambda: encode_images(
            compiled, paths, batch_size=batch).vectors
    warm = time.perf_counter()
    for model in engines.values():  # first calls: allocator, thread pools, torch.compile's compilation
        encode_images(model, decoded[:batch], batch_size=batch)
        if len(decoded) % batch:  # the last, smaller batch: a fixed-size compiled model recompiles once for it
            encode_images(model, decoded[: len(decoded) % batch], batch_size=batch)
    print(f"  (warm-up {time.perf_counter() - warm:.0f} s)")

    results = interleaved(variants, args.rounds)
    plain.close()
    reference = results["engine fp32"].output
    for name, result in results.items():
        # each row against plain transformers given the same input: decoded images, or the JPEG files
        baseline = "transformers fp32 (plain)" + (", from JPEG files" if "from JPEG files" in name else "")
        print(f"  {name:44s} {len(paths) / result.seconds:8.2f} img/s  "
              f"{results[baseline].seconds / result.seconds:5.2f}× plain  {cosine_to(reference, result.output)}  "
              f"{result.faults / batches:,.0f} page faults per batch")

    # the model alone, on already preprocessed images (what the int8 path changes), and the texts
    prepared = [fp32.image_preprocessor(open_image(p)) for p in paths]

    def model_only(model):
        return np.concatenate([embed_pixel_batch(model, prepared[i : i + batch])
                               for i in range(0, len(prepared), batch)])

    timings = interleaved({name: (lambda m=m: model_only(m)) for name, m in engines.items()}, args.rounds)
    _print_against_fp32(timings, "model only", len(paths), "img/s")
    texts = interleaved({name: (lambda m=m: encode_texts(m, TEXTS).vectors) for name, m in engines.items()
                         if "compile" not in name}, args.rounds)
    _print_against_fp32(texts, "texts", len(TEXTS), "txt/s")
    for name in ("engine int8-openvino", "engine int8", "engine fp32"):
        if name in engines:
            build_against_model(engines[name], name, paths, batch)


def _print_against_fp32(results: dict[str, Measured], what: str, count: int, unit: str) -> None:
    base = results["engine fp32"]
    for name, result in results.items():
        print(f"  {what}, {name:{44 - len(what)}s} {count / result.seconds:8.2f} {unit}  "
              f"{base.seconds / result.seconds:5.2f}× fp32  {cosine_to(base.output, result.output)}")


def int8_packed_for(source: str, max_patches: int | None, kernels: str):
    """The int8 model with its weights packed for another quantized engine than the engine's choice."""
    from engine import load_model
    from engine.model.quantize import INT8, quantize_int8

    model = load_model(source, device="cpu", dtype="fp32", max_num_patches=max_patches)
    return dataclasses.replace(model, model=quantize_int8(model.model, kernels=kernels), quantization=INT8)


def build_comparison(args, arch: str) -> None:
    from engine import load_model

    source = args.model or str(checkpoint(arch, args.size))
    paths = photos(args.images)
    print(f"\n{args.size if not args.model else source} {arch}, {len(paths)} JPEGs, batch {args.batch or 8}:")
    for dtype in ("int8-openvino", "int8", "fp32") if openvino_available() else ("int8", "fp32"):
        model = load_model(source, device="cpu", dtype=dtype, max_num_patches=args.max_patches)
        build_against_model(model, f"engine {dtype}", paths, args.batch or 8)


def build_against_model(model, name: str, paths: list[Path], batch: int) -> None:
    """JPEG files → stored vectors (build_index: read, hash, decode in threads, encode, commit) against the
    model alone on the same images, measured before and after the build to even out the shared machine."""
    import shutil

    from engine.index.build import build_index
    from engine.model.encode import embed_pixel_batch
    from engine.model.images import open_image

    prepared = [model.image_preprocessor(open_image(p)) for p in paths]

    def model_only():
        for start in range(0, len(prepared), batch):
            embed_pixel_batch(model, prepared[start : start + batch])

    model_only()  # warm-up
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch) / "photos"
        folder.mkdir()
        for path in paths:
            shutil.copy(path, folder / path.name)
        before, _ = timed(model_only)
        summary = build_index(model, folder, "bench", Path(scratch) / "indexes", batch_size=batch)
        after, _ = timed(model_only)
    model_rate = 2 * len(paths) / (before + after)
    print(f"  index build, {name}: {summary.encoded} JPEG files → stored {summary.rate:6.2f} img/s, model only "
          f"{model_rate:6.2f} img/s: {summary.rate / model_rate:.0%}")


def device_batch(model, requested: int) -> int:
    """Batch size for a GPU: as asked, or the largest power of two whose activations fit a quarter of the
    free memory (about 6 MB per image for B/16 at 256 tokens in bf16, scaled by width and tokens)."""
    import torch

    if requested or model.device.type != "cuda":
        return requested or 32
    free, _ = torch.cuda.mem_get_info(model.device)
    width = model.model.config.vision_config.hidden_size
    per_image = 6e6 * (width / 768) ** 2 * (model.image_preprocessor.max_num_patches / 256)
    batch = 32
    while batch * 2 * per_image < free / 4 and batch < 4096:
        batch *= 2
    return batch


def prepared_from_file(path: Path, preprocessor, target) -> object:
    """One JPEG file → the model's input, as an index build reads it (module level: runs in processes too)."""
    from engine.model.images import decode_image_bytes, read_file_bytes

    data, _ = read_file_bytes(path)
    return preprocessor(*decode_image_bytes(data, str(path), target))


def decode_rates(model, paths: list[Path], workers: int) -> str:
    """Files → model inputs alone, no model: in `workers` threads (the engine's way) and processes."""
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    from engine.model.encode import decode_target, ordered_parallel_map

    prepare = partial(prepared_from_file, preprocessor=model.image_preprocessor, target=decode_target(model))
    threads, _ = timed(lambda: sum(1 for _ in ordered_parallel_map(prepare, paths, workers)))
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(prepare, paths[: 4 * workers]))  # start the processes
        processes, _ = timed(lambda: sum(1 for _ in pool.map(prepare, paths, chunksize=8)))
    return f"decode only: {workers} threads {len(paths) / threads:,.0f} img/s, {workers} processes " \
           f"{len(paths) / processes:,.0f} img/s"


def gpu_throughput(args, arch: str, size: str) -> None:
    """bf16 (or --dtype), SDPA, device-sized batches, pinned host memory: the model on inputs already on the
    device, the model from prepared inputs (collate, host→device, vectors back), decoding alone, and JPEG
    files → index."""
    import os

    import torch

    from engine import load_model
    from engine.model.device_decode import device_decoder
    from engine.model.encode import embed_pixel_batch
    from engine.model.images import open_image

    if (size, arch) == ("large", "naflex") and not args.model:
        return  # no L/16 NaFlex checkpoint was released
    source = args.model or str(checkpoint(arch, size))
    model = load_model(source, device=args.device, dtype=args.dtype or ("bf16" if args.device != "cpu" else "fp32"),
                       max_num_patches=args.max_patches)
    if model.arch != arch:
        return
    on_gpu = model.device.type == "cuda"
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    batch = device_batch(model, args.batch)
    paths = photos(args.images)
    distinct = [model.image_preprocessor(open_image(p)) for p in paths[:64]]
    prepared = [distinct[i % len(distinct)] for i in range(batch)]
    label = f"{size if not args.model else source} {arch} {model.image_setting} {model.precision}, batch {batch}"

    def rate(run, count: int, warm_up_s: float = 1.0, measure_s: float = 3.0) -> float:
        """Images/s over at least `measure_s` of repeats, after `warm_up_s` (compilation, the GPU's clocks)."""
        for seconds in (warm_up_s, measure_s):
            repeats, start = 0, time.perf_counter()
            while repeats == 0 or time.perf_counter() - start < seconds:
                run()
                sync()
                repeats += 1
        return repeats * count / (time.perf_counter() - start)

    inputs = model.image_preprocessor.collate(prepared).model_inputs(model.device, model.dtype)
    variants = {"": model}
    if args.compile:
        variants[" compiled"] = dataclasses.replace(model, compiled=True)  # the same weights, compiled
    with torch.inference_mode():
        for suffix, variant in variants.items():
            on_device = rate(lambda variant=variant: variant.image_features(**inputs), batch)
            print(f"{label}{suffix}: model on device {on_device:,.0f} img/s", flush=True)
    model_only = rate(lambda: embed_pixel_batch(model, prepared), batch)
    print(f"{label}: model from prepared inputs (collate, to device, vectors back) {model_only:,.0f} img/s", flush=True)
    print(f"{label}: {decode_rates(model, paths, os.cpu_count() or 2)}", flush=True)
    build_batch = min(batch, 512)  # smaller batches keep the device fed sooner; 512 still fills it
    decoder = device_decoder(model.device, model.image_preprocessor)
    if decoder:
        print(f"{label}: {device_decode_rate(model, paths, decoder, build_batch, sync)}", flush=True)
    builds = [("", False)] + [(suffix, True) for suffix in variants if decoder]
    for suffix, device_decode in builds:
        embed_pixel_batch(variants[suffix], prepared[:build_batch])  # a compiled model compiles for this size now
        line = build_line(variants[suffix], paths[0].parent, build_batch, args.workers or None, device_decode)
        print(f"{label}{suffix}: {line}", flush=True)
    if not decoder and on_gpu:
        print(f"{label}: no device JPEG decoding (torchvision not installed)", flush=True)


def device_decode_rate(model, paths: list[Path], decoder, batch: int, sync) -> str:
    """JPEG bytes already in memory → model inputs on the device (decode, orient, resize), no model."""
    from engine.model.device_decode import device_jpeg, prepare_on_device

    jpegs = [device_jpeg(path.read_bytes()) for path in paths]
    taken = [j for j in jpegs if j is not None]

    def run():
        for start in range(0, len(taken), batch):
            prepare_on_device(taken[start:start + batch], model.image_preprocessor, model.device, decoder)
        sync()

    run()  # warm up: the decoder's buffers, the resize kernels
    seconds, _ = timed(run)
    return f"decode only: nvJPEG on the device (bytes in memory → resized inputs), batch {batch}: " \
           f"{len(taken) / seconds:,.0f} img/s ({len(taken)} of {len(jpegs)} files taken)"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=0, help="0: 8 on the CPU, sized to the memory on a GPU")
    parser.add_argument("--size", default="base", help="generated checkpoint size(s): tiny, small, base, large, "
                        "so400m (comma-separated on the GPU)")
    parser.add_argument("--model", default=None, help="a real checkpoint (Hub id or folder) instead")
    parser.add_argument("--arch", default="fixed,naflex")
    parser.add_argument("--max-patches", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="GPU only: bf16 (default) or fp16")
    parser.add_argument("--compile", action="store_true", help="also try torch.compile on the vision tower")
    parser.add_argument("--int8-kernels", action="store_true", help="also int8 on fbgemm's kernels (torch's default)")
    parser.add_argument("--build-only", action="store_true", help="CPU: only JPEG files → index against model only")
    parser.add_argument("--throughput", action="store_true", help="the GPU mode's measurement on any device")
    parser.add_argument("--workers", type=int, default=0, help="GPU mode: decode threads of the build (0: the engine's 8)")
    args = parser.parse_args()

    print(f"machine: {machine()}")
    for arch in args.arch.split(","):
        if args.device == "cpu" and args.build_only:
            build_comparison(args, arch)
        elif args.device == "cpu" and not args.throughput:
            cpu_comparison(args, arch)
        else:
            for size in args.size.split(","):
                gpu_throughput(args, arch, size)


if __name__ == "__main__":
    main()
