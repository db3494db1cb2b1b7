"""What every command shares: the model options, loading the model they name, a progress bar, wording."""

from __future__ import annotations

import argparse
import sys

from ..model.loading import LoadedModel, load_model
from ..model.registry import DEFAULT_MODEL

UNTRAINED_NOTE = "is an untrained test model (random weights): its outputs are meaningless"


def progress_bar(description: str):
    """A tqdm-backed (done, total) callback on stderr."""
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=description, unit="img", file=sys.stderr, disable=None)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    return update


def add_model_options(parser: argparse.ArgumentParser, default_model: str | None = DEFAULT_MODEL) -> None:
    parser.add_argument("--model", default=default_model, help="Hub id or local checkpoint folder")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    parser.add_argument("--dtype", default=None,
                        help="fp32, bf16, fp16, int8 (the CPU fast path) or int8-openvino (faster on CPUs with VNNI "
                             "or AMX; needs openvino and nncf) (default: bf16 on cuda, else fp32)")
    parser.add_argument("--max-patches", type=int, default=None, help="NaFlex sequence length (default 256)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the image encoder: a minute or more of compiling first; for bulk "
                             "encoding with fixed-resolution models on a GPU (no reliable gain on CPUs or NaFlex)")


def load_from_args(args: argparse.Namespace) -> LoadedModel:
    model = load_model(args.model, device=args.device, dtype=args.dtype, max_num_patches=args.max_patches,
                       compile=args.compile)
    if model.untrained:
        warn(f"{args.model} {UNTRAINED_NOTE}")
    return model


def warn(message: object) -> None:
    print(f"warning: {message}", file=sys.stderr)


def warn_all(messages) -> None:
    for message in messages:
        warn(message)
