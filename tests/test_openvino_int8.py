"""The int8-openvino CPU path: both encoders compiled by OpenVINO in int8, calibrated on the example photos
and labels; parity with fp32 on both architectures and both towers for inputs unlike the calibration set,
the cache of quantized encoders, indexes that record the precision, and what it cannot do."""

import logging
import os

import numpy as np
import pytest

from conftest import photo_folder, random_image, warnings_of_a_users_script
from engine import load_model
from engine.errors import IndexStoreError, InspectError, ModelLoadError
from engine.index.build import build_index
from engine.index.search import search
from engine.index.store import ImageIndex
from engine.inspect.attention import attention_map, layer_attention
from engine.inspect.dense import dense_pca
from engine.inspect.maps import similarity_maps
from engine.model import openvino_int8
from engine.model.encode import encode_images, encode_texts
from engine.model.openvino_int8 import OpenVinoEncoder, cache_root, calibration_photos, calibration_texts, key_mask

pytest.importorskip("openvino", reason="pip install -r requirements-openvino.txt")
pytest.importorskip("nncf", reason="pip install -r requirements-openvino.txt")

TEXTS = ["a photo of a cat", "ein foto von einem hund im park", "一只猫坐在沙发上", "x", "a red car at night " * 6]
# Tiny random models measure about 0.9999 on random-noise images (the calibration set is real photos); a
# wrong static scale (SmoothQuant fitted to the calibration photos, an unmasked padding key) falls below.
TINY_COSINE = 0.999


@pytest.fixture(scope="module")
def openvino_models(naflex_dir, fixed_dir):
    return {"naflex": load_model(str(naflex_dir), dtype="int8-openvino"),
            "fixed": load_model(str(fixed_dir), dtype="int8-openvino")}


@pytest.fixture(params=["naflex", "fixed"])
def model_pair(request, naflex_model, fixed_model, openvino_models):
    exact = naflex_model if request.param == "naflex" else fixed_model
    return exact, openvino_models[request.param]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)


def test_both_encoders_run_in_openvino(model_pair):
    exact, quick = model_pair
    assert quick.precision == "int8-openvino" and quick.device.type == "cpu"
    vision, text = quick.model.vision_model, quick.model.text_model
    assert isinstance(vision.encoder, OpenVinoEncoder) and isinstance(text.encoder, OpenVinoEncoder)
    # the patch embedding, position grid, heads and final norms stay in torch
    assert vision.embeddings is not None and text.head.weight.dtype == exact.model.text_model.head.weight.dtype
    assert quick.num_parameters == exact.num_parameters  # the weights OpenVINO holds are counted
    assert quick.memory_bytes < 0.75 * exact.memory_bytes


def test_image_embeddings_match_fp32_on_images_unlike_the_calibration_set(model_pair):
    exact, quick = model_pair
    # random noise of several shapes in one batch: NaFlex pads the smaller ones, whose padding keys are masked
    images = [random_image(200 + 40 * i, 320 - 30 * i, seed=i) for i in range(5)]
    cosines = _cosines(encode_images(exact, images).vectors, encode_images(quick, images).vectors)
    assert cosines.min() >= TINY_COSINE
    assert cosines.max() < 1 - 1e-7  # it really ran quantized
    alone = encode_images(quick, images[:1]).vectors  # static scales: an image's vector ignores its batch
    np.testing.assert_allclose(alone[0], encode_images(quick, images).vectors[0], atol=2e-3)


def test_text_embeddings_match_fp32(model_pair):
    exact, quick = model_pair
    cosines = _cosines(encode_texts(exact, TEXTS).vectors, encode_texts(quick, TEXTS).vectors)
    assert cosines.min() >= TINY_COSINE and cosines.max() < 1 - 1e-7


def test_key_mask_from_every_form_transformers_passes():
    import torch

    embeds = torch.zeros(2, 3, 4)
    assert (key_mask(None, embeds) == 0).all() and key_mask(None, embeds).shape == (2, 1, 1, 3)
    keep = torch.tensor([[True, True, False], [True, True, True]])
    as_bool = keep[:, None, None, :].expand(2, 1, 3, 3)
    additive = torch.where(as_bool, 0.0, torch.finfo(torch.float32).min)
    for form in (as_bool, additive):
        mask = key_mask(form, embeds)
        assert mask.shape == (2, 1, 1, 3) and mask[0, 0, 0, 2] <= -1e9 and (mask[0, 0, 0, :2] == 0).all()
        assert (mask[1] == 0).all() and np.isfinite(mask).all()


