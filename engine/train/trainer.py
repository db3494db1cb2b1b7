"""The training loop: probe, LoRA or full fine-tuning with the sigmoid loss, AdamW (β2 = 0.95) with
warm-up and cosine decay, gradient clipping and accumulation, bf16 autocast on GPU/TPU, validation on a
held-out split, and resumable checkpoints.

Modes: `probe` trains the towers' heads (text projection, image attention-pooling head) and the logit
scale and bias, the towers frozen; `lora` adds peft LoRA adapters to the attention q/k/v/out and MLP
fc1/fc2 projections of both towers' encoder layers, to their embeddings (patches, tokens, positions) and
to the heads' linear layers (plus scale and bias); `full` trains every weight.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import TrainError
from ..faults import crash_point
from ..model.loading import LoadedModel, load_model
from .batches import build_batch
from .checkpoints import (RUN_FILE, export_model, load_state, restore_trainable, save_state, trainable_state)
from .data import TrainData, assign_buckets, bucket_lengths, load_data, plan_epoch, split
from .devices import TrainDevice, resolve_device
from .evaluate import EvalReport, evaluate, headline
from .losses import chunked_sigmoid_loss, ring_sigmoid_loss, sigmoid_loss
from .templates import CLIP_PAPER_TEMPLATES

MODES = ("probe", "lora", "full")
LOSSES = ("auto", "plain", "chunked", "ring")
# Encoder projections alone leave the embeddings as they were: adapting the inputs as well (tokens, patches,
# positions) and the heads' linear layers measured 61 % -> 94 % held-out top-1 on the learning test.


def lora_targets(arch: str) -> str:
    """peft's target_modules regex. NaFlex reads its vision position table's `.weight` directly (resized per
    image), so an adapter there would get no gradient (and DDP refuses parameters that get none)."""
    vision_embeddings = "patch_embedding|position_embedding" if arch == "fixed" else "patch_embedding"
    return (r".*(text_model|vision_model)\.encoder\.layers\.\d+\."
            r"(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))"
            r"|.*text_model\.(embeddings\.(token_embedding|position_embedding)|head)"
            rf"|.*vision_model\.(embeddings\.({vision_embeddings})|head\.mlp\.(fc1|fc2))")


MAX_BAD_STEPS = 5


@dataclass
class TrainConfig:
    mode: str = "lora"
    epochs: float = 1.0
    batch_size: int = 32
    lr: float | None = None  # None: 1e-3 probe, 5e-4 lora, 1e-5 full
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    accumulate: int = 1  # micro-batches per optimizer step
    loss: str = "auto"  # ring when distributed, else plain (chunked on request)
    chunk_size: int = 1024
    lora_rank: int = 16
    lora_alpha: int = 32
    held_out: float = 0.1
    seed: int = 0
    buckets: tuple[int, ...] | None = None  # NaFlex lengths; None: max, max/2, max/4
    eval_every: int = 0  # optimizer steps between validations; 0: once per epoch
    checkpoint_every: int = 0  # optimizer steps between checkpoints; 0: once per epoch
    templates: list[str] | None = None  # class-folder captions and zero-shot prompts; None: clip_paper
    device: str | None = None
    bf16: bool = True
    max_steps: int | None = None  # stop (and checkpoint) after this many optimizer steps

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else {"probe": 1e-3, "lora": 5e-4, "full": 1e-5}[self.mode]


@dataclass
class TrainEvent:
    """What a progress callback receives after every optimizer step (and after each validation)."""

    step: int
    total_steps: int
    epoch: float
    loss: float
    lr: float
    seconds: float
    validation: dict[str, float] | None = None


@dataclass
class TrainResult:
    out: Path
    steps: int
    total_steps: int
    history: list[dict]  # per step: step, loss, lr
    validation: list[dict]  # per validation: step, metric, value
    before: EvalReport | None
    after: EvalReport | None
    skipped_images: list[str] = field(default_factory=list)
    bad_steps: int = 0  # NaN/inf losses skipped
    seconds: float = 0.0
    stopped: bool = False  # stopped early (cancel or max_steps), resumable
    first_step: int = 0  # the step this session started from (a resumed run's checkpoint)

    def report(self) -> dict:
        return {"out": str(self.out), "steps": self.steps, "first_step": self.first_step,
                "total_steps": self.total_steps,
                "stopped": self.stopped, "seconds": round(self.seconds, 2), "bad_steps": self.bad_steps,
                "skipped_images": len(self.skipped_images),
                "before": self.before.to_dict() if self.before else None,
                "after": self.after.to_dict() if self.after else None}


def saved_config(state: dict) -> TrainConfig:
    """The settings a run was started with, from its training state."""
    saved = dict(state["config"])
    if saved.get("buckets") is not None:
        saved["buckets"] = tuple(saved["buckets"])
    return TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__})


def prepare_mode(model: LoadedModel, config: TrainConfig):
    """Freeze / wrap the model for the mode; returns the peft model for LoRA (else None)."""
    module = model.model
    peft_model = None
    if config.mode == "full":
        module.requires_grad_(True)
    elif config.mode == "probe":
        module.requires_grad_(False)
        for head in (module.text_model.head, getattr(module.vision_model, "head", None)):
            if head is not None:
                head.requires_grad_(True)
    elif config.mode == "lora":
        from peft import LoraConfig, get_peft_model

        # peft reads transformers' deprecated is_gradient_checkpointing: a notice users cannot act on
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                          target_modules=lora_targets(model.arch), bias="none")
        peft_model = get_peft_model(module, lora)  # injects the adapters into `module` in place
    else:
        raise TrainError(f"Unknown mode {config.mode!r}: use one of {', '.join(MODES)}.")
    module.logit_scale.requires_grad_(True)
    module.logit_bias.requires_grad_(True)
    module.train()
    return peft_model


def make_optimizer(module: torch.nn.Module, config: TrainConfig, total_steps: int):
    from transformers import get_cosine_schedule_with_warmup

    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim < 2 or "logit_" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=config.learning_rate(), betas=(0.9, 0.95))
    warmup = int(round(config.warmup_fraction * total_steps))
    return optimizer, get_cosine_schedule_with_warmup(optimizer, warmup, total_steps)


class Towers(torch.nn.Module):
    """Both towers as one module (what DDP wraps): normalised float32 embeddings of a batch."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_inputs: dict, input_ids: torch.Tensor):
        images = self.model.get_image_features(**pixel_inputs).pooler_output
        texts = self.model.get_text_features(input_ids=input_ids).pooler_output
        normalize = torch.nn.functional.normalize
        return normalize(images.float(), dim=-1), normalize(texts.float(), dim=-1)


