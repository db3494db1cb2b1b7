"""The int8 CPU path: what is quantized and what stays exact, parity with fp32 on both architectures and
both towers, CPU only, indexes that record and enforce their precision, reduced-scale JPEG decoding."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import photo_folder, random_image, warnings_of_a_users_script
from engine import load_model
from engine.errors import IndexStoreError, ModelLoadError
from engine.index.build import build_index
from engine.index.search import search
from engine.index.store import ImageIndex
from engine.model.encode import decode_target, encode_images, encode_texts
from engine.model.images import DRAFT_MARGIN, open_for_model, open_image
from engine.model import openvino_int8
from engine.model.quantize import FusedQKVAttention, InPlaceGELU, fuse_query_key_value, quantized_linears

TEXTS = ["a photo of a cat", "ein foto von einem hund im park", "一只猫坐在沙发上", "x",
         "a red car at night " * 6]
# Tiny random models (64 wide, 2 layers) measure about 0.9998; B/16-size figures come from bench/encode.py.
# 0.999 is far above what a wrong int8 path gives (unscaled or misplaced weights land near 0).
TINY_COSINE = 0.999


@pytest.fixture(scope="module")
def naflex_int8(naflex_dir):
    return load_model(str(naflex_dir), dtype="int8")


@pytest.fixture(scope="module")
def fixed_int8(fixed_dir):
    return load_model(str(fixed_dir), dtype="int8")


@pytest.fixture(params=["naflex", "fixed"])
def model_pair(request, naflex_model, fixed_model, naflex_int8, fixed_int8):
    return (naflex_model, naflex_int8) if request.param == "naflex" else (fixed_model, fixed_int8)


def test_only_the_encoders_are_quantized(model_pair):
    exact, int8 = model_pair
    assert int8.precision == "int8" and exact.precision == "fp32"
    assert int8.device.type == "cpu" and int8.dtype == torch.float32
    config = int8.model.config
    per_layer = 4  # the stacked q, k and v projections, the out projection and two MLP layers
    expected = per_layer * (config.vision_config.num_hidden_layers + config.text_config.num_hidden_layers)
    quantized = quantized_linears(int8.model)
    assert len(quantized) == expected
    encoders = [int8.model.vision_model.encoder, int8.model.text_model.encoder]
    assert all(any(m is q for e in encoders for m in e.modules()) for q in quantized)
    assert all(isinstance(layer.self_attn, FusedQKVAttention) for e in encoders for layer in e.layers)
    vision, text = int8.model.vision_model, int8.model.text_model
    kept = [vision.embeddings.patch_embedding, vision.head.mlp.fc1, vision.head.mlp.fc2, vision.head.attention,
            text.head, vision.post_layernorm, text.final_layer_norm]
    assert all(not quantized_linears(module) for module in kept)
    assert type(text.head) is torch.nn.Linear and type(vision.head.mlp.fc1) is torch.nn.Linear
    # the encoders' GELU in its exact form, in place (faster on the CPU); the vision head's MLP keeps the
    # checkpoint's
    activations = {type(layer.mlp.activation_fn) for e in encoders for layer in e.layers}
    assert activations == {InPlaceGELU} and type(vision.head.mlp.activation_fn) is not InPlaceGELU
    # the same weights, stored smaller: counted, not lost
    assert int8.num_parameters == exact.num_parameters
    assert int8.memory_bytes < 0.75 * exact.memory_bytes


def test_the_int8_encoders_gelu_is_exact_and_in_place():
    values = torch.linspace(-6, 6, 1001)
    expected = torch.nn.functional.gelu(values)  # erf form
    with torch.inference_mode():
        written = values.clone()
        assert InPlaceGELU()(written).data_ptr() == written.data_ptr()  # no new buffer
    torch.testing.assert_close(written, expected, rtol=0, atol=0)
    # where autograd needs the input (it is not overwritten), the same values and gradient as torch's GELU
    leaf = values.clone().requires_grad_(True)
    InPlaceGELU()(leaf).sum().backward()
    reference = values.clone().requires_grad_(True)
    torch.nn.functional.gelu(reference).sum().backward()
    torch.testing.assert_close(leaf.grad, reference.grad, rtol=0, atol=0)


def _attention_inputs(attention: torch.nn.Module, padded: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states (2, 12, width), an additive mask hiding the last `padded` keys of the first item)."""
    generator = torch.Generator().manual_seed(padded)
    hidden = torch.randn(2, 12, attention.out_proj.in_features, generator=generator)
    mask = torch.zeros(2, 1, 12, 12)
    mask[0, :, :, 12 - padded:] = torch.finfo(torch.float32).min
    return hidden, mask


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_fused_attention_is_transformers_attention(naflex_dir, fixed_dir, implementation):
    """Both architectures' towers: the stacked projections give transformers' outputs and attention weights,
    and quantized they give the three separate int8 projections' outputs to the bit."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    int8_of = lambda module: quantize_dynamic(copy.deepcopy(module), {torch.nn.Linear: per_channel_dynamic_qconfig},
                                               dtype=torch.qint8)
    for directory in (naflex_dir, fixed_dir):
        model = load_model(str(directory), attn_implementation=implementation).model
        for tower in (model.vision_model, model.text_model):
            original = tower.encoder.layers[-1].self_attn
            fused = copy.deepcopy(original)
            fuse_query_key_value(fused)
            assert isinstance(fused, type(original))  # transformers still records its attentions
            hidden, mask = _attention_inputs(original, padded=5)
            with torch.inference_mode():
                expected, expected_weights = original(hidden, mask)
                found, weights = fused(hidden, mask)
                torch.testing.assert_close(found, expected, rtol=1e-5, atol=1e-6)
                if implementation == "eager":
                    torch.testing.assert_close(weights, expected_weights, rtol=1e-5, atol=1e-6)
                    assert weights[0, :, :, -5:].max() < 1e-6  # the mask reached it
                assert torch.equal(int8_of(fused)(hidden, mask)[0], int8_of(original)(hidden, mask)[0])


def test_an_int8_model_pickles_also_into_a_fresh_process(naflex_int8, tmp_path):
    """The fused attention classes are made at run time; pickle (torch.save, worker processes) finds them by
    name, also where no model was quantized yet."""
    import pickle
    import subprocess
    import sys

    texts = encode_texts(naflex_int8, TEXTS).vectors
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(naflex_int8.model))
    script = ("import pickle, sys, torch; model = pickle.load(open(sys.argv[1], 'rb')); "
              "print(type(model.text_model.encoder.layers[0].self_attn).__name__)")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "model.pkl")], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().startswith("FusedQKV")
    copied = copy.copy(naflex_int8)
    copied.model = pickle.loads(pickle.dumps(naflex_int8.model))
    # unpickled weights are packed again for torch's current quantized engine, whose rounding differs a little
    assert (encode_texts(copied, TEXTS).vectors * texts).sum(axis=1).min() > 0.9999


def test_torchs_quantization_notices_stay_out_of_a_users_output(naflex_dir):
    """torch's notices that torch.ao is deprecated, at every int8 load, are filtered for their messages alone
    (a warnings.catch_warnings around each load is not thread-safe) and never reach a user's script."""
    stderr = warnings_of_a_users_script(naflex_dir, ("int8",), {})
    for notice in ("torch.ao.quantization is deprecated", "torch.quantize_per_channel"):
        assert notice not in stderr, stderr[-2000:]


