"""Index build throughput: the local build against the Ray Data build (local Ray on this machine's cores), on
the same JPEG files and model. Both figures include everything from files to stored vectors; the Ray one also
Ray's start-up and the model loading in its actor, printed apart.

    python bench/distributed.py [--files 64] [--size base] [--encoders 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import checkpoint, machine, photos  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--size", default="base")
    parser.add_argument("--encoders", type=int, default=1)
    args = parser.parse_args()

    import ray

    from engine import load_model
    from engine.index.build import build_index
    from engine.index.distributed import build_index_on_ray

    print(f"machine: {machine()}, ray {ray.__version__}")
    model = load_model(str(checkpoint("naflex", args.size)))
    paths = photos(args.files)
    with tempfile.TemporaryDirectory() as index_dir:
        local = build_index(model, paths[0].parent, "local", index_dir, batch_size=32)
        start = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}})
        startup = time.perf_counter() - start
        try:
            rayed = build_index_on_ray(model, paths[0].parent, "rayed", index_dir, encoders=args.encoders,
                                       batch_size=32, shard_size=16)
        finally:
            ray.shutdown()
    print(f"{args.files} JPEGs, {args.size} NaFlex at 256 patches:")
    print(f"  local build: {local.rate:.2f} img/s ({local.seconds:.1f} s)")
    print(f"  Ray build ({args.encoders} encoder actor(s), {os.cpu_count()} CPUs): {rayed.encoded / rayed.seconds:.2f} "
          f"img/s ({rayed.seconds:.1f} s, plus {startup:.1f} s to start Ray), {rayed.shards_written} shards")
    print(f"  ratio Ray / local: {local.seconds / rayed.seconds:.2f}")


if __name__ == "__main__":
    main()
