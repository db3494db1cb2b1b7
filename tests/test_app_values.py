"""The numbers the app serves equal the engine's for the same model and files: probabilities (the sigmoid of
the model's own logits, not a softmax), search scores and order, language overlaps, map coordinates. Each
endpoint is also given bad input once and answers with a message in place."""

from __future__ import annotations

import base64
import csv
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file

from apphost import AppProcess
from conftest import random_image

pytestmark = pytest.mark.filterwarnings("ignore")
LABELS = "a cat, a dog on the beach, ein Auto, 海滩"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app on its generated test model with a small indexed folder, and the same model and index here."""
    from engine import load_model

    root = tmp_path_factory.mktemp("values")
    folder = root / "photos"
    folder.mkdir()
    for i in range(6):  # fewer than 8 points: the map is PCA in both processes, so coordinates are comparable
        random_image(90 + 12 * i, 140 - 7 * i, seed=900 + i).save(folder / f"view {i}.jpg", quality=92)
    index_dir = tmp_path_factory.mktemp("values-indexes")
    host = AppProcess("--test-model", "--index-dir", str(index_dir), "--allowed-root", str(root))
    try:
        client = Client(host.url, verbose=False)
        summary, _ = client.predict("views", None, str(folder), api_name="/build_index")
        assert "6 encoded" in summary, summary
        model = load_model(str(Path(tempfile.gettempdir()) / "siglip2-studio-test-model-naflex"))
        yield client, model, folder, index_dir
    finally:
        host.stop()


def _caption_numbers(gallery) -> list[tuple[str, float, float | None]]:
    """(file name, cos, p) from each gallery caption 'name⏎cos 0.123 · p 0.456' (p: None where not shown)."""
    parsed = []
    for item in gallery:
        name, cos, p = re.fullmatch(r"(.+)\ncos (-?[\d.]+)(?: · p ([\d.]+))?", item["caption"]).groups()
        parsed.append((name, float(cos), None if p is None else float(p)))
    return parsed


def _assert_hits_equal(gallery, result) -> None:
    served = _caption_numbers(gallery)
    assert [name for name, _, _ in served] == [Path(hit.path).name for hit in result.hits]
    np.testing.assert_allclose([cos for _, cos, _ in served], [hit.score for hit in result.hits], atol=6e-4)
    if any(term.kind == "image" for term in result.terms):  # SigLIP's probability is for text-image pairs only
        assert all(p is None for _, _, p in served)
    else:
        np.testing.assert_allclose([p for _, _, p in served], [hit.probability for hit in result.hits], atol=6e-4)


def test_classify_probabilities_are_the_engines_sigmoids(served):
    from engine.label.zeroshot import classify, parse_templates

    client, model, folder, _ = served
    photo = folder / "view 2.jpg"
    scores, _ = client.predict(handle_file(str(photo)), LABELS, "a photo of {}.", api_name="/classify")
    result = classify(model, [photo], LABELS, parse_templates("a photo of {}."))
    served_p = {c["label"]: c["confidence"] for c in scores["confidences"]}
    expected = dict(zip(result.labels, result.probabilities[0].tolist()))
    assert set(served_p) == set(expected)
    np.testing.assert_allclose([served_p[label] for label in expected], list(expected.values()), rtol=1e-5, atol=1e-7)
    logits = result.logits[0].astype(np.float64)
    np.testing.assert_allclose(list(expected.values()), 1 / (1 + np.exp(-logits)), rtol=1e-5)


def test_label_batch_exports_carry_the_engines_probabilities(served):
    from engine.label.zeroshot import classify, parse_templates

    client, model, folder, _ = served
    table, _, exports = client.predict(None, str(folder), LABELS, "{}", 0.3, "multi", api_name="/label_batch")
    result = classify(model, sorted(folder.glob("*.jpg")), LABELS, parse_templates("{}"))
    expected = {Path(source).name: row for source, row in zip(result.sources, result.probabilities)}
    by_name = {Path(p).name: p for p in exports}
    with open(by_name["labels.csv"], encoding="utf-8") as handle:
        rows = list(csv.reader(handle))[1:]
    assert sorted(row[0] for row in rows) == sorted(expected)
    for row in rows:
        probabilities = np.array([float(x) for x in row[2:]])
        np.testing.assert_allclose(probabilities, expected[row[0]], atol=1e-6)
        chosen = {label for label, p in zip(result.labels, expected[row[0]]) if p >= 0.3}
        assert set(filter(None, row[1].split(";"))) == chosen
    for name, _, top in table["data"]:
        best_label, best_p = max(zip(result.labels, expected[name]), key=lambda pair: pair[1])
        assert top.startswith(f"{best_label} {best_p:.3g}")  # three significant digits: small ones stay readable
    with open(by_name["labels.jsonl"], encoding="utf-8") as handle:
        for record in map(json.loads, handle):
            logits = [score["logit"] for score in record["scores"]]
            row = result.sources.index(str(folder / record["image"]))
            np.testing.assert_allclose(logits, result.logits[row], atol=1e-5)


def test_text_and_image_search_scores_are_the_engines(served):
    from engine.index.search import QueryTerm, parse_query, search
    from engine.index.store import ImageIndex

    client, model, folder, index_dir = served
    query = "ein Hund am Strand - night"
    gallery, _ = client.predict("views", query, 4, -1, "", api_name="/search_text")
    example = folder / "view 3.jpg"
    combined, _ = client.predict("views", handle_file(str(example)), 0.7, "2:a red car", 5, -1, "",
                                 api_name="/search_image")
    with ImageIndex.open("views", index_dir) as index:
        _assert_hits_equal(gallery, search(index, model, query, k=4))
        terms = [QueryTerm(0.7, "image", str(example))] + parse_query("2:a red car")
        _assert_hits_equal(combined, search(index, model, terms, k=5))


def test_find_similar_is_the_engines(served):
    from engine.index.search import similar_images
    from engine.index.store import ImageIndex

    client, model, folder, index_dir = served
    with ImageIndex.open("views", index_dir) as index:
        image_id = index.catalog.file_record(str(folder / "view 2.jpg")).image_id
        expected = similar_images(index, model, image_id, k=3)
    gallery, notes = client.predict("views", image_id, 3, api_name="/find_similar")
    _assert_hits_equal(gallery, expected)
    assert "view 2.jpg" not in [name for name, _, _ in _caption_numbers(gallery)] and "view 2.jpg" in notes
    _, notes = client.predict("views", None, 3, api_name="/find_similar")
    assert notes.startswith("⛔") and "Select a result" in notes


def test_language_overlap_is_the_engines(served):
    from engine.index.search import compare_queries
    from engine.paths import AllowedRoots
    from engine.index.store import ImageIndex

    client, model, folder, index_dir = served
    # the untrained model ranks every text alike: example images (a line may name one) make the lists differ
    queries = ["a dog on the beach", "海滩上的狗", str(folder / "view 5.jpg"), str(folder / "view 0.jpg")]
    thumbnails, overlap, table, _ = client.predict("views", "\n".join(queries), 2, api_name="/compare_languages")
    table, overlap = table["value"], overlap["value"]
    with ImageIndex.open("views", index_dir) as index:
        comparison = compare_queries(index, model, queries, 2, readable=AllowedRoots.of(folder))
    assert comparison.overlap.min() < 1  # the top-2 lists differ somewhere: the comparison can tell
    served_overlap = np.array([[float(x) for x in row[1:]] for row in overlap["data"]])
    np.testing.assert_allclose(served_overlap, comparison.overlap, atol=5e-3)
    columns = list(zip(*[row[1:] for row in table["data"]]))
    assert [list(c) for c in columns] == [[Path(h.path).name for h in r.hits] for r in comparison.results]
    assert [item["caption"].split("\n")[1] for item in thumbnails["value"]] == \
        [Path(h.path).name for r in comparison.results for h in r.hits]


def _plot_array(value) -> np.ndarray:
    """A plotly JSON array: a list, or {'dtype', 'bdata'} base64 (plotly ≥ 6)."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return np.asarray(value)


