"""What gathering concurrent requests into one forward pass can save a server: the cost per item of encoding
one query or image at a time against several at a time, interleaved, median of the rounds.

    python bench/serving.py [--size base] [--arch fixed] [--dtype fp32,int8] [--rounds 3]

Generated checkpoint (random weights, the real B/16 configuration by default): speed only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import checkpoint, machine, photos, timed  # noqa: E402

QUERIES = [f"a photo of thing number {i}" for i in range(16)]


def per_item_ms(encode, model, items: list, at_a_time: int) -> float:
    elapsed, _ = timed(lambda: [encode(model, items[i : i + at_a_time]) for i in range(0, len(items), at_a_time)])
    return elapsed / len(items) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="base")
    parser.add_argument("--arch", default="fixed", choices=["naflex", "fixed"])
    parser.add_argument("--dtype", default="fp32,int8")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from engine import load_model
    from engine.model.encode import encode_images, encode_texts
    from engine.model.images import open_image

    images = [open_image(p) for p in photos(8)]
    print(f"machine: {machine()}")
    print(f"checkpoint: generated {args.size} {args.arch} (random weights); {len(QUERIES)} queries, {len(images)} "
          f"images; ms per item, median of {args.rounds} interleaved rounds")
    for dtype in args.dtype.split(","):
        model = load_model(str(checkpoint(args.arch, args.size)), dtype=dtype)
        cases = {"texts 1 at a time": (encode_texts, QUERIES, 1), "texts 16 at a time": (encode_texts, QUERIES, 16),
                 "images 1 at a time": (encode_images, images, 1), "images 8 at a time": (encode_images, images, 8)}
        for encode, items, _ in cases.values():
            encode(model, items[:2])  # warm-up
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, (encode, items, at_a_time) in cases.items():
                times[name].append(per_item_ms(encode, model, items, at_a_time))
        ms = {name: statistics.median(values) for name, values in times.items()}
        print(f"  {dtype}: " + ", ".join(f"{name} {value:.1f}" for name, value in ms.items()))
        print(f"  {dtype}: gathered saves per item: texts {ms['texts 1 at a time'] / ms['texts 16 at a time']:.2f}×, "
              f"images {ms['images 1 at a time'] / ms['images 8 at a time']:.2f}×")


if __name__ == "__main__":
    main()
