"""Inspection views: properties that hold for any weights, on both architectures."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from conftest import random_image
from engine import StudioError
from engine.inspect import render
from engine.inspect.attention import attention_map, encoder_shape, layer_attention
from engine.inspect.dense import dense_pca, patch_similarity
from engine.inspect.grid import patch_grid
from engine.inspect.head import (head_value_projections, pooled_embedding, pooling_head, probe_attention,
                                 value_path_outputs)
from engine.inspect.maps import MAX_QUERIES, gradient_maps, similarity_maps, value_maps
from engine.inspect.trace import ImageTrace
from engine.model.encode import encode_images, encode_texts
from engine.model.features import patch_features

WIDE = random_image(170, 220, seed=41)  # (h, w): NaFlex 256 → 14 × 18 patches, 4 padding
TALL = random_image(300, 90, seed=42)


def trace_of(model, image, features) -> ImageTrace:
    return ImageTrace("test", image, model.image_preprocessor, features)


def test_naflex_grid_counts_and_padding(naflex_model):
    view = patch_grid(naflex_model, random_image(2200, 1700, seed=1), 256)
    assert view.info() == {"rows": 18, "cols": 14, "real_patches": 252, "padding_patches": 4,
                           "width": 224, "height": 288}
    assert view.squashed.rows == view.squashed.cols == 16 and view.positions.stretched.shape == (18, 14, 3)
    square = patch_grid(naflex_model, random_image(224, 224, seed=1), 256)
    assert square.grid.num_padding == 0
    # a 16 × 16 grid is the learned grid itself: stretching it changes nothing
    np.testing.assert_allclose(square.positions.stretched, square.positions.learned, atol=1e-5)
    assert patch_grid(naflex_model, random_image(1, 4000, seed=1), 256).info()["rows"] == 1


def test_stretched_positions_are_what_the_model_adds(naflex_model):
    view = patch_grid(naflex_model, WIDE, 256)
    batch = naflex_model.image_preprocessor.collate([naflex_model.image_preprocessor(WIDE)])
    embeddings = naflex_model.model.vision_model.embeddings
    pixels = batch.model_inputs(naflex_model.device, naflex_model.dtype)["pixel_values"]
    with torch.inference_mode():
        both = embeddings(pixels, batch.spatial_shapes)[0]
        patches = embeddings.patch_embedding(pixels)[0]
    added = (both - patches)[: view.grid.num_patches].numpy().reshape(view.grid.rows, view.grid.cols, -1)
    np.testing.assert_allclose(view.positions.stretched_embeddings, added, atol=1e-5)


def test_fixed_grid_ignores_sequence_length(fixed_model):
    view = patch_grid(fixed_model, WIDE, 1024)
    assert (view.grid.rows, view.grid.cols, view.grid.num_padding) == (14, 14, 0) and view.squashed == view.grid


@pytest.mark.parametrize("image", [WIDE, TALL, random_image(1, 1, seed=3), random_image(1, 4000, seed=4)],
                         ids=["wide", "tall", "1x1", "1x4000"])
def test_every_view_is_on_the_real_grid(any_model, image):
    grid = patch_grid(any_model, image, 256).grid
    shape = (grid.rows, grid.cols)
    for method in ("value", "gradient"):
        assert similarity_maps(any_model, image, "a cat\nein Hund", 256, method).maps.shape == (2, *shape)
    layers, heads = encoder_shape(any_model)
    assert attention_map(any_model, image, 256).weights.shape == (heads, *shape)
    assert layer_attention(any_model, image, 256, layers - 1, heads - 1, grid.rows - 1, 0).weights.shape == shape
    assert dense_pca(any_model, image, 256).colours[0].shape == (*shape, 3)
    similar = patch_similarity(any_model, image, 0, grid.cols - 1, WIDE, 256)
    assert similar.similarity.shape == shape and similar.similarity[0, grid.cols - 1] == pytest.approx(1, abs=1e-5)


def test_probe_attention_sums_to_one_and_ignores_padding(naflex_model):
    prepared = naflex_model.image_preprocessor(WIDE)
    batch = naflex_model.image_preprocessor.collate([prepared])
    with torch.inference_mode():
        padded = naflex_model.model.vision_model(**batch.model_inputs(naflex_model.device, naflex_model.dtype))
    tokens = padded.last_hidden_state[0]  # (256, dim), the last 4 rows padding
    real = prepared.grid.num_patches
    padding = torch.arange(len(tokens)) >= real
    weights = probe_attention(naflex_model, tokens, padding)
    assert real < len(tokens) and torch.all(weights[:, real:] == 0)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(len(weights)))
    torch.testing.assert_close(weights[:, :real], probe_attention(naflex_model, tokens[:real]), atol=1e-6, rtol=0)
    # and the model's own pooled output is what the head gives on the real patches alone
    torch.testing.assert_close(pooled_embedding(naflex_model, tokens[:real]), padded.pooler_output[0], atol=1e-5,
                               rtol=1e-5)


def test_head_output_is_the_attention_weighted_sum_of_per_patch_projections(any_model):
    tokens = patch_features(any_model, [any_model.image_preprocessor(WIDE)])[0].tokens
    head = pooling_head(any_model)
    with torch.inference_mode():
        attended = head.attention(head.probe, tokens[None], tokens[None])[0][0, 0]
    weights = probe_attention(any_model, tokens)  # (heads, n)
    projections = head_value_projections(any_model, tokens)  # (heads, n, dim)
    rebuilt = torch.einsum("hn,hnd->d", weights, projections) + head.attention.out_proj.bias
    torch.testing.assert_close(rebuilt, attended, atol=1e-5, rtol=1e-4)
    # the value path of one patch is exactly the head's output when that patch is all it sees
    torch.testing.assert_close(value_path_outputs(any_model, tokens[3:4])[0],
                               pooled_embedding(any_model, tokens[3:4]).detach(), atol=1e-5, rtol=1e-4)


@pytest.fixture
def odd_score(any_model):
    """The model with t and b unlike every generated checkpoint's (log 10, -10), restored afterwards."""
    scale, bias = any_model.model.logit_scale.detach().clone(), any_model.model.logit_bias.detach().clone()
    with torch.no_grad():
        any_model.model.logit_scale.fill_(1.7)
        any_model.model.logit_bias.fill_(-3.3)
    yield any_model
    with torch.no_grad():
        any_model.model.logit_scale.copy_(scale)
        any_model.model.logit_bias.copy_(bias)


