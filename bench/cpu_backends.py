"""Other CPU back-ends for the B/16 image encoder, measured against torch on the same batch: torch fp32,
torch dynamic int8 (the engine's `dtype="int8"`), OpenVINO fp32 and OpenVINO int8 (NNCF post-training
quantization, calibrated on the batch itself). Only the transformer encoder is swapped: the patch embedding,
the position grid and the pooling head run in torch for every variant, as in the engine's int8 path.

NNCF's defaults here (SmoothQuant on, calibrated on the measured batch itself); the engine's own OpenVINO path,
`dtype="int8-openvino"` (engine/model/openvino_int8.py), turns SmoothQuant off and calibrates on the example
photos, and `bench/encode.py` measures it beside the others.

    python bench/cpu_backends.py [--arch naflex|fixed] [--batch 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.common import checkpoint, machine, photos  # noqa: E402


class Encoder(torch.nn.Module):
    """The vision tower's encoder + final LayerNorm, fed embedded patches (batch, tokens, width) and a
    0/1 padding mask (batch, tokens): the part a back-end can take with dynamic shapes."""

    def __init__(self, vision):
        super().__init__()
        self.vision = vision

    def forward(self, embeds, mask):
        additive = (1.0 - mask)[:, None, None, :] * -1e9
        hidden = self.vision.encoder(inputs_embeds=embeds, attention_mask=additive).last_hidden_state
        return self.vision.post_layernorm(hidden)


def best_of(run, rounds: int) -> tuple[float, torch.Tensor]:
    output = run()  # warm-up
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        output = run()
        times.append(time.perf_counter() - started)
    return min(times), output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="naflex")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import nncf
    import openvino as ov
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    folder = checkpoint(args.arch, "base")
    model = AutoModel.from_pretrained(str(folder)).eval()
    vision = model.vision_model
    inputs = AutoProcessor.from_pretrained(str(folder))(
        images=[Image.open(p).convert("RGB") for p in photos(args.batch)], return_tensors="pt")
    with torch.no_grad():
        if args.arch == "naflex":
            embeds = vision.embeddings(inputs["pixel_values"], inputs["spatial_shapes"])
            mask = inputs["pixel_attention_mask"].float()
        else:
            embeds = vision.embeddings(inputs["pixel_values"])
            mask = torch.ones(embeds.shape[:2])
    head_mask = inputs.get("pixel_attention_mask")

    def pooled(hidden: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = vision.head(hidden, head_mask) if args.arch == "naflex" else vision.head(hidden)
        return torch.nn.functional.normalize(out, dim=-1)

    encoder = Encoder(vision).eval()
    with torch.no_grad():
        fp32_seconds, reference = best_of(lambda: encoder(embeds, mask), args.rounds)
    reference = pooled(reference)
    print(f"{machine()} | B/16 {args.arch}, batch {args.batch} × {embeds.shape[1]} tokens, encoder only")
    print(f"torch fp32: {args.batch / fp32_seconds:.2f} img/s")

    def report(name: str, seconds: float, hidden) -> None:
        cosine = (pooled(torch.as_tensor(hidden)) * reference).sum(-1).min()
        print(f"{name}: {args.batch / seconds:.2f} img/s = {fp32_seconds / seconds:.2f}x torch fp32, "
              f"cos min {cosine:.5f}")

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    int8 = quantize_dynamic(copy.deepcopy(encoder), {torch.nn.Linear: per_channel_dynamic_qconfig},
                            dtype=torch.qint8)
    with torch.no_grad():
        report("torch dynamic int8 (the engine's)", *best_of(lambda: int8(embeds, mask), args.rounds))

    core = ov.Core()
    converted = ov.convert_model(encoder, example_input=(embeds, mask),
                                 input=[ov.PartialShape([-1, -1, embeds.shape[-1]]), ov.PartialShape([-1, -1])])
    feeds = [embeds.numpy(), mask.numpy()]
    quantized = nncf.quantize(converted, nncf.Dataset([feeds]), subset_size=1, model_type=nncf.ModelType.TRANSFORMER)
    for name, graph in (("OpenVINO fp32", converted), ("OpenVINO int8 (NNCF, transformer preset)", quantized)):
        compiled = core.compile_model(graph, "CPU", {"PERFORMANCE_HINT": "LATENCY"})
        report(name, *best_of(lambda: compiled(feeds)[0], args.rounds))


if __name__ == "__main__":
    main()