def test_int8_image_embeddings_match_fp32(model_pair, image_files):
    exact, int8 = model_pair
    images = [random_image(200 + 40 * i, 320 - 30 * i, seed=i) for i in range(5)]
    reference = encode_images(exact, images).vectors
    quick = encode_images(int8, images).vectors
    cosines = (reference * quick).sum(axis=1)
    assert cosines.min() >= TINY_COSINE
    assert cosines.max() < 1 - 1e-7  # it really ran in int8
    np.testing.assert_allclose(np.linalg.norm(quick, axis=1), 1.0, atol=1e-5)


def test_int8_text_embeddings_match_fp32(model_pair):
    exact, int8 = model_pair
    reference = encode_texts(exact, TEXTS).vectors
    quick = encode_texts(int8, TEXTS).vectors
    cosines = (reference * quick).sum(axis=1)
    assert cosines.min() >= TINY_COSINE
    assert cosines.max() < 1 - 1e-7


def test_int8_is_cpu_only(naflex_dir):
    with pytest.raises(ModelLoadError, match="CPU only.*device cpu"):
        load_model(str(naflex_dir), device="cuda", dtype="int8")
    assert load_model(str(naflex_dir), device="auto", dtype="INT8").device.type == "cpu"


def test_precision_names(naflex_dir, naflex_model):
    assert naflex_model.precision == "fp32"
    assert load_model(str(naflex_dir), dtype="bf16").precision == "bf16"