def test_value_map_is_in_the_models_logits(odd_score):
    any_model = odd_score
    maps = similarity_maps(any_model, WIDE, ["a red car"], 256, "value")
    text = encode_texts(any_model, ["a red car"]).vectors[0]
    outputs = torch.nn.functional.normalize(value_path_outputs(any_model, maps.trace.features.tokens), dim=-1)
    cosine = (outputs.numpy() @ text).reshape(maps.trace.shape)
    np.testing.assert_allclose(maps.maps[0], any_model.logit_scale * cosine + any_model.logit_bias, atol=1e-4)
    image = encode_images(any_model, [WIDE]).vectors[0]
    assert maps.image_logits[0] == pytest.approx(any_model.logit_scale * float(image @ text) + any_model.logit_bias,
                                                 abs=1e-3)


def test_gradient_map_matches_finite_differences(naflex_model):
    features = patch_features(naflex_model, [naflex_model.image_preprocessor(TALL)])[0]
    trace = trace_of(naflex_model, TALL, features)
    text = encode_texts(naflex_model, ["a mountain lake"]).vectors
    maps = gradient_maps(naflex_model, trace, text)[0]

    head64 = copy.deepcopy(pooling_head(naflex_model)).double()  # finite differences need float64
    text64 = torch.from_numpy(text[0]).double()

    def logit(tokens: torch.Tensor) -> float:
        embedding = torch.nn.functional.normalize(head64(tokens[None])[0], dim=-1)
        return float(naflex_model.logit_scale * (text64 @ embedding) + naflex_model.logit_bias)

    step = 1e-5
    tokens = features.tokens.double()
    for patch in (0, 7, len(tokens) - 1):  # scaling token i by (1 ± step) probes Σ_d ∂logit/∂x[i,d] · x[i,d]
        with torch.no_grad():
            up, down = tokens.clone(), tokens.clone()
            up[patch] *= 1 + step
            down[patch] *= 1 - step
            estimate = (logit(up) - logit(down)) / (2 * step)
        assert maps[patch] == pytest.approx(estimate, rel=1e-3, abs=1e-6)


def test_maps_and_colours_unchanged_inside_a_padded_batch(naflex_model):
    preprocess = naflex_model.image_preprocessor
    alone = patch_features(naflex_model, [preprocess(WIDE)])[0]
    batched = patch_features(naflex_model, [preprocess(TALL), preprocess(random_image(40, 500, seed=9)),
                                            preprocess(WIDE)])[2]
    torch.testing.assert_close(batched.tokens, alone.tokens, atol=1e-4, rtol=1e-4)
    text = encode_texts(naflex_model, ["a dog"]).vectors
    np.testing.assert_allclose(value_maps(naflex_model, trace_of(naflex_model, WIDE, batched), text),
                               value_maps(naflex_model, trace_of(naflex_model, WIDE, alone), text), atol=1e-3)
    colours = dense_pca(naflex_model, [WIDE], 256, joint=False).colours[0]
    joint = dense_pca(naflex_model, [TALL, WIDE], 256, joint=False).colours[1]
    np.testing.assert_allclose(joint, colours, atol=1e-4)


