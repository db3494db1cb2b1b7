"""`python -m engine inspect VIEW IMAGE ...`: the inspection views as PNG pictures and .npy arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InspectError
from ..inspect import render
from ..inspect.attention import attention_map, layer_attention
from ..inspect.dense import dense_pca, patch_similarity
from ..inspect.grid import patch_grid
from ..inspect.maps import METHODS, similarity_maps
from .common import add_model_options, load_from_args, warn_all

VIEWS = ("grid", "similarity", "attention", "layer-attention", "pca", "patch-similarity")


def _write(out: Path, stem: str, picture, arrays: dict[str, np.ndarray]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{stem}.png"]
    picture.save(written[0])
    for suffix, array in arrays.items():
        path = out / f"{stem}{suffix}.npy"
        np.save(path, np.asarray(array, dtype=np.float32))
        written.append(path)
    return written


def run_view(model, args) -> list[Path]:
    """Compute one view and write its picture and arrays; returns the files written."""
    out, stem, patches = Path(args.out), Path(args.image).stem, args.max_patches
    if args.view == "grid":
        view = patch_grid(model, args.image, patches)
        files = _write(out, f"{stem}-grid", render.grid_picture(view), {"-positions": view.positions.stretched})
        render.positions_picture(view).save(out / f"{stem}-positions.png")
        (out / f"{stem}-grid.json").write_text(json.dumps(view.info(), indent=2))
        return files + [out / f"{stem}-positions.png", out / f"{stem}-grid.json"]
    if args.view == "similarity":
        if not any(query.strip() for query in args.query):
            raise InspectError("The similarity view needs what to look for: --query Q (repeat for several).")
        maps = similarity_maps(model, args.image, args.query, patches, args.method)
        warn_all(maps.warnings)
        return _write(out, f"{stem}-{args.method}", render.similarity_picture(maps, args.opacity), {"": maps.maps})
    if args.view == "attention":
        attention = attention_map(model, args.image, patches)
        return _write(out, f"{stem}-attention", render.attention_picture(attention, args.opacity),
                      {"": attention.weights})
    if args.view == "layer-attention":
        attention = layer_attention(model, args.image, patches, args.layer, args.head, args.row, args.col)
        return _write(out, f"{stem}-layer{args.layer}-head{args.head}",
                      render.layer_attention_picture(attention, args.opacity), {"": attention.weights})
    if args.view == "pca":
        pca = dense_pca(model, [args.image] + ([args.second] if args.second else []), patches)
        arrays = dict(zip(("", "-second"), pca.colours))
        return _write(out, f"{stem}-pca", render.pca_picture(pca), arrays)
    similar = patch_similarity(model, args.image, args.row, args.col, args.second, patches)
    arrays = {"": similar.similarity}
    if similar.second_similarity is not None:
        arrays["-second"] = similar.second_similarity
    return _write(out, f"{stem}-patch{args.row}x{args.col}", render.patch_similarity_picture(similar, args.opacity),
                  arrays)


def cmd_inspect(args) -> int:
    model = load_from_args(args)
    for path in run_view(model, args):
        print(path)
    return 0


def add_commands(commands) -> None:
    parser = commands.add_parser("inspect", help="look inside the model: patch grid, similarity maps, attention, "
                                                 "dense features (PNG + .npy)")
    parser.add_argument("view", choices=VIEWS)
    parser.add_argument("image")
    parser.add_argument("--query", action="append", default=[], help="similarity: a query (repeat for several)")
    parser.add_argument("--method", choices=METHODS, default="value", help="similarity map method")
    parser.add_argument("--layer", type=int, default=0, help="layer-attention: encoder layer")
    parser.add_argument("--head", type=int, default=0, help="layer-attention: head")
    parser.add_argument("--row", type=int, default=0, help="layer-attention, patch-similarity: the patch's row")
    parser.add_argument("--col", type=int, default=0, help="layer-attention, patch-similarity: the patch's column")
    parser.add_argument("--second", default=None, help="pca, patch-similarity: a second image")
    parser.add_argument("--opacity", type=float, default=0.6, help="heatmap opacity over the image")
    parser.add_argument("--out", default="inspect-out", help="folder for the PNG and .npy files")
    add_model_options(parser)
    parser.set_defaults(func=cmd_inspect)