def test_the_app_started_with_int8_keeps_int8(tmp_path):
    """app.py --dtype int8: its test model is int8, and the Models tab's loads start at int8, not auto."""
    import gradio as gr

    from app.studio import Studio
    from app.ui import build_app

    studio = Studio(index_dir=tmp_path, allowed_roots=[tmp_path], dtype="int8")
    assert studio.load_test_model().precision == "int8"
    assert Studio(index_dir=tmp_path, allowed_roots=[tmp_path]).load_test_model().precision == "fp32"
    [dtype] = [block for block in build_app(studio).blocks.values()
               if isinstance(block, gr.Dropdown) and str(block.label).startswith("Dtype")]
    assert dtype.value == "int8"


def test_index_records_and_enforces_precision(naflex_model, naflex_int8, tmp_path):
    folder, index_dir = photo_folder(tmp_path, 4)
    build_index(naflex_model, folder, "exact", index_dir)
    with ImageIndex.open("exact", index_dir) as index:
        assert index.info().precision == "fp32"
        assert search(index, naflex_model, "a cat", k=2).hits
        with pytest.raises(IndexStoreError, match=r"fp32 embeddings.*runs in int8.*--dtype fp32"):
            search(index, naflex_int8, "a cat", k=2)
    random_image(100, 100, seed=9).save(folder / "new.jpg")
    with pytest.raises(IndexStoreError, match="mixed_precision=True"):
        build_index(naflex_int8, folder, "exact", index_dir)
    # refused without touching anything, and the lock released: the fp32 model still extends it
    assert build_index(naflex_model, folder, "exact", index_dir).encoded == 1
    random_image(110, 100, seed=10).save(folder / "newer.jpg")
    assert build_index(naflex_int8, folder, "exact", index_dir, mixed_precision=True).encoded == 1
    with ImageIndex.open("exact", index_dir) as index:
        assert index.info().precision == "mixed (fp32, int8)"
    for model in (naflex_model, naflex_int8):  # once mixed, every use is a knowing one
        with ImageIndex.open("exact", index_dir) as index, pytest.raises(IndexStoreError, match="mixed"):
            search(index, model, "a cat")
        with ImageIndex.open("exact", index_dir, mixed_precision=True) as index:
            assert search(index, model, "a cat", k=2).hits

    build_index(naflex_int8, folder, "quick", index_dir)
    with ImageIndex.open("quick", index_dir) as index:
        assert index.info().precision == "int8"
        assert search(index, naflex_int8, "a cat", k=2).hits
        with pytest.raises(IndexStoreError, match="--dtype int8"):
            search(index, naflex_model, "a cat")


