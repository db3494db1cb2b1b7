"""The Inside tab's endpoints through gradio_client: the arrays equal the engine's for the same model and
image, each endpoint takes exactly the documented inputs, and bad input comes back as a message in place."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file

from apphost import AppProcess
from conftest import random_image

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app on its generated test model, and the same model loaded here."""
    from engine import load_model

    host = AppProcess("--test-model", "--index-dir", str(tmp_path_factory.mktemp("indexes")))
    try:
        model = load_model(str(Path(tempfile.gettempdir()) / "siglip2-studio-test-model-naflex"))
        yield Client(host.url, verbose=False), model
    finally:
        host.stop()


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("inside") / "harbour view.jpg"
    random_image(170, 220, seed=77).save(path, quality=95)
    return path


def test_endpoints_take_the_documented_inputs(served):
    client, _ = served
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    expected = {"/patch_grid": ["image", "max_patches"], "/similarity_map": ["image", "queries", "max_patches", "method"],
                "/attention_map": ["image", "max_patches"], "/dense_pca": ["image", "max_patches"],
                "/joint_pca": ["image", "second_image", "max_patches"],
                "/patch_similarity": ["image", "row", "col", "second_image", "max_patches"],
                "/layer_attention": ["image", "max_patches", "layer", "head", "row", "col"]}
    for name, inputs in expected.items():
        assert [p["parameter_name"] for p in endpoints[name]["parameters"]] == inputs, name


def test_arrays_equal_the_engines(served, photo):
    from engine.inspect.attention import attention_map, layer_attention
    from engine.inspect.dense import dense_pca, patch_similarity
    from engine.inspect.grid import patch_grid
    from engine.inspect.maps import similarity_maps

    client, model = served
    image = handle_file(str(photo))
    _, info, _, positions, notes = client.predict(image, 256, api_name="/patch_grid")
    view = patch_grid(model, photo, 256)
    assert info == view.info() and "Untrained test model" in notes
    np.testing.assert_allclose(np.load(positions), view.positions.stretched, atol=1e-6)

    for method in ("value", "gradient"):
        picture, array, notes = client.predict(image, "a harbour\nein Hafen", 256, method, api_name="/similarity_map")
        assert Path(array).name == f"harbour view-{method}.npy" and picture
        expected = similarity_maps(model, photo, "a harbour\nein Hafen", 256, method).maps
        np.testing.assert_allclose(np.load(array), expected, atol=1e-4)

    _, array, _ = client.predict(image, 256, api_name="/attention_map")
    np.testing.assert_allclose(np.load(array), attention_map(model, photo, 256).weights, atol=1e-6)
    _, arrays, _ = client.predict(image, 256, api_name="/dense_pca")
    assert len(arrays) == 1
    np.testing.assert_allclose(np.load(arrays[0]), dense_pca(model, photo, 256, joint=False).colours[0], atol=1e-5)
    picture, arrays, notes = client.predict(image, None, 256, api_name="/joint_pca")  # no second image
    assert picture == arrays == {"__type__": "update"}  # the one-image PCA shown stays, it is still right
    assert notes == "⛔ Add a second image (below the first) for a PCA fitted over both."
    _, arrays, _ = client.predict(image, image, 256, api_name="/joint_pca")
    joint = dense_pca(model, [photo, photo], 256, joint=True).colours
    assert len(arrays) == 2 and Path(arrays[1]).name == "harbour view-pca-harbour view.npy"
    for array, colours in zip(arrays, joint):
        np.testing.assert_allclose(np.load(array), colours, atol=1e-5)
    _, arrays, _ = client.predict(image, 2, 5, image, 128, api_name="/patch_similarity")
    found = patch_similarity(model, photo, 2, 5, photo, 128)
    np.testing.assert_allclose(np.load(arrays[0]), found.similarity, atol=1e-5)
    np.testing.assert_allclose(np.load(arrays[1]), found.second_similarity, atol=1e-5)
    _, array, _ = client.predict(image, 256, 1, 1, 3, 4, api_name="/layer_attention")
    np.testing.assert_allclose(np.load(array), layer_attention(model, photo, 256, 1, 1, 3, 4).weights, atol=1e-5)


def test_bad_input_replaces_the_result_with_a_message(served, photo):
    client, _ = served
    image = handle_file(str(photo))
    picture, array, notes = client.predict(image, "", 256, "value", api_name="/similarity_map")
    assert picture is None and array is None and notes.startswith("⛔ No query")
    picture, array, notes = client.predict(image, 256, 0, 0, 99, 0, api_name="/layer_attention")
    assert picture is None and "outside this image's 14×18 grid" in notes
    *_, notes = client.predict(image, 4, api_name="/attention_map")
    assert "between 16 and 4096" in notes
    text_file = photo.parent / "notes.png"
    text_file.write_text("hello")
    *_, notes = client.predict(handle_file(str(text_file)), 256, api_name="/dense_pca")
    assert "not an image" in notes and str(photo.parent) not in notes
