"""Label assignment and exports; the embedding map and its cache."""

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import random_image
from engine.errors import LabelError
from engine.label.export import UNLABELLED, assign_labels, export_csv, export_imagefolder, export_jsonl
from engine.index.store import ImageIndex
from engine.index.export import export_index
from engine.index.build import build_index
from engine.explore.map import cluster_colours, label_colours, project_index
from engine.label.zeroshot import ZeroShotResult, classify


def fake_scores():
    probabilities = np.array([[0.9, 0.6, 0.1], [0.2, 0.3, 0.05]], dtype=np.float32)
    logits = np.log(probabilities / (1 - probabilities))
    return ZeroShotResult(["cat", "dog", "a/b"], ["x.jpg", "y.jpg"], logits, probabilities)


def test_assign_labels_multi_and_single():
    result = fake_scores()
    multi = assign_labels(result, 0.5, "multi")
    assert [a.labels for a in multi] == [["cat", "dog"], []]
    single = assign_labels(result, 0.25, "single")
    assert [a.labels for a in single] == [["cat"], ["dog"]]
    with pytest.raises(LabelError):
        assign_labels(result, 0.5, "several")


def test_exports(tmp_path):
    images = []
    for name in ("x.jpg", "y.jpg"):
        random_image(20, 20).save(tmp_path / name)
        images.append(str(tmp_path / name))
    result = fake_scores()
    result.sources = images
    assignments = assign_labels(result, 0.5)
    rows = list(csv.reader(open(export_csv(result, assignments, tmp_path / "l.csv"), encoding="utf-8")))
    assert rows[0] == ["image", "labels", "p(cat)", "p(dog)", "p(a/b)"] and rows[1][1] == "cat;dog"
    lines = [json.loads(l) for l in open(export_jsonl(result, assignments, tmp_path / "l.jsonl"), encoding="utf-8")]
    assert lines[0]["labels"] == ["cat", "dog"] and lines[0]["scores"][2]["label"] == "a/b"
    out = export_imagefolder(assignments, tmp_path / "folder")
    assert sorted(p.name for p in out.iterdir()) == ["_unlabelled", "cat", "dog"]
    assert (out / UNLABELLED / "y.jpg").exists() and (out / "cat" / "x.jpg").exists()