def test_quantized_encoders_are_kept_and_reused(naflex_dir, openvino_models, monkeypatch):
    before = encode_images(openvino_models["naflex"], [random_image(100, 140, seed=3)]).vectors
    kept = sorted(p.name for p in cache_root().glob("*/*.xml"))
    assert kept.count("vision.xml") == 2 and kept.count("text.xml") == 2  # one folder per checkpoint

    def no_calibration(*args):
        raise AssertionError("calibrated again although the quantized encoders are kept")

    monkeypatch.setattr(openvino_int8, "_quantized_graph", no_calibration)
    again = load_model(str(naflex_dir), dtype="int8-openvino")
    np.testing.assert_array_equal(encode_images(again, [random_image(100, 140, seed=3)]).vectors, before)
    # other calibration images are another quantization: calibrated, not taken from the cache
    with pytest.raises(ModelLoadError, match="calibrated again"):
        load_model(str(naflex_dir), dtype="int8-openvino", calibration_images=calibration_photos()[:4])


def test_calibration_data_is_the_projects_examples():
    photos = calibration_photos()
    assert len(photos) == 4 * 6 and all(p.mode == "RGB" for p in photos)  # each photo, mirrored and cropped twice
    texts = calibration_texts()
    assert "a photo of eine Katze." in texts and "a photo of 一只猫." in texts  # labels, in a prompt
    assert "a dog on the beach" in texts and any("Ѐ" <= t[0] <= "ӿ" for t in texts)  # captions as they are


def test_one_calibration_whatever_the_sequence_length(naflex_dir, naflex_model, openvino_models, monkeypatch):
    """The app loads at the default length and then changes it; the CLI loads at the length asked: both get
    the same quantized encoders, and other lengths stay close to fp32."""
    monkeypatch.setattr(openvino_int8, "_quantized_graph", lambda *args: pytest.fail("calibrated again"))
    longer = load_model(str(naflex_dir), dtype="int8-openvino", max_num_patches=576)
    exact = load_model(str(naflex_dir), max_num_patches=576)
    images = [random_image(300, 420, seed=6), random_image(500, 200, seed=7)]
    assert _cosines(encode_images(exact, images).vectors, encode_images(longer, images).vectors).min() >= TINY_COSINE


def test_a_cache_that_cannot_be_written_costs_only_the_calibration(naflex_dir, naflex_model, tmp_path,
                                                                   monkeypatch, caplog):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("STUDIO_CACHE", str(blocker))
    with caplog.at_level(logging.WARNING, logger=openvino_int8.__name__):
        quick = load_model(str(naflex_dir), dtype="int8-openvino")
    assert "could not keep the int8-openvino encoders" in caplog.text
    texts = ["a photo of a cat"]
    assert _cosines(encode_texts(naflex_model, texts).vectors, encode_texts(quick, texts).vectors).min() >= TINY_COSINE


def test_not_sent_to_a_cluster(openvino_models, tmp_path):
    pytest.importorskip("ray")
    from engine.index.distributed import build_index_on_ray

    folder, index_dir = photo_folder(tmp_path, 1)
    with pytest.raises(IndexStoreError, match="--dtype int8, or without --address"):
        build_index_on_ray(openvino_models["naflex"], folder, "remote", index_dir, address="ray://nowhere:10001")


def test_index_records_the_openvino_precision(naflex_model, naflex_dir, openvino_models, tmp_path):
    quick = openvino_models["naflex"]
    folder, index_dir = photo_folder(tmp_path, 3)
    build_index(quick, folder, "quick", index_dir)
    with ImageIndex.open("quick", index_dir) as index:
        assert index.info().precision == "int8-openvino"
        assert search(index, quick, "a cat", k=2).hits
        with pytest.raises(IndexStoreError, match="--dtype int8-openvino"):
            search(index, naflex_model, "a cat")
    # torch's int8 is the same family: accepted, and the mix recorded
    random_image(100, 100, seed=9).save(folder / "new.jpg")
    assert build_index(load_model(str(naflex_dir), dtype="int8"), folder, "quick", index_dir).encoded == 1
    with ImageIndex.open("quick", index_dir) as index:
        assert index.info().precision == "mixed (int8-openvino, int8)"


def test_layer_attention_is_refused_with_a_way_out(naflex_model, openvino_models):
    quick = openvino_models["naflex"]
    image = random_image(96, 128, seed=4)
    with pytest.raises(InspectError, match="load the model in fp32 or int8"):
        layer_attention(quick, image, 256, 0, 0, 0, 0)
    # the views that need only the encoder's output still work, and agree with fp32
    pooled = attention_map(quick, image, 256).weights
    assert pooled.shape == attention_map(naflex_model, image, 256).weights.shape
    for method in ("value", "gradient"):
        quick_maps = similarity_maps(quick, image, "a cat, ein Hund", 256, method).maps
        exact_maps = similarity_maps(naflex_model, image, "a cat, ein Hund", 256, method).maps
        assert quick_maps.shape == exact_maps.shape
        assert np.corrcoef(quick_maps.ravel(), exact_maps.ravel())[0, 1] > 0.99
    assert dense_pca(quick, image, 256).colours[0].shape == dense_pca(naflex_model, image, 256).colours[0].shape


