"""`python -m engine ...`: the engine from the command line, for scripts and for checking it from outside."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from .errors import StudioError
from .registry import DEFAULT_MODEL

log = logging.getLogger("engine")


def _progress_bar(description: str):
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


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Hub id or local checkpoint folder")
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: best available)")
    parser.add_argument("--dtype", default=None, help="fp32, bf16 or fp16 (default: bf16 on cuda, else fp32)")
    parser.add_argument("--max-patches", type=int, default=None, help="NaFlex sequence length (default 256)")


def load_from_args(args):
    from .models import load_model

    model = load_model(args.model, device=args.device, dtype=args.dtype, max_num_patches=args.max_patches)
    if model.is_test_model:
        print(f"note: {args.model} is an untrained test model; its outputs are meaningless", file=sys.stderr)
    return model


def cmd_make_test_model(args) -> int:
    from .testmodel import make_test_model

    out = make_test_model(args.dir, arch=args.arch, size=args.size, seed=args.seed,
                          image_size=args.image_size, max_patches=args.max_patches)
    print(f"wrote an untrained {args.size} {args.arch} checkpoint to {out}")
    return 0


def cmd_embed(args) -> int:
    from .encode import encode_images, encode_texts

    if not args.images and not args.texts:
        raise StudioError("Nothing to embed: give --images FILE... and/or --texts TEXT...")
    model = load_from_args(args)
    rows, inputs, failed = [], [], []
    if args.images:
        embedded = encode_images(model, args.images, progress=_progress_bar("images"))
        rows.append(embedded.vectors)
        inputs += [{"kind": "image", "input": source} for source in embedded.sources]
        failed += [{"kind": "image", "input": f.source, "reason": f.reason} for f in embedded.failures]
        for failure in embedded.failures:
            print(f"warning: {failure}", file=sys.stderr)
    if args.texts:
        embedded_texts = encode_texts(model, args.texts)
        rows.append(embedded_texts.vectors)
        inputs += [{"kind": "text", "input": t, "truncated": tr}
                   for t, tr in zip(embedded_texts.texts, embedded_texts.truncated)]
        for warning in embedded_texts.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    vectors = np.concatenate(rows) if rows else np.zeros((0, model.embed_dim), np.float32)
    out = Path(args.out)
    np.save(out, vectors)
    companion = out.with_suffix(".json")
    companion.write_text(json.dumps({"model": args.model, "untrained_model": model.is_test_model,
                                     "dim": model.embed_dim, "rows": inputs, "failed": failed},
                                    indent=2, ensure_ascii=False))
    print(f"wrote {len(vectors)} embeddings to {out} and the list of inputs to {companion}", file=sys.stderr)
    return 0 if vectors.shape[0] else 1


def cmd_classify(args) -> int:
    from .zeroshot import classify

    model = load_from_args(args)
    result = classify(model, args.images, args.labels, templates=args.template,
                      progress=_progress_bar("images"))
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for failure in result.failures:
        print(f"warning: {failure}", file=sys.stderr)
    if args.json:
        print(json.dumps({"model": args.model, "untrained_model": result.untrained, "labels": result.labels,
                          "results": result.records(),
                          "failed": [{"image": f.source, "reason": f.reason} for f in result.failures]},
                         indent=2, ensure_ascii=False))
    else:
        for row, source in enumerate(result.sources):
            tops = ", ".join(f"{label} {p:.3f}" for label, p in result.top(row, 5))
            print(f"{source}\t{tops}")
    return 0 if result.sources else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="SigLIP 2 Studio engine")
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    make = commands.add_parser("make-test-model", help="write an untrained checkpoint in the Hugging Face layout")
    make.add_argument("dir")
    make.add_argument("--arch", choices=["naflex", "fixed"], default="naflex")
    make.add_argument("--size", choices=["tiny", "small", "base"], default="tiny",
                      help="base = the real B/16 configuration (about 375M parameters)")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--image-size", type=int, default=224, help="fixed-resolution models")
    make.add_argument("--max-patches", type=int, default=256, help="NaFlex models")
    make.set_defaults(func=cmd_make_test_model)

    embed = commands.add_parser("embed", help="L2-normalised embeddings of images and/or texts to .npy")
    add_model_options(embed)
    embed.add_argument("--images", nargs="*", default=[])
    embed.add_argument("--texts", nargs="*", default=[])
    embed.add_argument("--out", required=True, help="FILE.npy; FILE.json lists the inputs")
    embed.set_defaults(func=cmd_embed)

    classify = commands.add_parser("classify", help="zero-shot labels: logit and probability per label")
    add_model_options(classify)
    classify.add_argument("images", nargs="+")
    classify.add_argument("--labels", required=True, help='comma-separated, e.g. "cat,dog,car"')
    classify.add_argument("--template", action="append", default=None,
                          help="prompt template with {} for the label (repeat to ensemble)")
    classify.add_argument("--json", action="store_true")
    classify.set_defaults(func=cmd_classify)

    from .index_cli import add_index_commands  # noqa: E402  (kept in its own module)

    add_index_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return args.func(args)
    except StudioError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