def test_index_without_precision_counts_as_fp32(naflex_model, naflex_int8, tmp_path):
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    folder.mkdir()
    random_image(90, 120, seed=1).save(folder / "p.jpg")
    build_index(naflex_model, folder, "old", index_dir)
    with ImageIndex.open("old", index_dir, writable=True) as index:  # as written before precisions were kept
        index.catalog.db.execute("DELETE FROM meta WHERE key='precision'")
        index.catalog.db.commit()
    with ImageIndex.open("old", index_dir) as index:
        assert "precision" not in index.meta and index.info().precision == "fp32"
        assert search(index, naflex_model, "a cat", k=1).hits
        with pytest.raises(IndexStoreError, match="fp32 embeddings"):
            search(index, naflex_int8, "a cat")


def _jpeg_with_orientation(path, height, width, orientation):
    image = random_image(height, width, seed=5)
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, quality=92, exif=exif)


@pytest.mark.parametrize("orientation", [1, 6])
def test_reduced_jpeg_decoding(naflex_model, naflex_int8, tmp_path, orientation):
    path = tmp_path / f"big_{orientation}.jpg"
    _jpeg_with_orientation(path, 1200, 2000, orientation)  # stored landscape; 6 shows it as portrait
    full = open_image(path)
    target = naflex_int8.image_preprocessor.target_size
    reduced, full_size = open_for_model(path, target=target)
    assert full_size == (full.height, full.width)
    assert (full.height > full.width) == (orientation == 6) == (reduced.height > reduced.width)
    target_h, target_w = target(*full_size)
    assert reduced.width < full.width and reduced.height >= DRAFT_MARGIN * target_h
    assert reduced.width >= DRAFT_MARGIN * target_w
    # the same grid, and the full size recorded, whatever the decoding scale
    assert naflex_int8.image_preprocessor(reduced, full_size).grid == naflex_model.image_preprocessor(full).grid
    # the fp32 reference path never decodes at reduced scale; the reduced path agrees closely with it
    assert decode_target(naflex_model) is None and decode_target(naflex_int8) is not None
    exact = encode_images(naflex_model, [path]).vectors
    assert np.allclose(exact, encode_images(naflex_model, [full]).vectors, atol=1e-6)
    reduced_exact = naflex_model.image_preprocessor(reduced, full_size)
    from engine.model.encode import embed_pixel_batch

    assert float((embed_pixel_batch(naflex_model, [reduced_exact]) * exact).sum()) >= 0.999
    assert float((encode_images(naflex_int8, [path]).vectors * exact).sum()) >= TINY_COSINE - 0.001


def test_float_precisions_are_one_family(naflex_model, naflex_dir, tmp_path):
    """An index built in fp32 is searched by the same weights in bf16 (a GPU-built index on a CPU, or the
    reverse) without being refused: only int8 against float is."""
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    folder.mkdir()
    random_image(64, 80, seed=5).save(folder / "a.png")
    build_index(naflex_model, folder, "float", index_dir)
    bf16 = load_model(str(naflex_dir), dtype="bf16")
    with ImageIndex.open("float", index_dir) as index:
        index.check_model(bf16)  # no IndexStoreError


def test_refused_without_openvino_or_off_the_cpu(naflex_dir, monkeypatch):
    with pytest.raises(ModelLoadError, match="CPU only.*device cpu"):
        load_model(str(naflex_dir), device="cuda", dtype="int8-openvino")
    with pytest.raises(ModelLoadError, match="neither compile=True"):
        load_model(str(naflex_dir), dtype="int8-openvino", compile=True)
    with pytest.raises(ModelLoadError, match="attn_implementation sdpa or eager, not 'flex_attention'"):
        load_model(str(naflex_dir), dtype="int8-openvino", attn_implementation="flex_attention")
    monkeypatch.setattr(openvino_int8, "openvino_available", lambda: False)
    with pytest.raises(ModelLoadError, match="requirements-openvino.txt.*dtype int8"):
        load_model(str(naflex_dir), dtype="int8-openvino")