def test_a_damaged_cache_is_calibrated_again(naflex_dir, naflex_model, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("STUDIO_CACHE", str(tmp_path))
    load_model(str(naflex_dir), dtype="int8-openvino")
    (kept,) = cache_root().iterdir()
    (kept / "vision.xml").write_text("<net><truncated")
    with caplog.at_level(logging.WARNING, logger=openvino_int8.__name__):
        again = load_model(str(naflex_dir), dtype="int8-openvino")
    assert "could not be read" in caplog.text and "calibrating again" in caplog.text
    images = [random_image(120, 90, seed=8)]
    assert _cosines(encode_images(naflex_model, images).vectors, encode_images(again, images).vectors).min() >= TINY_COSINE
    assert (kept / "vision.xml").read_text().startswith("<?xml")  # kept anew


def test_the_cache_keeps_the_most_recently_used_encoders_within_its_limit(naflex_dir, tmp_path, monkeypatch):
    """Past CACHE_LIMIT_BYTES the least recently used kept encoders go; the ones just loaded always stay."""
    monkeypatch.setenv("STUDIO_CACHE", str(tmp_path))
    load_model(str(naflex_dir), dtype="int8-openvino")
    (in_use,) = cache_root().iterdir()
    in_use_bytes = sum(f.stat().st_size for f in in_use.iterdir())
    older, oldest = cache_root() / "older", cache_root() / "oldest"
    for stamp, entry in ((1000, in_use), (3000, older), (2000, oldest)):  # the one in use looks the oldest of all
        entry.mkdir(exist_ok=True)
        if entry != in_use:
            (entry / "vision.bin").write_bytes(bytes(in_use_bytes))
        os.utime(entry, (stamp, stamp))
    monkeypatch.setattr(openvino_int8, "_quantized_graph", lambda *args: pytest.fail("calibrated again"))
    monkeypatch.setattr(openvino_int8, "CACHE_LIMIT_BYTES", 2.5 * in_use_bytes)  # room for two of the three
    load_model(str(naflex_dir), dtype="int8-openvino")  # reused: now the most recently used
    assert sorted(p.name for p in cache_root().iterdir()) == sorted([in_use.name, "older"])
    monkeypatch.setattr(openvino_int8, "CACHE_LIMIT_BYTES", 0)
    load_model(str(naflex_dir), dtype="int8-openvino")
    assert [p.name for p in cache_root().iterdir()] == [in_use.name]


def test_where_int8_sums_saturate_the_weights_keep_to_seven_bits(naflex_dir, naflex_model, monkeypatch):
    """On a CPU without VNNI, OpenVINO sums pairs of u8 × s8 products in int16: 8-bit weights saturate it (image
    embeddings at cosine 0.88 of fp32 on an AVX2 CPU, tiny model), 7-bit ones do not. Run on any CPU, this
    checks the 7-bit calibration; on a CPU without VNNI the parity tests above check the choice too."""
    monkeypatch.setattr(openvino_int8, "int8_sums_saturate", lambda: True)
    assert openvino_int8._quantization_settings()["advanced_parameters"].overflow_fix.value == "enable"
    seven_bit = load_model(str(naflex_dir), dtype="int8-openvino")
    images = [random_image(200 + 40 * i, 320 - 30 * i, seed=i) for i in range(5)]
    cosines = _cosines(encode_images(naflex_model, images).vectors, encode_images(seven_bit, images).vectors)
    assert cosines.min() >= TINY_COSINE
    cosines = _cosines(encode_texts(naflex_model, TEXTS).vectors, encode_texts(seven_bit, TEXTS).vectors)
    assert cosines.min() >= TINY_COSINE


def test_the_tracers_warnings_stay_out_of_a_users_output(naflex_dir, tmp_path):
    """Tracing the encoder for OpenVINO warns of shape branches and of torch.jit.trace's deprecation:
    filtered for those alone (see test_quantize's notices test), never shown to a user's script."""
    stderr = warnings_of_a_users_script(naflex_dir, ("int8-openvino",), {"STUDIO_CACHE": str(tmp_path)})
    for notice in ("TracerWarning", "torch.jit.trace"):
        assert notice not in stderr, stderr[-2000:]
