"""Image-encoding throughput of the B/16 configuration, fixed 224 and NaFlex 256: the engine against
the transformers model called plainly (its image processor + get_image_features), in one run.

    python bench/encode.py [--images 64] [--batch 32] [--device cuda --dtype bf16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import checkpoint, machine, photos, timed  # noqa: E402


def plain_transformers(model, processor, images, batch: int):
    import torch

    with torch.inference_mode():
        for start in range(0, len(images), batch):
            inputs = processor(images=images[start : start + batch], return_tensors="pt").to(model.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
            model.get_image_features(**inputs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", default="base")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    args = parser.parse_args()

    from PIL import Image
    from transformers import AutoImageProcessor

    from engine import load_model
    from engine.model.encode import encode_images

    print(f"machine: {machine()}")
    paths = photos(args.images)
    decoded = [Image.open(p).convert("RGB") for p in paths]
    for arch in ("fixed", "naflex"):
        model = load_model(str(checkpoint(arch, args.size)), device=args.device, dtype=args.dtype)
        processor = AutoImageProcessor.from_pretrained(str(model.directory))
        encode_images(model, decoded[:4], batch_size=4)
        plain_transformers(model.model, processor, decoded[:4], 4)
        engine_s, _ = timed(encode_images, model, decoded, batch_size=args.batch)
        plain_s, _ = timed(plain_transformers, model.model, processor, decoded, args.batch)
        files_s, _ = timed(encode_images, model, paths, batch_size=args.batch)
        label = f"{args.size} {arch} ({model.image_setting}), {model.device.type} {str(model.dtype)[6:]}"
        print(f"{label}: engine {len(decoded) / engine_s:7.2f} img/s | transformers plain "
              f"{len(decoded) / plain_s:7.2f} img/s | ratio {plain_s / engine_s:.2f}x | engine from JPEG files "
              f"{len(paths) / files_s:7.2f} img/s")
        del model


if __name__ == "__main__":
    main()
