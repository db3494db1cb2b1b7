"""Checkpoints and the command line: a saved checkpoint reloads with identical embeddings (full and LoRA,
test-model marker kept), resuming continues the same loss curve, a killed run resumes from its last
checkpoint, `python -m engine train/eval` work end to end, and bad input stops with a clear message."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from engine import load_model
from engine.errors import TrainError
from engine.model.encode import encode_images, encode_texts
from engine.model.loading import TEST_MODEL_MARKER
from engine.train.trainer import TrainConfig, train
from test_train_data import make_shapes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes"), per_class=3, seed=5)


@pytest.fixture(scope="module")
def small_fixed(tmp_path_factory):
    from engine.model.testmodel import make_test_model

    return make_test_model(tmp_path_factory.mktemp("m"), arch="fixed", seed=4, image_size=32, patch_size=8)


def quick(mode="full", **kw):
    return TrainConfig(mode=mode, epochs=kw.pop("epochs", 1), batch_size=kw.pop("batch_size", 8), lr=1e-3,
                       held_out=kw.pop("held_out", 0.2), device="cpu", templates=["a photo of a {}."], **kw)


@pytest.fixture(scope="module")
def small_naflex(tmp_path_factory):
    from engine.model.testmodel import make_test_model

    return make_test_model(tmp_path_factory.mktemp("n"), arch="naflex", seed=4, patch_size=8, max_patches=16)


@pytest.mark.parametrize("mode,arch", [("full", "fixed"), ("lora", "fixed"), ("lora", "naflex"), ("probe", "fixed")])
def test_checkpoint_reloads_with_identical_embeddings(tmp_path, shapes, small_fixed, small_naflex, mode, arch,
                                                      monkeypatch):
    from engine.train import trainer

    source = small_fixed if arch == "fixed" else small_naflex
    captured = {}
    prepare = trainer.prepare_mode

    def keep(model, config):  # keep a handle on the model being trained
        captured["model"] = model
        return prepare(model, config)

    monkeypatch.setattr(trainer, "prepare_mode", keep)
    events = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(str(source), shapes["classes"], tmp_path / mode, quick(mode), on_event=events.append)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]  # peft's, not the user's
    assert result.steps == result.total_steps > 0 and not result.stopped
    assert events and events[-1].validation
    out = tmp_path / mode
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    assert (out / TEST_MODEL_MARKER).exists()  # a fine-tuned test model is still an untrained test model
    assert (out / "adapter" / "adapter_model.safetensors").exists() == (mode == "lora")
    report = json.loads((out / "eval_report.json").read_text())
    assert report["after"]["metrics"] == result.after.metrics
    reloaded = load_model(str(out))
    assert reloaded.untrained
    # Training moved the weights it should (probe: heads and score only) ...
    after, before = reloaded.model.state_dict(), load_model(str(source)).model.state_dict()
    changed = [k for k in after if not np.allclose(after[k].numpy(), before[k].numpy())]
    assert changed, "training changed no weight"
    if mode == "probe":
        assert all("head" in k or "logit" in k for k in changed), changed
    if mode == "lora":  # the adapters reach the embeddings and the heads, not only the encoder layers
        assert {"vision_model.embeddings.patch_embedding.weight", "text_model.embeddings.token_embedding.weight",
                "text_model.head.weight", "vision_model.head.mlp.fc1.weight"} <= set(changed), changed
    # ... and the checkpoint embeds exactly as the trained model did (LoRA merged into the weights).
    trained = captured["model"]
    trained.model.eval()
    images = sorted(Path(shapes["classes"]).rglob("*.png"))[:4]
    texts = ["a red circle", "un carré bleu"]
    np.testing.assert_allclose(encode_images(reloaded, images).vectors, encode_images(trained, images).vectors,
                               atol=1e-5)
    np.testing.assert_allclose(encode_texts(reloaded, texts).vectors, encode_texts(trained, texts).vectors, atol=1e-5)
    assert reloaded.logit_scale == pytest.approx(trained.logit_scale) and reloaded.logit_bias == pytest.approx(
        trained.logit_bias)


def test_resume_continues_the_same_loss_curve(tmp_path, shapes, small_fixed):
    straight = train(str(small_fixed), shapes["classes"], tmp_path / "a", quick(epochs=2, checkpoint_every=1))
    first = train(str(small_fixed), shapes["classes"], tmp_path / "b", quick(epochs=2, checkpoint_every=1, max_steps=3))
    assert first.stopped and first.steps == 3
    with pytest.raises(TrainError, match="--resume"):
        train(str(small_fixed), shapes["classes"], tmp_path / "b", quick(epochs=2))
    with pytest.raises(TrainError, match="keeps its schedule.*not lr"):
        train(None, None, tmp_path / "b", resume=True, runtime={"lr": 1.0, "device": "cpu"})
    resumed = train(str(small_fixed), shapes["classes"], tmp_path / "b", quick(epochs=2, checkpoint_every=1), resume=True)
    assert [h["step"] for h in resumed.history] == list(range(1, straight.steps + 1))
    np.testing.assert_allclose([h["loss"] for h in resumed.history], [h["loss"] for h in straight.history], rtol=1e-4)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "engine", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def test_cli_train_killed_then_resumed(tmp_path, shapes, small_fixed):
    out = tmp_path / "run"
    args = ["train", "--model", str(small_fixed), "--data", str(shapes["classes"]), "--mode", "full",
            "--out", str(out), "--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--device", "cpu",
            "--checkpoint-every", "2", "--template", "a photo of a {}."]
    killed = run_cli(*args, env={"STUDIO_CRASH_AT": "train.after_step:3"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    state = __import__("torch").load(out / "training_state.pt", weights_only=False)
    assert state["step"] == 2  # the checkpoint before the kill: only step 3 is lost
    # its own model, data and settings (not the CLI's defaults: mode lora, 1 epoch, batch 32); a new step limit
    partly = run_cli("train", "--out", str(out), "--resume", "--max-steps", "4", "--json")
    assert partly.returncode == 0, partly.stderr[-2000:]
    first = json.loads(partly.stdout)
    assert first["steps"] == 4 and first["first_step"] == 2 and first["stopped"] and first["total_steps"] > 4
    resumed = run_cli("train", "--out", str(out), "--resume", "--json")  # the step limit is not kept
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    report = json.loads(resumed.stdout)
    assert report["steps"] == report["total_steps"] == first["total_steps"] and not report["stopped"]
    assert json.loads((out / "studio_training.json").read_text())["mode"] == "full"
    assert "top1" in report["after"]["metrics"]


def test_cli_eval_reports_accuracy_and_recall(shapes, small_fixed, capsys):
    from engine.cli import main

    assert main(["eval", "--model", str(small_fixed), "--data", str(shapes["classes"]), "--json"]) == 0
    captured = capsys.readouterr()
    metrics = json.loads(captured.out)["metrics"]
    assert 0 <= metrics["top1"] <= metrics["top5"] <= 1
    assert "untrained test model" in captured.err
    assert main(["eval", "--model", str(small_fixed), "--data", str(shapes["captions"]),
                 "--template", "a photo of a {}."]) == 0
    table = capsys.readouterr().out
    assert "recall@1" in table and "recall@10" in table and "text_recall@5" in table


def test_bad_input_stops_with_a_clear_message(tmp_path, shapes, small_fixed, capsys):
    one = tmp_path / "one" / "cat"
    one.mkdir(parents=True)
    shutil.copy(next(Path(shapes["classes"]).rglob("*.png")), one / "a.png")
    with pytest.raises(TrainError, match="at least two classes"):
        train(str(small_fixed), tmp_path / "one", tmp_path / "o1", quick())
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("image,title\nx.png,hello\n")
    with pytest.raises(TrainError, match="no caption column"):
        train(str(small_fixed), bad_csv, tmp_path / "o2", quick())
    with pytest.raises(TrainError, match="no CUDA GPU|CUDA device"):
        train(str(small_fixed), shapes["classes"], tmp_path / "o3", TrainConfig(device="cuda"))
    with pytest.raises(TrainError, match="PyTorch/XLA is not installed|requirements-tpu"):
        train(str(small_fixed), shapes["classes"], tmp_path / "o4", TrainConfig(device="xla"))
    with pytest.raises(TrainError, match="nothing to resume"):
        train(str(small_fixed), shapes["classes"], tmp_path / "o5", quick(), resume=True)
    from engine.cli import main

    assert main(["train", "--model", str(small_fixed), "--data", str(tmp_path / "one"), "--mode", "lora",
                 "--out", str(tmp_path / "o6")]) == 2
    assert "at least two classes" in capsys.readouterr().err


def test_unreadable_images_are_skipped_and_counted(tmp_path, shapes, small_fixed):
    data = tmp_path / "data"
    shutil.copytree(shapes["classes"], data)
    broken = data / "red circle" / "broken.png"
    broken.write_bytes(b"not a png at all")
    result = train(str(small_fixed), data, tmp_path / "out", quick(held_out=0.0))
    assert any("broken.png" in s for s in result.skipped_images)
    assert result.steps == result.total_steps


def test_top5_is_left_out_where_it_cannot_miss(naflex_model, tmp_path):
    from conftest import random_image
    from engine.train.data import load_data
    from engine.train.evaluate import zero_shot

    for n, name in enumerate(["cat", "dog", "cat", "dog"]):
        (tmp_path / name).mkdir(exist_ok=True)
        random_image(64, 64, seed=n).save(tmp_path / name / f"{n}.jpg")
    report = zero_shot(naflex_model, load_data(tmp_path))
    assert set(report.metrics) == {"top1"} and report.num_classes == 2


def test_train_takes_a_loaded_model(tmp_path, shapes, small_fixed):
    loaded = load_model(str(small_fixed))
    result = train(loaded, shapes["classes"], tmp_path / "run", quick("probe"))
    assert result.steps == result.total_steps > 0
    assert json.loads((tmp_path / "run" / "studio_training.json").read_text())["fine_tuned_from"] == str(small_fixed)
