"""Index builds with this tree's engine against another tree's (the commit before a change), alternating in
one lease on the same files and checkpoints: a GPU machine's speed drifts from lease to lease (H200 fixed-size
builds of one commit: 2,178–2,664 img/s), so a change is judged only against a baseline measured beside it.
Each side runs in a fresh interpreter with its own `engine` package first on the path, builds once unprinted
(the first build after loading ran slower), then `--builds` times for each architecture.
    mkdir -p .ab/before && git archive REF engine | tar -x -C .ab/before    (.ab/ is ignored: carry it)
    python bench/gpu_ab.py .ab/before [--rounds 2] [--builds 2] [--images 8192] [--arch fixed,naflex]
Without a GPU, a dry run of the script itself: --device cpu --size tiny --images 128 (its figures mean nothing).
"""
import argparse
import re
import statistics
import subprocess
import sys
import threading
from pathlib import Path

sys.path.insert(0, ".")
import bench.common as common  # this tree's: the same photos and checkpoints for both sides

parser = argparse.ArgumentParser()
parser.add_argument("before", help="a folder holding the other engine/ package")
parser.add_argument("--rounds", type=int, default=2, help="each side's interpreter started this many times")
parser.add_argument("--builds", type=int, default=2, help="timed builds per architecture and interpreter")
parser.add_argument("--images", type=int, default=8192)
parser.add_argument("--arch", default="fixed,naflex")
parser.add_argument("--device", default="cuda")
parser.add_argument("--size", default="base")
parser.add_argument("--batch", type=int, default=512)
parser.add_argument("--timeout", type=float, default=300, help="seconds per interpreter")
parser.add_argument("--side", help=argparse.SUPPRESS)  # set for the interpreter that builds
args = parser.parse_args()
RATE = re.compile(r"^(AFTER|BEFORE) (\w+): .*?: ([\d,]+) img/s")


def build_side(label: str, engine_root: str) -> None:
    """In the child interpreter: builds with the engine under `engine_root`, one line each (PREPARE: the photos
    and checkpoints, made by this tree's code before either side reads them; CUDA stays out of the parent)."""
    sys.path.insert(0, engine_root)
    import engine
    from engine import load_model

    if label == "PREPARE":
        print("machine:", common.machine(), flush=True)
        common.photos(args.images)
        for arch in args.arch.split(","):
            common.checkpoint(arch, args.size)
        return
    print(f"{label}: engine from {Path(engine.__file__).parent}", flush=True)
    folder = common.photos(args.images)[0].parent
    for arch in args.arch.split(","):
        model = load_model(str(common.checkpoint(arch, args.size)), device=args.device,
                           dtype="bf16" if args.device == "cuda" else "fp32")
        device_decode = args.device == "cuda"
        common.build_line(model, folder, args.batch, None, device_decode)  # warm-up, unprinted
        for _ in range(args.builds):
            print(f"{label} {arch}: {common.build_line(model, folder, args.batch, None, device_decode)}", flush=True)


def run_side(label: str, engine_root: str, rates: dict) -> None:
    command = [sys.executable, __file__, args.before, "--side", f"{label}={engine_root}"]
    command += [f"--{name}={getattr(args, name)}" for name in ("builds", "images", "arch", "device", "size", "batch")]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as child:
        limit = args.timeout * (3 if label == "PREPARE" else 1)  # (8,192 photos are written once, the first time)
        watchdog = threading.Timer(limit, child.kill)  # also a child that hangs without a word
        watchdog.start()
        for line in child.stdout:
            if "Loading weights" in line or "Writing model" in line or not line.strip():
                continue
            print(line, end="", flush=True)  # as it comes: a run cut short keeps what it measured
            match = RATE.match(line)
            if match:
                rates.setdefault((match[2], match[1]), []).append(float(match[3].replace(",", "")))
        if not watchdog.is_alive():
            print(f"{label}: stopped after {limit:.0f} s", flush=True)
        watchdog.cancel()


if args.side:
    build_side(*args.side.split("=", 1))
    sys.exit()

rates: dict[tuple[str, str], list[float]] = {}
run_side("PREPARE", str(Path(".").resolve()), rates)
sides = [("AFTER", str(Path(".").resolve())), ("BEFORE", str(Path(args.before).resolve()))]
for round_number in range(args.rounds):
    for label, root in sides if round_number % 2 == 0 else sides[::-1]:  # neither side always goes first
        run_side(label, root, rates)
for arch in args.arch.split(","):
    after, before = rates.get((arch, "AFTER"), []), rates.get((arch, "BEFORE"), [])
    if after and before:
        print(f"{arch}: after {min(after):,.0f}–{max(after):,.0f} img/s (median {statistics.median(after):,.0f}), "
              f"before {min(before):,.0f}–{max(before):,.0f} (median {statistics.median(before):,.0f}): "
              f"{statistics.median(after) / statistics.median(before):.2f}×", flush=True)
