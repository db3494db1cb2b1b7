"""Checkpoints in the Hugging Face layout, plus a separate resumable training state.

`out/` holds `config.json` + `model.safetensors` (LoRA merged in) + the source's tokenizer and processor
files, so `load_model(out)` and the app's Models tab load it; LoRA runs also keep the adapter alone in
`out/adapter/` (peft layout). `out/training_state.pt` holds everything a resume needs: the trainable
weights, optimizer, scheduler, the position in the data and the loss history. Every file is written to a
temporary name and renamed into place; the state file goes last and is the single truth for a resume, so
an interrupted run loses only the steps since its last checkpoint.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import TrainError
from ..model.loading import TEST_MODEL_MARKER

STATE_FILE = "training_state.pt"
RUN_FILE = "studio_training.json"
COPIED_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                "preprocessor_config.json", "processor_config.json", "chat_template.jinja", TEST_MODEL_MARKER)


def _replace_into(tmp: Path, out: Path) -> None:
    for item in tmp.iterdir():
        target = out / item.name
        if item.is_dir():
            if target.exists():
                shutil.rmtree(target)
            os.replace(item, target)
        else:
            os.replace(item, target)


def export_model(module: torch.nn.Module, source_dir: Path, out: Path, run_info: dict,
                 peft_model=None) -> None:
    """Write the model (LoRA merged) in HF layout into `out`, with the source's tokenizer/processor files."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    try:
        if peft_model is not None:
            peft_model.save_pretrained(tmp / "adapter")
            merged = copy.deepcopy(peft_model).merge_and_unload()
            merged.save_pretrained(tmp, safe_serialization=True)
            del merged
        else:
            module.save_pretrained(tmp, safe_serialization=True)
        for name in COPIED_FILES:  # the test-model marker too: a fine-tuned test model is still a test model
            if (source_dir / name).exists():
                shutil.copy2(source_dir / name, tmp / name)
        (tmp / RUN_FILE).write_text(json.dumps(run_info, indent=2, ensure_ascii=False))
        _replace_into(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_state(out: Path, state: dict) -> None:
    """torch.save to a temporary file, then an atomic rename."""
    out.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix="state-", suffix=".tmp", dir=out)
    os.close(handle)
    try:
        torch.save(state, name)
        os.replace(name, out / STATE_FILE)
    finally:
        if os.path.exists(name):
            os.unlink(name)


def load_state(out: Path) -> dict | None:
    path = out / STATE_FILE
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # plain data only: no pickled code runs
    except Exception as error:
        raise TrainError(f"{path}: the training state cannot be read ({error}); start again without --resume "
                         "in a new --out folder.") from None


def trainable_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters being trained, by name, on the CPU."""
    return {name: p.detach().cpu().clone() for name, p in module.named_parameters() if p.requires_grad}


def restore_trainable(module: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    params = dict(module.named_parameters())
    missing = [name for name in saved if name not in params]
    if missing:
        raise TrainError(f"The saved state does not match this model and mode (e.g. {missing[0]}); resume with "
                         "the same --model and --mode, or start a new --out folder.")
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value.to(params[name].device))


@dataclass(frozen=True)
class ResumableRun:
    """A fine-tuning run that stopped (killed or cancelled) before its last step."""

    out: Path
    source: str  # the checkpoint it was fine-tuned from
    data: str
    mode: str
    step: int  # optimizer steps in its last checkpoint
    total_steps: int
    settings: dict = field(default_factory=dict, compare=False)  # its TrainConfig's fields (templates left out)


def resumable_runs(folder: Path) -> list[ResumableRun]:
    """The runs directly under `folder` that `train(..., resume=True)` can continue, newest first."""
    runs = []
    for out in sorted(Path(folder).glob("*/"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            info = json.loads((out / RUN_FILE).read_text())
        except (OSError, ValueError):
            continue
        if (out / STATE_FILE).exists() and info.get("step", 0) < info.get("total_steps", 0):
            runs.append(ResumableRun(out, info.get("fine_tuned_from", "?"), info.get("data", "?"),
                                     info.get("mode", "?"), info["step"], info["total_steps"],
                                     info.get("config", {})))
    return runs