def test_map_coordinates_and_nearest_are_the_engines(served):
    from engine.explore.map import explore_index
    from engine.index.store import ImageIndex

    client, model, _, index_dir = served
    figure, notes, nearest = client.predict("views", "cluster", 2, "", "a dog", 20000, api_name="/explore")
    with ImageIndex.open("views", index_dir) as index:
        explored = explore_index(index, model, "cluster", 2, "", "a dog", 20000, quick=True)
    assert explored.projection.method == "pca" and "PCA" in notes
    served_points = {}
    for trace in json.loads(figure["plot"])["data"]:
        ids = _plot_array(trace["customdata"]).reshape(-1)
        for image_id, x, y in zip(ids, _plot_array(trace["x"]), _plot_array(trace["y"])):
            served_points[int(image_id)] = (float(x), float(y))
    query_point = served_points.pop(-1)
    expected = dict(zip(explored.projection.image_ids.tolist(), explored.projection.coords.tolist()))
    assert set(served_points) == set(expected)
    for image_id, point in expected.items():
        np.testing.assert_allclose(served_points[image_id], point, atol=1e-4)
    np.testing.assert_allclose(query_point, explored.query_point, atol=1e-4)
    served_nearest = _caption_numbers(nearest)
    assert [name for name, _, _ in served_nearest] == [Path(p).name for p in explored.nearest_paths]
    np.testing.assert_allclose([cos for _, cos, _ in served_nearest], explored.nearest_scores, atol=6e-4)
    assert explored.nearest_scores == sorted(explored.nearest_scores, reverse=True)  # best first


@pytest.mark.parametrize("endpoint, inputs, expected", [
    ("/search_text", ("views", "   ", 4, -1, ""), "query"),
    ("/search_image", ("views", None, 1.0, "", 4, -1, ""), "example image"),
    ("/compare_languages", ("views", "only one line", 3), "at least two"),
    ("/explore", ("no such index", "cluster", 2, "", "", 20000), "No index named"),
    ("/explore", ("views", "zero-shot label", 2, " , ", "", 20000), "No labels"),
])
def test_bad_input_is_a_message_in_place(served, endpoint, inputs, expected):
    client = served[0]
    outputs = client.predict(*inputs, api_name=endpoint)
    notes = next(o for o in outputs if isinstance(o, str) and o.startswith("⛔"))
    assert expected in notes, notes
    assert all(not o for o in outputs if o is not notes and not isinstance(o, dict)), outputs
