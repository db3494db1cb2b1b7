"""SigLIP 2 Studio: `python app.py [--model ID_OR_PATH] [--device D] [--dtype T] [--host H] [--port P]`.

Every option can also come from the environment (for Hugging Face Spaces): STUDIO_MODEL, STUDIO_DEVICE,
STUDIO_DTYPE, STUDIO_HOST (or GRADIO_SERVER_NAME), STUDIO_PORT (or GRADIO_SERVER_PORT), STUDIO_INDEX_DIR,
STUDIO_ALLOWED_ROOTS (folders the UI may read, separated by the OS path separator), STUDIO_CACHE_EXAMPLES
(1/0; on by default on Spaces, where SPACE_ID is set), STUDIO_ENABLE_TRAINING (1/0, the Fine-tune tab; off by
default, on Spaces too).
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from pathlib import Path

from engine import DEFAULT_MODEL, StudioError
from engine.index.listing import default_index_dir

ROOT = Path(__file__).resolve().parent
MAX_UPLOAD = "50mb"


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="SigLIP 2 Studio")
    parser.add_argument("--model", default=env("STUDIO_MODEL", DEFAULT_MODEL), help="Hub id or local folder")
    parser.add_argument("--test-model", action="store_true", help="start with the small untrained test model")
    parser.add_argument("--device", default=env("STUDIO_DEVICE"))
    parser.add_argument("--dtype", default=env("STUDIO_DTYPE"))
    parser.add_argument("--host", default=env("STUDIO_HOST") or env("GRADIO_SERVER_NAME") or "127.0.0.1")
    parser.add_argument("--port", type=int, default=int(env("STUDIO_PORT") or env("GRADIO_SERVER_PORT") or 7860))
    parser.add_argument("--index-dir", default=env("STUDIO_INDEX_DIR") or str(default_index_dir()))
    parser.add_argument("--allowed-root", action="append", default=None,
                        help="a server folder the UI may index or label (repeatable)")
    cache_default = env("STUDIO_CACHE_EXAMPLES", "1" if env("SPACE_ID") else "0").lower() in ("1", "true", "yes")
    parser.add_argument("--cache-examples", action=argparse.BooleanOptionalAction, default=cache_default,
                        help="label the example images at start-up (default: on for Hugging Face Spaces)")
    training_default = env("STUDIO_ENABLE_TRAINING", "0").lower() in ("1", "true", "yes")
    parser.add_argument("--enable-training", action=argparse.BooleanOptionalAction, default=training_default,
                        help="show the Fine-tune tab (default off, on Spaces too, unless STUDIO_ENABLE_TRAINING=1)")
    return parser.parse_args(argv)


def make_studio(args):
    from app.studio import Studio

    roots = args.allowed_root or [p for p in os.environ.get("STUDIO_ALLOWED_ROOTS", "").split(os.pathsep) if p]
    roots = [Path(r).expanduser().resolve() for r in roots] or [ROOT / "assets"]
    Path(args.index_dir).mkdir(parents=True, exist_ok=True)
    studio = Studio(index_dir=Path(args.index_dir), allowed_roots=roots, device=args.device, dtype=args.dtype,
                    enable_training=args.enable_training)
    log = logging.getLogger("app")
    from engine.explore.map import warm_up_umap

    # UMAP's first call compiles for ~40 s: do it now, beside the model load, not when someone asks for a map
    threading.Thread(target=warm_up_umap, name="umap-warm-up", daemon=True).start()
    try:
        studio.load_test_model() if args.test_model else studio.load(args.model)
    except StudioError as error:
        log.warning("starting without a model: %s", error)
    if args.cache_examples and studio.model is not None:
        from app.tab_label import cache_examples

        try:
            log.info("cached the results of %d examples", cache_examples(studio))
        except StudioError as error:
            log.warning("examples not cached: %s", error)
    return studio


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own start-up checks, one line per request
    args = parse_args(argv)
    from app import build_app
    from app.ui import CSS

    studio = make_studio(args)
    demo = build_app(studio)
    demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD,
                allowed_paths=[str(ROOT / "assets")], footer_links=["api", "settings"], css=CSS)


if __name__ == "__main__":
    main()