def batch_loss(images, texts, groups, module, config: TrainConfig, device: TrainDevice) -> torch.Tensor:
    scale, bias = module.logit_scale.float(), module.logit_bias.float()
    kind = config.loss if config.loss != "auto" else ("ring" if device.distributed else "plain")
    if kind == "ring":
        if not device.distributed:
            raise TrainError("The ring loss needs several processes: start with `torchrun --nproc_per_node N`.")
        return ring_sigmoid_loss(images, texts, scale, bias, groups, groups)
    if kind == "chunked":
        return chunked_sigmoid_loss(images, texts, scale, bias, groups, groups, chunk=config.chunk_size)
    return sigmoid_loss(images, texts, scale, bias, groups, groups)


def _validate(model: LoadedModel, val: TrainData, config: TrainConfig) -> EvalReport | None:
    if not len(val):
        return None
    return evaluate(model, val, templates=config.templates)


def _run_info(config: TrainConfig, source: str, data: str, step: int, total: int, metrics: dict | None) -> dict:
    return {"fine_tuned_from": source, "data": data, "mode": config.mode, "step": step, "total_steps": total,
            "config": {k: v for k, v in asdict(config).items() if k != "templates"}, "validation": metrics}


# what a resumed run may change: where and how far it runs, not its schedule (which would not continue its curve)
RUNTIME_FIELDS = ("device", "bf16", "max_steps")


