"""`python -m engine index build|info|export|remove` and `python -m engine search`."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path


def _open_model_for(args, index_name: str):
    """The model that built the index, unless --model names another (then it must match)."""
    from .cli import load_from_args
    from .imageindex import ImageIndex

    if args.model is None:
        with ImageIndex.open(index_name, args.index_dir) as index:
            args.model = index.meta["model"]
    return load_from_args(args)


def cmd_build(args) -> int:
    from .cli import _progress_bar, load_from_args
    from .indexer import build_index

    if args.model is None:
        from .registry import DEFAULT_MODEL

        args.model = DEFAULT_MODEL
    model = load_from_args(args)
    summary = build_index(model, args.folder, args.name, args.index_dir, batch_size=args.batch_size,
                          progress=_progress_bar("indexing"), factory=args.index_type)
    print(summary.describe())
    return 0


def cmd_search(args) -> int:
    from .imageindex import ImageIndex
    from .search import search

    model = _open_model_for(args, args.name)
    with ImageIndex.open(args.name, args.index_dir) as index:
        result = search(index, model, args.query, k=args.k, min_score=args.min_score, path_contains=args.path)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps({"query": result.query, "untrained_model": result.untrained_model,
                          "hits": [{"path": h.path, "score": h.score, "probability": h.probability,
                                    "paths": h.paths} for h in result.hits]}, indent=2, ensure_ascii=False))
    else:
        for hit in result.hits:
            print(f"{hit.score:.4f}\t{hit.probability:.4f}\t{hit.path}")
    return 0


def cmd_info(args) -> int:
    from .imageindex import ImageIndex

    with ImageIndex.open(args.name, args.index_dir) as index:
        info = index.info()
        skipped = index.catalog.skipped()
    if args.json:
        print(json.dumps({**asdict(info), "skipped_files": skipped}, indent=2, ensure_ascii=False))
        return 0
    for key, value in asdict(info).items():
        print(f"{key:16} {value}")
    for path, reason in skipped:
        print(f"skipped          {path}: {reason}")
    return 0


def cmd_export(args) -> int:
    from .imageindex import ImageIndex
    from .index_export import export_index

    out = Path(args.out or f"{args.name}-export")
    with ImageIndex.open(args.name, args.index_dir) as index:
        exported = export_index(index, out, args.format)
    print(f"exported {exported.rows} embeddings and their metadata to {out}")
    return 0


def cmd_remove(args) -> int:
    from .imageindex import remove_index

    remove_index(args.name, args.index_dir)
    print(f"removed index {args.name!r}")
    return 0


def _common(parser, with_model: bool = True) -> None:
    from .cli import add_model_options

    parser.add_argument("--index-dir", default=None, help="default: indexes/ or $STUDIO_INDEX_DIR")
    if with_model:
        add_model_options(parser)
        parser.set_defaults(model=None)  # None: the model that built the index


def add_index_commands(commands) -> None:
    index = commands.add_parser("index", help="build and manage image indexes")
    verbs = index.add_subparsers(dest="verb", required=True)

    build = verbs.add_parser("build", help="index a folder (incremental; safe to interrupt and rerun)")
    build.add_argument("folder")
    build.add_argument("--name", required=True)
    build.add_argument("--batch-size", type=int, default=32)
    build.add_argument("--index-type", default=None, help="FAISS factory string (default: chosen by size)")
    _common(build)
    build.set_defaults(func=cmd_build)

    info = verbs.add_parser("info", help="what an index holds")
    info.add_argument("name")
    info.add_argument("--json", action="store_true")
    _common(info, with_model=False)
    info.set_defaults(func=cmd_info)

    export = verbs.add_parser("export", help="embeddings (.npy or parquet) and metadata (CSV)")
    export.add_argument("name")
    export.add_argument("--format", choices=["npy", "parquet"], default="npy")
    export.add_argument("--out", default=None, help="folder (default: NAME-export)")
    _common(export, with_model=False)
    export.set_defaults(func=cmd_export)

    remove = verbs.add_parser("remove", help="delete an index")
    remove.add_argument("name")
    _common(remove, with_model=False)
    remove.set_defaults(func=cmd_remove)

    search = commands.add_parser("search", help='search an index: "text", ./image.jpg, or "2:a + b.jpg - c"')
    search.add_argument("name")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=10)
    search.add_argument("--min-score", type=float, default=None)
    search.add_argument("--path", default=None, help="only files whose path contains this")
    search.add_argument("--json", action="store_true")
    _common(search)
    search.set_defaults(func=cmd_search)