@pytest.mark.parametrize("dtype", [None, "int8"])
def test_layer_attention_equals_eager_attention(naflex_dir, dtype):
    from engine import load_model

    eager = load_model(str(naflex_dir), dtype=dtype, attn_implementation="eager")
    batch = eager.image_preprocessor.collate([eager.image_preprocessor(WIDE)])
    real = batch.grids[0].num_patches
    with torch.inference_mode():
        output = eager.model.vision_model(**batch.model_inputs(eager.device, eager.dtype), output_attentions=True)
    layers, heads = encoder_shape(eager)
    for layer, head, row, col in [(0, 0, 0, 0), (layers - 1, heads - 1, 5, 9)]:
        found = layer_attention(eager, WIDE, 256, layer, head, row, col)
        query = row * found.trace.shape[1] + col
        reference = output.attentions[layer][0, head, query, :real].numpy()
        np.testing.assert_allclose(found.weights.reshape(-1), reference, atol=1e-5)
        assert output.attentions[layer][0, head, query, real:].abs().max() < 1e-6


def test_joint_pca_shares_one_colour_scale(naflex_model):
    from sklearn.decomposition import PCA

    joint = dense_pca(naflex_model, [WIDE, TALL], 256)
    stacked = np.concatenate([c.reshape(-1, 3) for c in joint.colours])
    tokens = np.concatenate([t.features.tokens.numpy() for t in joint.traces])
    first = PCA(n_components=1).fit_transform(tokens)[:, 0]  # one fit over both images' patches
    assert abs(np.corrcoef(stacked[:, 0], first)[0, 1]) > 0.9999
    alone = dense_pca(naflex_model, WIDE, 256, joint=False).colours[0]
    assert not np.allclose(joint.colours[0], alone, atol=1e-3)
    np.testing.assert_allclose(stacked.min(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(stacked.max(axis=0), 1, atol=1e-6)
    assert joint.explained_variance[0] >= joint.explained_variance[1] >= joint.explained_variance[2] > 0


@pytest.mark.parametrize("call, message", [
    (lambda m: similarity_maps(m, WIDE, "  \n ", 256), "No query"),
    (lambda m: similarity_maps(m, WIDE, "\n".join(f"q{i}" for i in range(MAX_QUERIES + 1)), 256), "more than"),
    (lambda m: similarity_maps(m, WIDE, "a cat", 256, "saliency"), "choose value or gradient"),
    (lambda m: attention_map(m, WIDE, 5), "between 16 and 4096"),
    (lambda m: attention_map(m, WIDE, "many"), "not a whole number"),
    (lambda m: patch_similarity(m, WIDE, 14, 0), "outside this image's 14×18 grid"),
    (lambda m: layer_attention(m, WIDE, 256, 0, 0, 0, 18), "outside this image's 14×18 grid"),
    (lambda m: layer_attention(m, WIDE, 256, 99, 0), "Layer 99 does not exist"),
    (lambda m: layer_attention(m, WIDE, 256, 0, -1), "Head -1 does not exist"),
    (lambda m: patch_grid(m, "/no/such/photo.jpg", 256), "photo.jpg"),
])
def test_bad_input_gives_a_clear_message(naflex_model, call, message):
    with pytest.raises(StudioError, match=message):
        call(naflex_model)


def test_click_maps_back_to_the_patch(naflex_model):
    grid = patch_grid(naflex_model, WIDE, 256).grid
    width, height = render.panel_size(grid)
    assert render.patch_at(grid, 0, 0) == (0, 0)
    assert render.patch_at(grid, width - 1, height - 1) == (grid.rows - 1, grid.cols - 1)
    assert render.patch_at(grid, width / grid.cols * 5.5, height / grid.rows * 2.5) == (2, 5)
    assert render.patch_at(grid, 5, height + 3) is None  # the colour bar below the panel


def test_cli_writes_pictures_and_arrays(naflex_dir, tmp_path):
    import subprocess
    import sys

    image = tmp_path / "wide photo.png"
    WIDE.save(image)
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "engine", "inspect", "similarity", str(image), "--query", "a cat",
                           "--query", "ein Hund", "--model", str(naflex_dir), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert np.load(out / "wide photo-value.npy").shape == (2, 14, 18)
    assert (out / "wide photo-value.png").stat().st_size > 1000
    bad = subprocess.run([sys.executable, "-m", "engine", "inspect", "patch-similarity", str(image), "--row", "40",
                          "--model", str(naflex_dir)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "outside this image's 14×18 grid" in bad.stderr


def test_cli_pca_of_two_images_writes_both_arrays(naflex_dir, naflex_model, tmp_path, capsys):
    from engine.cli import main

    image, second, out = tmp_path / "wide.png", tmp_path / "tall.png", tmp_path / "out"
    WIDE.save(image)
    TALL.save(second)
    model = ["--model", str(naflex_dir), "--out", str(out)]
    assert main(["inspect", "pca", str(image), "--second", str(second), *model]) == 0
    joint = dense_pca(naflex_model, [WIDE, TALL], 256).colours
    np.testing.assert_allclose(np.load(out / "wide-pca.npy"), joint[0], atol=1e-4)
    np.testing.assert_allclose(np.load(out / "wide-pca-second.npy"), joint[1], atol=1e-4)
    assert main(["inspect", "similarity", str(image), *model]) == 2
    assert "--query Q" in capsys.readouterr().err