def train(model_name: str | LoadedModel | None, data: str | Path | TrainData | None, out: str | Path,
          config: TrainConfig | None = None, resume: bool = False, on_event: Callable[[TrainEvent], None] | None = None,
          should_stop: Callable[[], bool] | None = None, runtime: dict | None = None) -> TrainResult:
    """Fine-tune `model_name` on `data`, writing a loadable checkpoint (and resumable state) to `out`. With
    `resume`, the run in `out` continues from its last checkpoint: its model, its data when `data` is None,
    its settings when `config` is None, with `runtime` ({field: value} of RUNTIME_FIELDS) replacing those.
    `model_name`: a Hub id or checkpoint folder, or a LoadedModel, whose checkpoint the run loads afresh (by
    the name it was loaded by, which a resume uses too) in float32 on its own device."""
    if isinstance(model_name, LoadedModel):
        model_name = model_name.name
    out = Path(out).expanduser()
    state = load_state(out) if resume else None
    if resume and state is None:
        raise TrainError(f"{out}: nothing to resume (no training state); run without --resume to start.")
    if config is None:
        config = saved_config(state) if state is not None else TrainConfig()
    if runtime:
        if unknown := set(runtime) - set(RUNTIME_FIELDS):
            raise TrainError(f"A resumed run keeps its schedule; only {', '.join(RUNTIME_FIELDS)} can change, "
                             f"not {', '.join(sorted(unknown))}.")
        config = replace(config, **runtime)
    if config.mode not in MODES:
        raise TrainError(f"Unknown mode {config.mode!r}: use one of {', '.join(MODES)}.")
    if config.loss not in LOSSES:
        raise TrainError(f"Unknown loss {config.loss!r}: use one of {', '.join(LOSSES)}.")
    if config.batch_size < 2:
        raise TrainError("--batch-size must be at least 2: the sigmoid loss needs negatives in the batch.")
    if not resume and (out / RUN_FILE).exists():
        raise TrainError(f"{out} already holds a fine-tuning run: pass --resume to continue it, or choose a new --out.")
    if state is not None:
        model_name = state["source"]
        data = data if data is not None else state.get("data")
        if state["config"]["mode"] != config.mode:
            raise TrainError(f"{out} was trained with --mode {state['config']['mode']}; resume with the same mode.")
    device = resolve_device(config.device, config.bf16)
    started = time.monotonic()
    # Training always keeps float32 master weights; bf16 comes from autocast.
    load_device = "cpu" if device.kind == "xla" else str(device.device)
    model = load_model(model_name, device=load_device, dtype="fp32")
    if device.kind == "xla":
        model.model.to(device.device)
        model.device = device.device
    if data is None:
        raise TrainError(f"{out}: the run does not record its data; pass --data." if resume else "No data given.")
    all_data = data if isinstance(data, TrainData) else load_data(data)
    data_source = os.path.abspath(all_data.source)  # a resume may start from another directory
    train_data, val_data = split(all_data, config.held_out, config.seed)
    if all_data.classes is None and not train_data.has_captions:
        raise TrainError(f"{all_data.source}: no captions and no classes to train on.")
    templates = list(config.templates or CLIP_PAPER_TEMPLATES)

    buckets = tuple(config.buckets or bucket_lengths(model.image_preprocessor.max_num_patches))
    sizes = assign_buckets(train_data, model.arch, model.patch_size, buckets)
    global_batch = config.batch_size * device.world_size
    drop_last = device.distributed or device.kind == "xla"
    plans_per_epoch = len(plan_epoch(sizes, global_batch, config.seed, 0, drop_last))
    if plans_per_epoch == 0:
        raise TrainError(f"{len(train_data)} training examples make no full batch of {global_batch}; lower "
                         "--batch-size or add data.")
    steps_per_epoch = max(1, plans_per_epoch // config.accumulate)
    total_steps = max(1, int(math.ceil(config.epochs * steps_per_epoch)))

    peft_model = prepare_mode(model, config)
    module = model.model
    optimizer, scheduler = make_optimizer(module, config, total_steps)
    towers: torch.nn.Module = Towers(module)
    if device.distributed:
        towers = torch.nn.parallel.DistributedDataParallel(
            towers, device_ids=[device.device.index] if device.kind == "cuda" else None)

    step, epoch, next_batch, history, validations, bad_steps = 0, 0, 0, [], [], 0
    before = None
    skipped: list[str] = []
    if state is not None:
        restore_trainable(module, state["trainable"])
        try:
            optimizer.load_state_dict(state["optimizer"])
        except ValueError:  # other trainable parameters: saved by an earlier version of the trainer
            raise TrainError(f"{out}: this run's saved optimizer does not match the parameters trained now (it was "
                             "saved by an earlier version); start a new run in another --out folder.") from None
        scheduler.load_state_dict(state["scheduler"])
        step, epoch, next_batch = state["step"], state["epoch"], state["next_batch"]
        history, validations = state["history"], state["validation"]
        before = EvalReport(**state["before"]) if state.get("before") else None
        bad_steps = state.get("bad_steps", 0)
    elif device.is_main:
        before = _validate(model, val_data, config)
        if before is not None:
            key, value = headline(before)
            validations.append({"step": 0, "metric": key, "value": value})
    first_step = step

    def checkpoint(final_metrics=None):
        if not device.is_main:
            return
        run_info = _run_info(config, str(model_name), data_source, step, total_steps, final_metrics)
        export_model(module if peft_model is None else None, model.directory, out, run_info, peft_model)
        save_state(out, {"source": str(model_name), "data": data_source, "config": asdict(config),
                         "trainable": trainable_state(module), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "step": step,
                         "epoch": epoch, "next_batch": next_batch, "history": history, "validation": validations,
                         "before": before.to_dict() if before else None, "bad_steps": bad_steps})
        crash_point("train.after_checkpoint")

    def emit(validation=None):
        if on_event and device.is_main:
            last = history[-1] if history else {"loss": float("nan"), "lr": 0.0}
            on_event(TrainEvent(step, total_steps, step / steps_per_epoch, last["loss"], last["lr"],
                                time.monotonic() - started, validation))

    eval_every = config.eval_every or steps_per_epoch
    checkpoint_every = config.checkpoint_every or steps_per_epoch
    stop_at = min(total_steps, config.max_steps or total_steps)
    stopped = False
    micro, accumulated = 0, []
    while step < stop_at and not stopped:
        plans = plan_epoch(sizes, global_batch, config.seed, epoch, drop_last)
        while next_batch < len(plans) and step < stop_at:
            plan = plans[next_batch]
            if device.distributed:  # each rank takes its slice of the global batch
                share = slice(device.rank * config.batch_size, (device.rank + 1) * config.batch_size)
                plan = type(plan)(plan.positions[share], plan.caption_choice[share], plan.sequence_length)
            next_batch += 1
            batch = build_batch(model, train_data, plan, templates)
            skipped += batch.skipped
            if len(batch) < 2:
                continue
            try:
                with device.autocast():
                    images, texts = towers(batch.pixels.model_inputs(device.device, torch.float32),
                                           batch.input_ids.to(device.device))
                loss = batch_loss(images, texts, batch.groups.to(device.device), module, config, device)
                (loss / config.accumulate).backward()
            except torch.OutOfMemoryError:
                raise TrainError(f"A batch of {len(batch)} images does not fit in memory on {device.describe()}: "
                                 f"lower --batch-size (and raise --accumulate to keep the effective batch), or "
                                 "use --loss chunked.") from None
            accumulated.append(float(loss.detach()))
            micro += 1
            if micro < config.accumulate and next_batch < len(plans):
                continue
            micro = 0
            value = float(np.mean(accumulated))
            accumulated = []
            if not math.isfinite(value):
                optimizer.zero_grad(set_to_none=True)
                bad_steps += 1
                if bad_steps >= MAX_BAD_STEPS:
                    raise TrainError(f"The loss was NaN or infinite {bad_steps} times (last at step {step + 1}); "
                                     f"lower --lr (now {config.learning_rate():g}) or check the data.")
                continue
            torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            device.mark_step()
            step += 1
            history.append({"step": step, "loss": value, "lr": scheduler.get_last_lr()[0]})
            validation = None
            if step % eval_every == 0 and step < stop_at and device.is_main:
                report = _validate(model, val_data, config)
                if report is not None:
                    key, metric = headline(report)
                    validations.append({"step": step, "metric": key, "value": metric})
                    validation = {key: metric}
            emit(validation)
            crash_point("train.after_step")
            if step % checkpoint_every == 0 and step < stop_at:
                checkpoint()
            if should_stop and should_stop():
                stopped = True
                break
        if next_batch >= len(plans):
            epoch, next_batch = epoch + 1, 0

    after = _validate(model, val_data, config) if device.is_main else None
    if after is not None:
        key, metric = headline(after)
        if not validations or validations[-1]["step"] != step:
            validations.append({"step": step, "metric": key, "value": metric})
        emit({key: metric})
    stopped = stopped or step < total_steps
    checkpoint(after.metrics if after else None)
    result = TrainResult(out, step, total_steps, history, validations, before, after, skipped, bad_steps,
                         time.monotonic() - started, stopped, first_step)
    if device.is_main:
        (out / "eval_report.json").write_text(json.dumps(result.report(), indent=2))
    return result