def indexed_folder(model, tmp_path, name: str, count: int, seed: int):
    """`count` small images of growing height in tmp_path/photos, built into index `name` in tmp_path/idx."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(count):
        random_image(40 + i, 50, seed=seed + i).save(folder / f"{i}.png")
    build_index(model, folder, name, tmp_path / "idx")
    return folder


def test_projection_is_cached_and_subsampled(naflex_model, tmp_path):
    folder = indexed_folder(naflex_model, tmp_path, "map", count=30, seed=700)
    with ImageIndex.open("map", tmp_path / "idx") as index:
        full = project_index(index, max_points=1000)
        assert full.coords.shape == (30, 2) and full.method == "umap" and not full.subsampled
        assert len(list(index.path.glob("projection-*.npz"))) == 1
        cached = project_index(index, max_points=1000)
        np.testing.assert_array_equal(cached.coords, full.coords)
        part = project_index(index, max_points=12)
        assert part.subsampled and len(part.image_ids) == 12 and part.total == 30
        for projection in (full, cached, part):  # each point carries its own image's vector
            np.testing.assert_array_equal(projection.vectors,
                                          index.catalog.embeddings_for(projection.image_ids, index.dim))
        assert full.nearest(full.vectors[3], 5)[0] == 3 and len(full.nearest(full.vectors[3], 5)) == 5
        placed = full.place(full.vectors[3])  # a stored image's own embedding lands near its own point
        distances = np.linalg.norm(full.coords - full.coords[3], axis=1)
        assert np.linalg.norm(placed - full.coords[3]) < np.median(distances)
    colours = cluster_colours(full.vectors, 4)
    assert colours.shape == (30,) and len(set(colours.tolist())) <= 4
    # zero-shot colouring of stored embeddings agrees with labelling the image files themselves
    labels = "a cat, a dog, a car, a tree"
    files = sorted(folder.glob("*.png"), key=lambda p: int(p.stem))
    with ImageIndex.open("map", tmp_path / "idx") as index:
        records = index.catalog.images(full.image_ids)
    by_path = {Path(records[int(i)].paths[0]).name: row for row, i in enumerate(full.image_ids)}
    named = label_colours(naflex_model, full.vectors, labels)
    result = classify(naflex_model, files, labels)
    expected = [result.labels[j] for j in result.probabilities.argmax(axis=1)]
    assert [named[by_path[f.name]] for f in files] == expected


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_index_export_in_chunks(naflex_model, tmp_path, fmt):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(9):
        random_image(40 + i, 50, seed=800 + i).save(folder / f"{i}.png")
    (folder / "copy of 0.png").write_bytes((folder / "0.png").read_bytes())
    build_index(naflex_model, folder, "out", tmp_path / "idx")
    with ImageIndex.open("out", tmp_path / "idx") as index:
        exported = export_index(index, tmp_path / fmt, fmt, chunk=4)  # 9 images: three chunks
        ids = index.catalog.image_ids()
        expected = index.catalog.embeddings_for(ids, index.dim)
    assert exported.rows == 9 and all(f.exists() for f in exported.files)
    if fmt == "npy":
        np.testing.assert_array_equal(np.load(tmp_path / fmt / "image_ids.npy"), ids)
        np.testing.assert_array_equal(np.load(tmp_path / fmt / "embeddings.npy"), expected)
    else:
        table = pq.read_table(tmp_path / fmt / "embeddings.parquet")
        assert table["image_id"].to_pylist() == ids.tolist()
        np.testing.assert_array_equal(np.stack(table["embedding"].to_numpy(zero_copy_only=False)), expected)
    with open(tmp_path / fmt / "metadata.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 10 and {int(r["row"]) for r in rows} == set(range(9))  # the copy shares a row
    assert all(int(r["image_id"]) == ids[int(r["row"])] for r in rows)


def test_quick_map_while_umap_compiles_then_umap(naflex_model, tmp_path):
    from engine.explore import map as explore_map

    indexed_folder(naflex_model, tmp_path, "quick", count=20, seed=800)
    was_warm = explore_map.umap_is_warm()
    explore_map._umap_ready.clear()  # as right after a server start
    try:
        with ImageIndex.open("quick", tmp_path / "idx") as index:
            early = explore_map.explore_index(index, naflex_model, quick=True)
            assert early.projection.method == "pca" and not list(index.path.glob("projection-*.npz"))
            explore_map.warm_up_umap()
            later = explore_map.explore_index(index, naflex_model, quick=True)
            assert later.projection.method == "umap" and len(list(index.path.glob("projection-*.npz"))) == 1
    finally:
        if was_warm:
            explore_map._umap_ready.set()


def test_the_points_nearest_a_query_come_with_their_cosines(naflex_model, tmp_path):
    from engine.explore.map import explore_index
    from engine.model.encode import encode_texts

    indexed_folder(naflex_model, tmp_path, "near", count=10, seed=820)
    with ImageIndex.open("near", tmp_path / "idx") as index:
        explored = explore_index(index, naflex_model, query="a red car", nearest=4, quick=True)
        vectors = index.catalog.embeddings_for(index.catalog.image_ids(), index.dim)
    cosines = vectors @ encode_texts(naflex_model, ["a red car"]).vectors[0]
    np.testing.assert_allclose(explored.nearest_scores, np.sort(cosines)[::-1][:4], atol=1e-5)
    assert len(explored.nearest_paths) == 4


def test_repeated_names_are_told_apart_as_the_imagefolder_export_does():
    from engine.label.export import unique_names

    assert unique_names(["cat.jpg", "dog.png", "cat.jpg", "cat_1.jpg", "cat.jpg", "a/b.jpg", "a/b.jpg"]) == [
        "cat.jpg", "dog.png", "cat_1.jpg", "cat_1_1.jpg", "cat_2.jpg", "a/b.jpg", "a/b_1.jpg"]


def test_the_map_layout_says_nothing_in_the_log():
    """A seeded UMAP runs on one thread; asked for more, it warns in the log at every map drawn."""
    import warnings

    from engine.explore.map import _umap_layout

    vectors = np.random.default_rng(0).normal(size=(80, 16)).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        coords = _umap_layout(vectors, seed=0)
    assert coords.shape == (80, 2)
    assert [str(w.message) for w in caught if issubclass(w.category, UserWarning)] == []
