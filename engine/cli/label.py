"""`python -m engine classify`: zero-shot labels of images, as a table or JSON."""

from __future__ import annotations

import json

from ..label.zeroshot import classify
from .common import add_model_options, load_from_args, progress_bar, warn_all


def cmd_classify(args) -> int:
    model = load_from_args(args)
    result = classify(model, args.images, args.labels, templates=args.template, progress=progress_bar("images"))
    warn_all(result.warnings)
    warn_all(result.failures)
    if args.json:
        print(json.dumps({"model": args.model, "untrained": result.untrained, "labels": result.labels,
                          "results": result.records(),
                          "failed": [{"image": f.source, "reason": f.reason} for f in result.failures]},
                         indent=2, ensure_ascii=False))
    else:
        for row, source in enumerate(result.sources):
            tops = ", ".join(f"{label} {p:.3f}" for label, p in result.top(row, 5))
            print(f"{source}\t{tops}")
    return 0 if result.sources else 1


def add_commands(commands) -> None:
    parser = commands.add_parser("classify", help="zero-shot labels: logit and probability per label")
    add_model_options(parser)
    parser.add_argument("images", nargs="+")
    parser.add_argument("--labels", required=True, help='comma-separated, e.g. "cat,dog,car"')
    parser.add_argument("--template", action="append", default=None,
                        help="prompt template with {} for the label (repeat to ensemble)")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=cmd_classify)
