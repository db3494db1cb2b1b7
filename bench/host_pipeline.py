"""The host's share of an index build on a GPU, measured on any machine: the reading threads (read, SHA-256,
JPEG header walk), the decoding thread's bookkeeping and the main thread's collating and storing, with nvJPEG
and the encoder replaced by stand-ins that cost next to nothing, on a generated model of 32-pixel images.
On an H200 a build with the real nvJPEG and no encoder ran at 2,455–2,660 img/s (2026-11-28,
bench/results/h200-2026-11-28-diagnosis.log): this is the part of such a build that runs in the interpreter
(one GIL for every thread), the ceiling the GPU's work adds to.
    python bench/host_pipeline.py [--images 4096] [--repeats 3] [--workers 2]
"""
import argparse
import sys
import tempfile

sys.path.insert(0, ".")
import torch

from bench.common import OUT, machine, photos, timed_build_stages
from engine import load_model
from engine.index import build as build_module
from engine.model.testmodel import make_test_model

parser = argparse.ArgumentParser()
parser.add_argument("--images", type=int, default=4096)
parser.add_argument("--repeats", type=int, default=3)
parser.add_argument("--workers", type=int, default=2, help="reading threads (the GPU default)")
parser.add_argument("--batch", type=int, default=512)
args = parser.parse_args()
print("machine:", machine(), flush=True)
paths = photos(args.images)
checkpoint = OUT / "tiny-fixed-32"
if not (checkpoint / "model.safetensors").exists():
    make_test_model(checkpoint, arch="fixed", size="tiny", image_size=32, patch_size=16)
model = load_model(str(checkpoint), device="cpu")


BLANK = torch.zeros((3, 4, 4), dtype=torch.uint8)


def stand_in_decoder(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """The same 4×4 image for every file: nvJPEG's decoding (its output tensors made in C++) and the device's
    resizing cost the host next to nothing here."""
    return [BLANK] * len(encoded)


def stand_in_features(**inputs: torch.Tensor) -> torch.Tensor:
    return torch.ones((next(iter(inputs.values())).shape[0], model.embed_dim))


build_module.device_decoder = lambda device, preprocessor: stand_in_decoder
model.image_features = stand_in_features
stage_seconds = timed_build_stages()
for repeat in range(args.repeats + 1):  # the first is a warm-up
    stage_seconds.clear()
    with tempfile.TemporaryDirectory() as index_dir:
        summary = build_module.build_index(model, paths[0].parent, "bench", index_dir, batch_size=args.batch,
                                           workers=args.workers)
    if repeat:
        stages = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in stage_seconds.items())
        print(f"host pipeline, {args.workers} reading threads, batch {args.batch}: {summary.rate:,.0f} img/s "
              f"({summary.encoded} in {summary.seconds:.2f} s); main thread: {stages}", flush=True)
