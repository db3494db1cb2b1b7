"""Registry, loading, offline behaviour and the test-model generator."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from engine import CHECKPOINTS, ModelLoadError, find_checkpoint, load_model
from engine.model.loading import pick_device, pick_dtype
from engine.model.testmodel import make_test_model


def test_registry_has_all_17_checkpoints():
    assert len(CHECKPOINTS) == 17 and len({c.hub_id for c in CHECKPOINTS}) == 17
    assert sum(c.arch == "naflex" for c in CHECKPOINTS) == 2
    assert all((c.resolution is None) == (c.arch == "naflex") for c in CHECKPOINTS)
    b16 = find_checkpoint("google/siglip2-base-patch16-224")
    assert (b16.imagenet_zero_shot, b16.coco_text_to_image, b16.coco_image_to_text) == (78.2, 52.1, 68.9)
    assert find_checkpoint("someone/else") is None


def test_loads_right_class_and_flags_untrained(naflex_model, fixed_model):
    assert type(naflex_model.model).__name__ == "Siglip2Model" and naflex_model.arch == "naflex"
    assert type(fixed_model.model).__name__ == "SiglipModel" and fixed_model.arch == "fixed"
    assert naflex_model.untrained and fixed_model.untrained
    assert naflex_model.image_setting == (256,) and fixed_model.image_setting == (224, 224)
    assert naflex_model.model.config._attn_implementation == "sdpa"
    assert abs(naflex_model.logit_scale - 10.0) < 1e-4 and naflex_model.logit_bias == -10.0


def test_device_and_dtype_choice():
    device = pick_device()
    assert device.type == ("cuda" if torch.cuda.is_available() else device.type)
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cuda")) == torch.bfloat16
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        pick_dtype(torch.device("cpu"), "int3")


def test_dtype_override_loads_bf16(naflex_dir):
    model = load_model(str(naflex_dir), dtype="bf16")
    assert next(model.model.parameters()).dtype == torch.bfloat16


@pytest.mark.parametrize("offline_env", [{"HF_HUB_OFFLINE": "1"}, {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}])
def test_missing_model_fails_fast_with_a_clear_message(tmp_path, monkeypatch, offline_env):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    for key, value in offline_env.items():
        monkeypatch.setenv(key, value)
    start = time.monotonic()
    with pytest.raises(ModelLoadError) as caught:
        load_model("google/siglip2-base-patch16-224")
    assert time.monotonic() - start < 15
    message = str(caught.value)
    assert "google/siglip2-base-patch16-224" in message and "folder" in message
    assert "released" not in message  # a released id is not flagged
    with pytest.raises(ModelLoadError) as misspelled:
        load_model("google/siglip2-base-patch16-nafelx")
    assert "not one of the 17 released SigLIP 2 checkpoints: did you mean 'google/siglip2-base-patch16-naflex'?" \
        in str(misspelled.value)
    with pytest.raises(ModelLoadError) as elsewhere:  # someone's fine-tuned copy is not taken for a misspelling
        load_model("acme/siglip2-base-patch16-224-ft")
    assert "released" not in str(elsewhere.value)


def test_bad_local_folders(tmp_path, naflex_dir):
    with pytest.raises(ModelLoadError, match="no such model folder"):
        load_model(str(tmp_path / "nowhere"))
    pickled = tmp_path / "pickled"
    shutil.copytree(naflex_dir, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(str(pickled))
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="not a SigLIP"):
        load_model(str(other))


def test_generator_is_deterministic_and_hub_shaped(tmp_path):
    def digest(directory):
        return hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()

    first = make_test_model(tmp_path / "a", arch="fixed", seed=5)
    again = make_test_model(tmp_path / "b", arch="fixed", seed=5)
    other = make_test_model(tmp_path / "c", arch="fixed", seed=6)
    assert digest(first) == digest(again) != digest(other)
    assert (first / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json"):
        assert (first / name).exists()
    assert json.loads((first / "config.json").read_text())["model_type"] == "siglip"
    from transformers import AutoModel, AutoProcessor

    assert type(AutoModel.from_pretrained(str(first))).__name__ == "SiglipModel"
    AutoProcessor.from_pretrained(str(first))  # transformers reads the layout as it is


@pytest.mark.parametrize("size, patch_size, image_size, vision_millions, text_millions",
                         [("base", 16, 224, 92.9, 282.3), ("large", 16, 256, 316.0, 565.6),
                          ("so400m", 14, 224, 427.7, 707.8)])
def test_generated_sizes_have_the_released_shapes(size, patch_size, image_size, vision_millions, text_millions):
    """B/16 224, L/16 256 and So400m/14 224 as released (375M, 882M, 1.14B parameters), counted without
    drawing them (meta device)."""
    from transformers import AutoModel

    from engine.model.testmodel import SIZES, _model_config

    config = _model_config("fixed", SIZES[size], SIZES[size].vocab_size, image_size, patch_size, 256)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    millions = [sum(p.numel() for p in tower.parameters()) / 1e6 for tower in (model.vision_model, model.text_model)]
    assert millions == pytest.approx([vision_millions, text_millions], abs=0.05)


@pytest.mark.parametrize("arch", ["fixed", "naflex"])
def test_loading_prints_no_warning_about_transformers_own_defaults(arch, fixed_dir, naflex_dir):
    """transformers checks its default SiglipTextConfig (vocabulary 32000, bos 49406) whenever it prints a
    config while loading, and warns of "unexpected behavior": nothing about the checkpoint, so not shown.
    In a fresh interpreter: the warning is printed once per process."""
    directory = fixed_dir if arch == "fixed" else naflex_dir
    script = f"from engine import load_model; load_model({str(directory)!r})"
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1], env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert "Model config:" not in loaded.stderr and "token_id must be" not in loaded.stderr, loaded.stderr[-2000:]
