"""`python -m engine train` (fine-tune a checkpoint) and `python -m engine eval` (zero-shot accuracy or
retrieval recall), with a before/after table and JSON reports."""

from __future__ import annotations

import json
import sys

from ..errors import TrainError
from ..model.loading import load_model
from ..train.data import load_data
from ..train.evaluate import comparison_table, evaluate
from ..train.trainer import LOSSES, MODES, TrainConfig, train
from .common import UNTRAINED_NOTE, progress_bar, warn, warn_all


def _templates(args) -> list[str] | None:
    if not args.template and not args.templates_file:
        return None
    templates = list(args.template or [])
    if args.templates_file:
        with open(args.templates_file, encoding="utf-8") as handle:
            templates += [line.strip() for line in handle if line.strip()]
    return templates


def cmd_train(args) -> int:
    from tqdm import tqdm

    # a resumed run keeps its own settings; where and how far it runs is given anew (runtime, below)
    config = None if args.resume else TrainConfig(
        mode=args.mode, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, accumulate=args.accumulate,
        loss=args.loss, chunk_size=args.chunk_size, lora_rank=args.lora_rank, held_out=args.held_out,
        seed=args.seed, checkpoint_every=args.checkpoint_every, eval_every=args.eval_every,
        templates=_templates(args), device=args.device, bf16=not args.no_bf16, max_steps=args.max_steps,
        buckets=tuple(args.buckets) if args.buckets else None)
    bar = None

    def on_event(event):
        nonlocal bar
        if bar is None:
            bar = tqdm(total=event.total_steps, initial=event.step - 1 if event.step else 0, desc="steps",
                       unit="step", file=sys.stderr, disable=None)
        bar.n = event.step
        postfix = {"loss": f"{event.loss:.3f}", "lr": f"{event.lr:.2e}"}
        if event.validation:
            postfix.update({k: f"{v:.3f}" for k, v in event.validation.items()})
            tqdm.write(f"step {event.step}: " + ", ".join(f"{k} {v:.3f}" for k, v in event.validation.items()),
                       file=sys.stderr)
        bar.set_postfix(postfix)

    if not args.resume and not (args.model and args.data):
        raise TrainError("--model and --data are needed to start a run (or pass --resume to continue one).")
    runtime = {"device": args.device, "bf16": not args.no_bf16, "max_steps": args.max_steps} if args.resume else None
    result = train(args.model, args.data, args.out, config, resume=args.resume, on_event=on_event, runtime=runtime)
    if bar is not None:
        bar.close()
    if result.skipped_images:
        warn(f"{len(result.skipped_images)} unreadable image(s) skipped, e.g. {result.skipped_images[0]}")
    if result.bad_steps:
        warn(f"{result.bad_steps} step(s) with a NaN/infinite loss skipped")
    if args.json:
        print(json.dumps(result.report(), indent=2))
    else:
        resumed = (f" ({result.steps - result.first_step} after resuming at step {result.first_step})"
                   if result.first_step else "")
        print(f"{result.steps}/{result.total_steps} steps{resumed} in {result.seconds:.1f} s; "
              f"checkpoint: {result.out}" + (" (stopped early: continue with --resume)" if result.stopped else ""))
        if result.after is not None:
            print(f"held-out {result.after.num_images} images:")
            print(comparison_table(result.before, result.after))
    return 0


def cmd_eval(args) -> int:
    model = load_model(args.model, device=args.device, dtype=args.dtype, max_num_patches=args.max_patches)
    if model.untrained:
        warn(f"{args.model} {UNTRAINED_NOTE}")
    data = load_data(args.data)
    warn_all(f"{item}: {reason}, skipped" for item, reason in data.skipped)
    report = evaluate(model, data, templates=_templates(args), canonicalize=not args.no_canonicalize,
                      progress=progress_bar("images"))
    warn_all(report.skipped)
    if args.json:
        print(json.dumps({"model": args.model, "data": str(args.data), "untrained": model.untrained,
                          **report.to_dict()}, indent=2))
    else:
        for key, value in report.metrics.items():
            print(f"{key:<16}{100 * value:6.1f} %")
    return 0


def _template_options(parser) -> None:
    parser.add_argument("--template", action="append", default=None,
                        help="zero-shot prompt with {} for the class (repeat; default: the 80 clip_paper templates)")
    parser.add_argument("--templates-file", default=None, help="a file of prompt templates, one per line")


def add_commands(commands) -> None:
    trainer = commands.add_parser("train", help="fine-tune a checkpoint (probe, LoRA or full) on images")
    trainer.add_argument("--model", help="Hub id or local checkpoint folder to start from")
    trainer.add_argument("--data",
                         help="folder of class subfolders, caption .csv/.jsonl/COCO .json, or a `datasets` folder")
    trainer.add_argument("--mode", choices=MODES, default="lora")
    trainer.add_argument("--out", required=True, help="folder for the checkpoint (Hugging Face layout)")
    trainer.add_argument("--epochs", type=float, default=1.0)
    trainer.add_argument("--batch-size", type=int, default=32, help="per process")
    trainer.add_argument("--lr", type=float, default=None, help="peak learning rate (default by mode)")
    trainer.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step")
    trainer.add_argument("--loss", choices=LOSSES, default="auto", help="auto: ring under torchrun, else plain")
    trainer.add_argument("--chunk-size", type=int, default=1024, help="texts per chunk for --loss chunked")
    trainer.add_argument("--lora-rank", type=int, default=16)
    trainer.add_argument("--held-out", type=float, default=0.1, help="fraction kept for validation")
    trainer.add_argument("--seed", type=int, default=0)
    trainer.add_argument("--buckets", type=int, nargs="+", default=None, help="NaFlex sequence lengths")
    trainer.add_argument("--checkpoint-every", type=int, default=0, help="steps (default: each epoch)")
    trainer.add_argument("--eval-every", type=int, default=0, help="steps (default: each epoch)")
    trainer.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (resumable)")
    trainer.add_argument("--device", default=None, help="auto, cuda, cuda:N, xla (TPU), mps or cpu")
    trainer.add_argument("--no-bf16", action="store_true", help="no bf16 autocast on GPU/TPU")
    trainer.add_argument("--resume", action="store_true",
                         help="continue the run saved in --out with its own settings (and its model and data "
                              "unless given); --device, --no-bf16 and --max-steps apply anew")
    trainer.add_argument("--json", action="store_true", help="print the report as JSON")
    _template_options(trainer)
    trainer.set_defaults(func=cmd_train)

    evaluator = commands.add_parser("eval", help="zero-shot top-1/top-5 on class folders, recall@k on captions")
    evaluator.add_argument("--model", required=True, help="Hub id or local checkpoint folder")
    evaluator.add_argument("--data", required=True, help="folder of class subfolders or a caption file")
    evaluator.add_argument("--device", default=None)
    evaluator.add_argument("--dtype", default=None)
    evaluator.add_argument("--max-patches", type=int, default=None, help="NaFlex sequence length")
    evaluator.add_argument("--no-canonicalize", action="store_true", help="use class names and templates as written")
    evaluator.add_argument("--json", action="store_true")
    _template_options(evaluator)
    evaluator.set_defaults(func=cmd_eval)
