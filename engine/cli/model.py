"""`python -m engine make-test-model` and `python -m engine embed`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..errors import StudioError
from ..model.encode import encode_images, encode_texts
from ..model.testmodel import make_test_model
from .common import add_model_options, load_from_args, progress_bar, warn_all


def cmd_make_test_model(args) -> int:
    out = make_test_model(args.dir, arch=args.arch, size=args.size, seed=args.seed,
                          image_size=args.image_size, max_patches=args.max_patches, recipe=args.recipe)
    print(f"wrote an untrained {args.size} {args.arch} checkpoint to {out}")
    return 0


def cmd_embed(args) -> int:
    if not args.images and not args.texts:
        raise StudioError("Nothing to embed: give --images FILE... and/or --texts TEXT...")
    model = load_from_args(args)
    rows, inputs, failed = [], [], []
    if args.images:
        embedded = encode_images(model, args.images, progress=progress_bar("images"))
        rows.append(embedded.vectors)
        inputs += [{"kind": "image", "input": source} for source in embedded.sources]
        failed += [{"kind": "image", "input": f.source, "reason": f.reason} for f in embedded.failures]
        warn_all(embedded.failures)
    if args.texts:
        embedded_texts = encode_texts(model, args.texts)
        rows.append(embedded_texts.vectors)
        inputs += [{"kind": "text", "input": t, "truncated": tr}
                   for t, tr in zip(embedded_texts.texts, embedded_texts.truncated)]
        warn_all(embedded_texts.warnings)
    vectors = np.concatenate(rows) if rows else np.zeros((0, model.embed_dim), np.float32)
    out = Path(args.out)
    np.save(out, vectors)
    companion = out.with_suffix(".json")
    companion.write_text(json.dumps({"model": args.model, "untrained": model.untrained,
                                     "dim": model.embed_dim, "rows": inputs, "failed": failed},
                                    indent=2, ensure_ascii=False))
    print(f"wrote {len(vectors)} embeddings to {out} and the list of inputs to {companion}", file=sys.stderr)
    return 0 if vectors.shape[0] else 1


def add_commands(commands) -> None:
    make = commands.add_parser("make-test-model", help="write an untrained checkpoint in the Hugging Face layout")
    make.add_argument("dir")
    make.add_argument("--arch", choices=["naflex", "fixed"], default="naflex")
    make.add_argument("--size", choices=["tiny", "small", "base"], default="tiny",
                      help="base = the real B/16 configuration (about 375M parameters)")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--recipe", choices=["reference", "odd"], default="reference",
                      help="odd: non-reference preprocessing and learned t, b everywhere (for tests)")
    make.add_argument("--image-size", type=int, default=None, help="fixed-resolution models (default 224)")
    make.add_argument("--max-patches", type=int, default=None, help="NaFlex models (default 256)")
    make.set_defaults(func=cmd_make_test_model)

    embed = commands.add_parser("embed", help="L2-normalised embeddings of images and/or texts to .npy")
    add_model_options(embed)
    embed.add_argument("--images", nargs="*", default=[])
    embed.add_argument("--texts", nargs="*", default=[])
    embed.add_argument("--out", required=True, help="FILE.npy; FILE.json lists the inputs")
    embed.set_defaults(func=cmd_embed)
