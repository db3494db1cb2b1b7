"""Engine embeddings equal transformers' own, batch by batch, and bad images never lose good ones."""

import shutil

import numpy as np
import pytest
import torch
from transformers import AutoImageProcessor

from conftest import random_image
from engine import load_model
from engine.model.encode import embed_pixel_batch, encode_images, encode_texts, ordered_parallel_map
from engine.model.testmodel import make_test_model
from test_text import independent_reference_ids


def transformers_image_embeddings(model, images):
    processor = AutoImageProcessor.from_pretrained(str(model.directory))
    inputs = processor(images=images, return_tensors="pt")
    with torch.no_grad():
        output = model.model.get_image_features(**inputs).pooler_output
    return torch.nn.functional.normalize(output, dim=-1).numpy()


def test_image_embeddings_equal_transformers(recipe_model, image_files):
    from PIL import Image

    engine = encode_images(recipe_model, image_files, batch_size=4)
    assert engine.sources == [str(p) for p in image_files] and not engine.failures
    reference = transformers_image_embeddings(recipe_model, [Image.open(p).convert("RGB") for p in image_files])
    assert (engine.vectors * reference).sum(axis=1).min() >= 0.99999
    assert engine.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(engine.vectors, axis=1), 1.0, atol=1e-5)


def test_batch_size_does_not_change_embeddings(naflex_model, image_files):
    one = encode_images(naflex_model, image_files, batch_size=1).vectors
    many = encode_images(naflex_model, image_files, batch_size=6).vectors
    np.testing.assert_allclose(one, many, atol=1e-5)


def test_bad_image_in_batch_keeps_the_others(naflex_model, image_files, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    inputs = [image_files[0], broken, image_files[1], tmp_path / "gone.png"]
    calls = []
    result = encode_images(naflex_model, inputs, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert result.sources == [str(image_files[0]), str(image_files[1])]
    assert result.input_positions == [0, 2]
    assert [f.source for f in result.failures] == [str(broken), str(tmp_path / "gone.png")]
    assert "skipped" in str(result.failures[0])
    alone = encode_images(naflex_model, [image_files[1]]).vectors[0]
    np.testing.assert_allclose(result.vectors[1], alone, atol=1e-5)
    assert calls[-1] == (4, 4)


def test_grids_reported(naflex_model, image_files):
    result = encode_images(naflex_model, image_files[:2])
    assert [(g.original_height, g.original_width) for g in result.grids] == [(224, 224), (480, 640)]
    assert all(g.num_patches <= 256 for g in result.grids)


@pytest.mark.slow
def test_full_size_b16_configuration(tmp_path_factory):
    """The real B/16 NaFlex configuration (768 wide, 12 layers, 256k vocabulary), random weights."""
    directory = make_test_model(tmp_path_factory.mktemp("b16"), arch="naflex", size="base", seed=3)
    model = load_model(str(directory))
    assert model.embed_dim == 768
    assert model.model.config.text_config.vocab_size == 256_000
    assert 360e6 < model.num_parameters < 390e6  # about 375M, as the released B/16
    images = [random_image(480, 640, 7), random_image(300, 300, 8)]
    engine = encode_images(model, images).vectors
    assert (engine * transformers_image_embeddings(model, images)).sum(axis=1).min() >= 0.99999
    texts = ["a photo of a cat", "ein foto von einem hund"]
    ids = torch.from_numpy(independent_reference_ids(directory, texts))
    with torch.no_grad():
        direct = torch.nn.functional.normalize(model.model.get_text_features(input_ids=ids).pooler_output, dim=-1)
    assert (encode_texts(model, texts).vectors * direct.numpy()).sum(axis=1).min() >= 0.99999


@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile on the CPU needs a C compiler")
def test_compiled_image_encodes_equal_eager_ones(fixed_dir, image_files):
    """load_model(compile=True): the same vectors, through a torch.compile graph."""
    from torch._dynamo.utils import counters

    eager = load_model(str(fixed_dir), device="cpu", dtype="fp32")
    compiled = load_model(str(fixed_dir), device="cpu", dtype="fp32", compile=True)
    graphs_before = counters["stats"]["unique_graphs"]
    expected = encode_images(eager, image_files[:3], batch_size=3).vectors
    found = encode_images(compiled, image_files[:3], batch_size=3).vectors
    assert counters["stats"]["unique_graphs"] > graphs_before
    np.testing.assert_allclose(found, expected, atol=1e-5)


def test_naflex_positions_are_resized_once_per_grid_with_transformers_values(naflex_model, monkeypatch):
    """transformers resizes the learned position grid once per image; the engine once per distinct grid in a
    batch (engine/model/positions.py), which must give the same values."""
    import torch.nn.functional as F

    from engine.model import positions

    embeddings = naflex_model.model.vision_model.embeddings
    side = embeddings.position_embedding_size
    learned = embeddings.position_embedding.weight.detach().reshape(side, side, -1)
    length = naflex_model.image_preprocessor.max_num_patches
    shapes = torch.tensor([[4, 6], [6, 4], [4, 6], [1, 1], [4, 6], [8, 8]])
    assert 8 * 8 <= length
    ours = positions.resize_once_per_grid(learned, shapes, length)
    theirs = type(embeddings).resize_positional_embeddings(learned, shapes, length)
    assert ours.shape == (6, length, learned.shape[-1]) and torch.equal(ours, theirs)
    none = torch.zeros((0, 2), dtype=torch.long)
    assert positions.resize_once_per_grid(learned, none, length).shape == (0, length, learned.shape[-1])

    calls = []
    monkeypatch.setattr(positions, "F", type("Counting", (), {"interpolate": staticmethod(
        lambda *args, **kwargs: calls.append(kwargs["size"]) or F.interpolate(*args, **kwargs))}))
    wide, tall = random_image(60, 200, seed=1), random_image(200, 60, seed=2)
    prepared = [naflex_model.image_preprocessor(image) for image in (wide, tall, wide, wide, tall)]
    embed_pixel_batch(naflex_model, prepared)
    assert sorted(calls) == sorted({(p.grid.rows, p.grid.cols) for p in prepared}) and len(calls) == 2


@pytest.mark.parametrize("chunk", [1, 7, 16])
def test_parallel_map_keeps_the_order_in_chunks_with_its_lookahead(chunk):
    import threading
    import time

    started, lock = [], threading.Lock()

    def slow_for_odd_items(item):
        with lock:
            started.append(item)
        time.sleep(0.002 * (item % 2))  # later items finish first
        return item * 10

    results = []
    for result in ordered_parallel_map(slow_for_odd_items, list(range(101)), workers=3, lookahead=20, chunk=chunk):
        with lock:  # nothing more than the lookahead (and the chunk just submitted) under way
            assert len(started) <= len(results) + 20 + chunk
        results.append(result)
    assert results == [item * 10 for item in range(101)]


@pytest.mark.parametrize("chunk", [1, 16])
def test_parallel_map_gives_the_results_before_an_error_then_raises_it(chunk):
    def fails_at_37(item):
        if item == 37:
            raise OSError("disk gone")
        return item

    results = []
    with pytest.raises(OSError, match="disk gone"):
        for result in ordered_parallel_map(fails_at_37, list(range(100)), workers=2, lookahead=32, chunk=chunk):
            results.append(result)
    assert results == list(range(37))  # the caller has each result before the error reaches it
