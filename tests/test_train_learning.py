"""The honest learning test: a generated small model, untrained, fine-tuned on CPU on procedurally drawn
coloured shapes (12 classes: 4 colours × circle/square/triangle on noisy, randomly tinted backgrounds),
evaluated zero-shot on held-out images drawn with another seed. It starts near chance (1/12) and must
learn; the loss must also fall on NaFlex inputs of mixed aspect ratios trained from multilingual captions.
Figures are printed (pytest -s) for the README.

The issue's goal is LEARNING_TARGET (90 %) top-1, asserted for both modes. Measured on 2 shared CPU cores:
full fine-tuning, 15 epochs (345 steps of 720 images), reaches 100 %; LoRA, 10 epochs (230 steps), 94 %
with adapters on the encoder projections, the embeddings and the heads' linear layers, against 61 % with
the encoder projections alone (given 15 epochs both reach 96-97 %, so 10 is where the test tells them
apart)."""

from __future__ import annotations

import math
import time

import pytest
import torch

from engine import load_model
from engine.model.testmodel import make_test_model
from engine.train.data import load_data
from engine.train.evaluate import zero_shot
from engine.train.trainer import TrainConfig, train
from test_train_data import make_shapes

LEARNING_TARGET = 0.90  # measured 1.00 (full, 345 steps) and 0.94 (LoRA, 230 steps)
TEMPLATES = ["a photo of a {}."]  # the user's own template, used for training captions and zero-shot prompts
CHANCE = 1 / 12


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    return {"train": make_shapes(root / "train", per_class=60, seed=11),
            "held_out": make_shapes(root / "held_out", per_class=8, seed=12),
            "mixed": make_shapes(root / "mixed", per_class=6, seed=13, mixed_sizes=True)}


@pytest.fixture(scope="module")
def start_model(tmp_path_factory):
    return make_test_model(tmp_path_factory.mktemp("start"), arch="fixed", size="tiny", seed=21,
                           image_size=32, patch_size=16)


@pytest.fixture(scope="module")
def before(start_model, shapes):
    return zero_shot(load_model(str(start_model)), load_data(shapes["held_out"]["classes"]), templates=TEMPLATES)


@pytest.mark.parametrize("mode,lr,epochs", [("full", 3e-3, 15), ("lora", 3e-3, 10)])
def test_fine_tuning_learns_the_shapes(tmp_path, shapes, start_model, before, mode, lr, epochs):
    torch.manual_seed(0)
    config = TrainConfig(mode=mode, epochs=epochs, batch_size=32, lr=lr, held_out=0.0, device="cpu",
                         templates=TEMPLATES, warmup_fraction=0.05, checkpoint_every=10**6, lora_rank=16)
    started = time.monotonic()
    result = train(str(start_model), shapes["train"]["classes"], tmp_path / mode, config)
    seconds = time.monotonic() - started
    after = zero_shot(load_model(str(tmp_path / mode)), load_data(shapes["held_out"]["classes"]), templates=TEMPLATES)
    print(f"\n[learning] {mode}: held-out top-1 {before.metrics['top1']:.3f} -> {after.metrics['top1']:.3f} "
          f"(top-5 {after.metrics['top5']:.3f}), loss {result.history[0]['loss']:.2f} -> "
          f"{result.history[-1]['loss']:.2f}, {result.steps} steps, {seconds:.1f} s")
    assert before.metrics["top1"] <= 3 * CHANCE  # the untrained model is near chance
    assert after.metrics["top1"] >= LEARNING_TARGET


def test_loss_falls_on_naflex_mixed_aspect_ratios_from_multilingual_captions(tmp_path, shapes):
    model_dir = make_test_model(tmp_path / "naflex", arch="naflex", size="tiny", seed=22, patch_size=8,
                                max_patches=64)
    config = TrainConfig(mode="full", epochs=6, batch_size=16, lr=2e-3, held_out=0.0, device="cpu",
                         warmup_fraction=0.05, checkpoint_every=10**6)
    data = load_data(shapes["mixed"]["captions"])  # 4 languages per image, 4 aspect ratios
    result = train(str(model_dir), data, tmp_path / "out", config)
    losses = [h["loss"] for h in result.history]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    print(f"\n[learning] naflex captions: loss {first:.2f} -> {last:.2f} over {result.steps} steps")
    assert all(math.isfinite(v) for v in losses)
    assert last < 0.6 * first
