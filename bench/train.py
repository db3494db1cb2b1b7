"""Fine-tuning cost: training steps/s, images/s and peak memory at the B/16 configuration (generated
weights, same shapes as google/siglip2-base-patch16-*), and the sigmoid loss's memory against batch size,
plain n×n against chunked.

    python bench/train.py [--device cuda] [--arch naflex] [--modes lora full] [--batch 8] [--steps 3]
                          [--loss-batches 1024 4096 16384] [--size base]

Peak memory: CUDA's max_memory_allocated on a GPU; on a CPU the process's peak RSS for the step benchmark
and, for the loss, the bytes autograd keeps for backward (counted through saved-tensor hooks) plus the
largest temporary (the logits block).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import checkpoint, machine, photos  # noqa: E402


def step_benchmark(arch: str, size: str, mode: str, batch: int, steps: int, device: str | None) -> dict:
    import torch

    from engine.train.data import TrainData, Example
    from engine.train.devices import peak_memory_bytes, resolve_device
    from engine.train.trainer import TrainConfig, train

    images = photos(batch * (steps + 1))
    data = TrainData([Example(str(p), [f"photo number {i}"]) for i, p in enumerate(images)], "bench photos")
    config = TrainConfig(mode=mode, epochs=1, batch_size=batch, held_out=0.0, device=device, max_steps=steps + 1,
                         checkpoint_every=10**9)
    times = []

    def on_event(event):
        times.append(time.perf_counter())

    target = resolve_device(device)
    if target.kind == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        result = train(str(checkpoint(arch, size)), data, Path(out) / "run", config, on_event=on_event)
    measured = [b - a for a, b in zip(times, times[1:])]  # the first step (warm-up) is left out
    seconds = sum(measured) / max(1, len(measured))
    peak = peak_memory_bytes(target) or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"arch": arch, "size": size, "mode": mode, "batch": batch, "steps_timed": len(measured),
            "seconds_per_step": round(seconds, 3), "steps_per_s": round(1 / seconds, 3) if seconds else None,
            "images_per_s": round(batch / seconds, 2) if seconds else None,
            "peak_memory_gib": round(peak / 2**30, 2), "peak_kind": "cuda allocated" if target.kind == "cuda" else "process RSS",
            "final_loss": result.history[-1]["loss"] if result.history else None}


def loss_memory(batch: int, dim: int, chunk: int, kind: str, device: str) -> dict:
    import torch

    from engine.train.losses import chunked_sigmoid_loss, sigmoid_loss

    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(batch, dim, device=device), dim=-1).requires_grad_(True)
    texts = torch.nn.functional.normalize(torch.randn(batch, dim, device=device), dim=-1).requires_grad_(True)
    t = torch.tensor(2.3, device=device, requires_grad=True)
    b = torch.tensor(-10.0, device=device, requires_grad=True)
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        if kind == "plain":
            loss = sigmoid_loss(images, texts, t, b)
        else:
            loss = chunked_sigmoid_loss(images, texts, t, b, chunk=chunk)
    loss.backward()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    row = {"loss": kind, "batch": batch, "chunk": chunk if kind == "chunked" else None,
           "seconds": round(seconds, 4), "saved_for_backward_mib": round(sum(saved) / 2**20, 2),
           "largest_block_mib": round(batch * (batch if kind == "plain" else min(chunk, batch)) * 4 / 2**20, 2)}
    if device.startswith("cuda"):
        row["cuda_peak_mib"] = round((torch.cuda.max_memory_allocated() - base) / 2**20, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="base")
    parser.add_argument("--arch", default="fixed", choices=["fixed", "naflex"])
    parser.add_argument("--modes", nargs="+", default=["lora", "full"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--loss-batches", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--skip-steps", action="store_true", help="only the loss memory table")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"machine: {machine()}; device {device}")
    results = {"machine": machine(), "device": device, "steps": [], "loss": []}
    if not args.skip_steps:
        for mode in args.modes:
            row = step_benchmark(args.arch, args.size, mode, args.batch, args.steps, device)
            results["steps"].append(row)
            print(f"{args.size}-{args.arch} {mode:<5} batch {row['batch']}: {row['steps_per_s']} steps/s, "
                  f"{row['images_per_s']} images/s, peak {row['peak_memory_gib']} GiB ({row['peak_kind']})", flush=True)
    for batch in args.loss_batches:
        for kind in ("plain", "chunked"):
            row = loss_memory(batch, 768, args.chunk, kind, device)
            results["loss"].append(row)
            print(f"loss {kind:<8} batch {batch:>6}: saved for backward {row['saved_for_backward_mib']:>9} MiB, "
                  f"largest block {row['largest_block_mib']:>9} MiB, {row['seconds']} s"
                  + (f", CUDA peak {row['cuda_peak_mib']} MiB" if "cuda_peak_mib" in row else ""), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
