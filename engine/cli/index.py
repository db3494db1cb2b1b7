"""`python -m engine index build|list|info|export|remove` and `python -m engine search`."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..errors import IndexStoreError
from ..index.build import BuildSummary, build_index, folder_to_index
from ..index.export import FORMATS, export_index
from ..index.search import search
from ..index.listing import default_index_dir, index_exists, index_path, list_indexes
from ..index.store import ImageIndex, remove_index
from ..model.registry import DEFAULT_MODEL
from .common import add_model_options, load_from_args, progress_bar, warn_all


def describe_build(summary: BuildSummary) -> str:
    lines = [f"{summary.name}: {summary.scanned} files scanned in {summary.seconds:.1f} s — "
             f"{summary.encoded} encoded ({summary.rate:.1f}/s), {summary.linked} linked to stored content, "
             f"{summary.unchanged} unchanged, {summary.removed} removed, {len(summary.skipped)} skipped; index holds {summary.images} images "
             f"({summary.files} files), {summary.index_type}"]
    lines += [f"  skipped {path}: {reason}" for path, reason in summary.skipped]
    return "\n".join(lines)


def _load_model_for(args, index_name: str, new_index_model: str | None = None):
    """The model that built the index, unless --model names another (then it must match); for an index that
    does not exist yet, `new_index_model` (None: the index must exist)."""
    if args.model is None:
        if new_index_model and not index_exists(index_name, args.index_dir):
            args.model = new_index_model
        else:
            with ImageIndex.open(index_name, args.index_dir) as index:
                args.model = index.meta["model"]
    return load_from_args(args)


def cmd_build(args) -> int:
    folder_to_index(args.folder)  # a wrong folder or index name is said before the model loads
    index_path(args.name, args.index_dir)
    model = _load_model_for(args, args.name, new_index_model=DEFAULT_MODEL)
    if args.engine == "ray":
        from ..index.distributed import build_index_on_ray

        summary = build_index_on_ray(model, args.folder, args.name, args.index_dir, address=args.address,
                                     num_cpus=args.num_cpus, encoders=args.encoders, batch_size=args.batch_size,
                                     shard_size=args.shard_size, factory=args.index_type,
                                     progress=progress_bar("encoding on Ray"))
        print(describe_build(summary))
        print(f"Ray ({summary.address}): {summary.encoders} encoder(s), {summary.shards_written} shard(s) written, "
              f"{summary.shards_ingested} ingested ({summary.stored} new images stored)")
        return 0
    summary = build_index(model, args.folder, args.name, args.index_dir, batch_size=args.batch_size,
                          progress=progress_bar("indexing"), factory=args.index_type)
    print(describe_build(summary))
    return 0


def cmd_ingest(args) -> int:
    from ..index.shards import ingest_shards, shard_files

    shards = shard_files(Path(args.shards))
    if not shards:
        raise IndexStoreError(f"{args.shards}: no .parquet shards")
    if args.model:  # creates the index when it does not exist yet (the model must be the shards' own)
        opened = ImageIndex.create(args.name, load_from_args(args), args.index_dir)
    elif not index_exists(args.name, args.index_dir):
        raise IndexStoreError(f"No index named {args.name!r}: pass --model M, the model that wrote the shards, "
                              "to create it from them.")
    else:
        opened = ImageIndex.open(args.name, args.index_dir, writable=True)
    with opened as index:
        summary = ingest_shards(index, shards, progress=progress_bar("ingesting"))
        info = index.info()
    print(f"{args.name}: {summary.shards} shard(s), {summary.rows} rows: {summary.encoded} new images, "
          f"{summary.linked} linked to stored content, {summary.unchanged} already stored, "
          f"{len(summary.skipped)} skipped; index holds {info.images} images ({info.files} files), {info.index_type}")
    for path, reason in summary.skipped:
        print(f"  skipped {path}: {reason}")
    return 0


def cmd_search(args) -> int:
    model = _load_model_for(args, args.name)
    with ImageIndex.open(args.name, args.index_dir) as index:
        result = search(index, model, args.query, k=args.k, min_score=args.min_score, path_contains=args.path)
    warn_all(result.warnings)
    if args.json:
        print(json.dumps({"query": result.query, "untrained": result.untrained,
                          "hits": [{"path": h.path, "score": h.score, "probability": h.probability,
                                    "paths": h.paths} for h in result.hits]}, indent=2, ensure_ascii=False))
    else:
        for hit in result.hits:
            print(f"{hit.score:.4f}\t{hit.probability:.4f}\t{hit.path}")
    return 0


def cmd_list(args) -> int:
    names = list_indexes(args.index_dir)
    if not names:
        print(f"no indexes in {Path(args.index_dir or default_index_dir())}")
    for name in names:
        try:
            with ImageIndex.open(name, args.index_dir) as index:
                info = index.info()
        except IndexStoreError as error:  # one unreadable index does not hide the others
            print(f"{name}\t{error}")
            continue
        state = "" if info.finished else "\tunfinished build: run the build again to go on"
        print(f"{name}\t{info.images} images\t{info.files} files\t{info.model} ({info.precision})\t"
              f"{info.index_type}{state}")
    return 0


def cmd_info(args) -> int:
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
    out = Path(args.out or f"{args.name}-export")
    with ImageIndex.open(args.name, args.index_dir) as index:
        exported = export_index(index, out, args.format)
    print(f"exported {exported.rows} embeddings and their metadata to {out}")
    return 0


def cmd_remove(args) -> int:
    remove_index(args.name, args.index_dir)
    print(f"removed index {args.name!r}")
    return 0


def _index_options(parser, with_model: bool = True) -> None:
    parser.add_argument("--index-dir", default=None,
                        help="default: $STUDIO_INDEX_DIR, else the indexes/ folder beside app.py")
    if with_model:
        add_model_options(parser, default_model=None)  # None: the model that built the index


def add_commands(commands) -> None:
    index = commands.add_parser("index", help="build and manage image indexes")
    verbs = index.add_subparsers(dest="verb", required=True)

    build = verbs.add_parser("build", help="index a folder (incremental; safe to interrupt and rerun)")
    build.add_argument("folder")
    build.add_argument("--name", required=True)
    build.add_argument("--batch-size", type=int, default=32)
    build.add_argument("--index-type", default=None, help="FAISS factory string (default: chosen by size)")
    build.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="ray: a Ray Data pipeline (pip install -r requirements-scale.txt)")
    build.add_argument("--address", default=None, help="with --engine ray: a running cluster (default: start Ray here)")
    build.add_argument("--num-cpus", type=int, default=None, help="with --engine ray and no address: CPUs for Ray")
    build.add_argument("--encoders", type=int, default=1, help="with --engine ray: model copies (one per GPU)")
    build.add_argument("--shard-size", type=int, default=1000, help="with --engine ray: images per Parquet shard")
    _index_options(build)
    build.set_defaults(func=cmd_build)

    ingest = verbs.add_parser("ingest", help="add Parquet embedding shards (made by --engine ray or another tool)")
    ingest.add_argument("name")
    ingest.add_argument("shards", help="folder of .parquet shards")
    _index_options(ingest)  # --model: create the index if it does not exist
    ingest.set_defaults(func=cmd_ingest)

    listing = verbs.add_parser("list", help="the indexes, with their size, model and state")
    _index_options(listing, with_model=False)
    listing.set_defaults(func=cmd_list)

    info = verbs.add_parser("info", help="what an index holds")
    info.add_argument("name")
    info.add_argument("--json", action="store_true")
    _index_options(info, with_model=False)
    info.set_defaults(func=cmd_info)

    export = verbs.add_parser("export", help="embeddings (.npy or parquet) and metadata (CSV)")
    export.add_argument("name")
    export.add_argument("--format", choices=FORMATS, default="npy")
    export.add_argument("--out", default=None, help="folder (default: NAME-export)")
    _index_options(export, with_model=False)
    export.set_defaults(func=cmd_export)

    remove = verbs.add_parser("remove", help="delete an index")
    remove.add_argument("name")
    _index_options(remove, with_model=False)
    remove.set_defaults(func=cmd_remove)

    search_parser = commands.add_parser("search", help='search an index: "text", ./image.jpg, or "2:a + b.jpg - c"')
    search_parser.add_argument("name")
    search_parser.add_argument("query")
    search_parser.add_argument("-k", type=int, default=10)
    search_parser.add_argument("--min-score", type=float, default=None)
    search_parser.add_argument("--path", default=None, help="only files whose path contains this")
    search_parser.add_argument("--json", action="store_true")
    _index_options(search_parser)
    search_parser.set_defaults(func=cmd_search)
