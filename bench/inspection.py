"""What the inspection views cost against one image encode, on the same images (B/16 NaFlex, 256 patches).

    python bench/inspection.py [--images 6] [--size base] [--arch naflex] [--max-patches 256]

Targets (issue 9): value map + MAP attention + PCA together ≤ 1.3× one encode (one forward pass serves all
three); the gradient map ≤ 4×. The checkpoint is generated (random weights, the real B/16 configuration): speed only.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import checkpoint, machine, photos, timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--size", default="base")
    parser.add_argument("--arch", default="naflex", choices=["naflex", "fixed"])
    parser.add_argument("--max-patches", type=int, default=256)
    args = parser.parse_args()

    from PIL import Image

    from engine import load_model
    from engine.inspect import maps, trace
    from engine.inspect.attention import attention_map
    from engine.inspect.dense import dense_pca
    from engine.inspect.maps import similarity_maps
    from engine.model.encode import encode_images

    model = load_model(str(checkpoint(args.arch, args.size)), max_num_patches=args.max_patches)
    images = [Image.open(p).convert("RGB") for p in photos(args.images)]
    query = "a photo of a dog on the beach"
    print(f"machine: {machine()}")
    print(f"checkpoint: generated {args.size} {args.arch} (random weights), {args.max_patches} patches, "
          f"{len(images)} images, one at a time")
    encode_images(model, images[:1], batch_size=1)  # warm-up
    similarity_maps(model, images[0], query, args.max_patches)

    def views(image, fresh_query: bool) -> float:
        trace._traces.pop(model, None)  # a cold image cache: the views pay their own forward pass
        if fresh_query:
            maps._query_vectors.pop(model, None)
        return sum(timed(fn)[0] for fn in (
            lambda: similarity_maps(model, image, query, args.max_patches, "value"),
            lambda: attention_map(model, image, args.max_patches),
            lambda: dense_pca(model, image, args.max_patches, joint=False)))

    encode, cached_query, new_query, gradient = [], [], [], []
    for image in images:
        encode.append(timed(encode_images, model, [image], batch_size=1)[0])
        new_query.append(views(image, fresh_query=True))
        cached_query.append(views(image, fresh_query=False))
        trace._traces.pop(model, None)
        gradient.append(timed(similarity_maps, model, image, query, args.max_patches, "gradient")[0])
    one = statistics.median(encode)
    rows = [("value map + MAP attention + PCA, query seen before", statistics.median(cached_query), "≤ 1.3x"),
            ("the same with a new query (its text encode included)", statistics.median(new_query), ""),
            ("gradient map, query seen before", statistics.median(gradient), "≤ 4x")]
    print(f"{'one image encode (decoded image → embedding)':55} {one * 1000:8.1f} ms")
    for label, seconds, target in rows:
        print(f"{label:55} {seconds * 1000:8.1f} ms = {seconds / one:.2f}x" + (f"  (target {target})" if target else ""))


if __name__ == "__main__":
    main()
