"""Zero-shot labelling throughput: transformers' pipeline against the engine, same images and 20 labels.

    python bench/labelling.py [--images 32] [--size base] [--arch naflex]

The checkpoint is generated (random weights, the real B/16 configuration by default): speed only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import checkpoint, machine, photos, timed  # noqa: E402

LABELS = ["cat", "dog", "car", "bicycle", "tree", "house", "beach", "mountain", "city street", "food",
          "person", "bird", "boat", "airplane", "flower", "computer", "book", "horse", "train", "snow"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", default="base")
    parser.add_argument("--arch", default="naflex", choices=["naflex", "fixed"])
    parser.add_argument("--device", default=None)
    args = parser.parse_args()

    import torch
    from transformers import pipeline

    from engine import load_model
    from engine.label.zeroshot import classify

    directory = checkpoint(args.arch, args.size)
    paths = photos(args.images)
    print(f"machine: {machine()}")
    print(f"checkpoint: generated {args.size} {args.arch} (random weights), {args.images} JPEGs, {len(LABELS)} labels")

    model = load_model(str(directory), device=args.device)
    classify(model, paths[:2], ["warm", "up"])  # warm-up, different labels: the timed run embeds its own
    engine_s, result = timed(classify, model, paths, LABELS)
    assert result.probabilities.shape == (args.images, len(LABELS))
    del model

    device = 0 if (args.device or "").startswith("cuda") else -1
    classifier = pipeline("zero-shot-image-classification", model=str(directory), device=device,
                          dtype=torch.bfloat16 if device == 0 else torch.float32)
    classifier(str(paths[0]), candidate_labels=["warm", "up"])
    pipe_s, outputs = timed(classifier, [str(p) for p in paths], candidate_labels=LABELS)
    assert len(outputs) == args.images

    pipe_rate, engine_rate = args.images / pipe_s, args.images / engine_s
    print(f"pipeline: {pipe_rate:8.2f} images/s  ({pipe_s:.1f} s)")
    print(f"engine:   {engine_rate:8.2f} images/s  ({engine_s:.1f} s, label embeddings included)")
    print(f"ratio engine/pipeline: {engine_rate / pipe_rate:.1f}x")


if __name__ == "__main__":
    main()
