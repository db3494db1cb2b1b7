"""How soon the first embedding map of 300 images is drawn after the app is ready (target: 10 s).

    python bench/explore.py [--images 300]

Runs as the app does: UMAP's compilation starts in a background thread at start-up; a map asked for before it
is done is drawn with PCA at once (and says so); after it, maps are UMAP. Uses the generated tiny model.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import machine, timed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=300)
    args = parser.parse_args()

    from engine import load_model
    from engine.explore.map import explore_index, umap_is_warm, warm_up_umap
    from engine.index.build import build_index
    from engine.index.store import ImageIndex
    from engine.model.testmodel import make_test_model
    from tests.conftest import random_image

    work = Path(tempfile.mkdtemp(prefix="bench-explore-"))
    model = load_model(str(make_test_model(work / "model", arch="naflex", size="tiny", seed=0)))
    folder = work / "photos"
    folder.mkdir()
    for i in range(args.images):
        random_image(96, 128, seed=i).save(folder / f"{i}.jpg")
    build_index(model, folder, "bench", work / "indexes")
    print(f"machine: {machine()}; {args.images} images indexed with the generated tiny model")

    ready = time.perf_counter()  # the app is ready: model loaded, warm-up started beside it
    warm = threading.Thread(target=warm_up_umap, daemon=True)
    warm.start()
    with ImageIndex.open("bench", work / "indexes") as index:
        seconds, first = timed(explore_index, index, model, quick=True)
        print(f"first map, asked for at once: {seconds:6.2f} s ({first.projection.method.upper()}, "
              f"UMAP warm: {umap_is_warm()})")
        warm.join()
        print(f"UMAP compiled in the background: {time.perf_counter() - ready:6.2f} s after the app was ready")
        seconds, umap_map = timed(explore_index, index, model, quick=True)
        print(f"first UMAP map after that:     {seconds:6.2f} s ({umap_map.projection.method.upper()}); "
              f"ready → UMAP map drawn: {time.perf_counter() - ready:6.2f} s (target ≤ 10 s)")


if __name__ == "__main__":
    main()
