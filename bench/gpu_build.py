"""JPEG files → index on a GPU, JPEGs decoded by nvJPEG on the device against PIL in threads, in one run;
and the reading stage alone (read, hash, header) for 2, 4 and 8 threads. B/16 generated checkpoints, bf16.
Needs a CUDA device and torchvision (bench/gpu.sh installs wheels carried in .whl/ first).
    python bench/gpu_build.py [IMAGES=8192]
"""
import sys
import time

sys.path.insert(0, ".")
from bench.common import build_line, checkpoint, machine, photos
from engine import load_model
from engine.model.device_decode import device_decoder, device_jpeg, prepare_on_device
from engine.model.encode import embed_pixel_batch, ordered_parallel_map
from engine.model.images import read_file_bytes

print("machine:", machine(), flush=True)
paths = photos(int(sys.argv[1]) if len(sys.argv) > 1 else 8192)


def reading(path):
    data, sha = read_file_bytes(path)
    return device_jpeg(data)


for workers in (2, 4, 8):
    start = time.perf_counter()
    count = sum(1 for _ in ordered_parallel_map(reading, paths, workers, 1024))
    print(f"read+hash+header alone, {workers} threads: {count / (time.perf_counter() - start):,.0f} files/s", flush=True)
for arch in ("fixed", "naflex"):
    model = load_model(str(checkpoint(arch, "base")), device="cuda", dtype="bf16")
    decoder = device_decoder(model.device, model.image_preprocessor)
    if decoder is None:
        sys.exit("no JPEG decoding on this device (a CUDA device and torchvision are needed)")
    warm = [device_jpeg(p.read_bytes()) for p in paths[:512]]
    embed_pixel_batch(model, prepare_on_device(warm, model.image_preprocessor, model.device, decoder))
    runs = [(False, 8), (True, 2), (True, 4), (True, 8)] if arch == "fixed" else [(False, 8), (True, 4)]
    for device_decode, workers in runs:
        line = build_line(model, paths[0].parent, 512, workers, device_decode)
        print(f"B/16 {arch} {model.image_setting} bf16: {line}", flush=True)
