"""Image index: build, incremental updates, dedupe, bad files, search, model checks, locking."""

import os
import shutil
import warnings
from pathlib import Path

import faiss
import numpy as np
import pytest
from PIL import Image

from conftest import random_image
from engine.model.encode import encode_images
from engine.errors import IndexStoreError, QueryError
from engine.index.listing import index_path, list_indexes
from engine.index.store import ImageIndex, remove_index
from engine.cli.index import describe_build
from engine.index.build import build_index
from engine.index.search import compare_queries, embed_query, parse_query, search
from engine.index import vectors as vi


def make_folder(root, count=12, start=0):
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + count):
        sub = root / ("sub dir" if i % 3 == 0 else "")
        sub.mkdir(exist_ok=True)
        path = sub / f"photo {i} é.jpg"
        random_image(120 + 7 * i, 160, seed=100 + i).save(path)
        paths.append(path)
    return paths


def assert_consistent(name, index_dir):
    with ImageIndex.open(name, index_dir) as index:
        faiss_ids = sorted(vi.stored_ids(index.index).tolist())
        catalog_ids = sorted(r[0] for r in index.catalog.db.execute("SELECT id FROM images"))
        assert faiss_ids == catalog_ids
        orphans = index.catalog.db.execute(
            "SELECT COUNT(*) FROM images WHERE id NOT IN (SELECT image_id FROM files)").fetchone()[0]
        dangling = index.catalog.db.execute(
            "SELECT COUNT(*) FROM files WHERE image_id NOT IN (SELECT id FROM images)").fetchone()[0]
        assert orphans == 0 and dangling == 0
        return index.info()


def test_a_photo_moved_to_a_new_name_while_its_old_name_gets_another(naflex_model, tmp_path):
    """z.png gets a.png's photo, a.png a new one: the batch storing a.png's new photo removes the old one, which
    z.png, read ahead meanwhile, was found to hold. z.png is encoded, not linked to the removed image."""
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    folder.mkdir()
    random_image(100, 120, seed=1).save(folder / "a.png")
    build_index(naflex_model, folder, "moved", index_dir, batch_size=1)
    shutil.copy(folder / "a.png", folder / "z.png")
    random_image(100, 120, seed=2).save(folder / "a.png")
    summary = build_index(naflex_model, folder, "moved", index_dir, batch_size=1)
    info = assert_consistent("moved", index_dir)
    assert (info.images, info.files, summary.encoded, summary.linked) == (2, 2, 2, 0)
    with ImageIndex.open("moved", index_dir) as index:
        hit = search(index, naflex_model, Image.open(folder / "z.png"), k=1).hits[0]
    assert [Path(path).name for path in hit.paths] == ["z.png"] and hit.score > 0.999


def test_an_image_id_given_again_reaches_the_saved_vectors(naflex_model, tmp_path):
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    folder.mkdir()
    for i in range(3):
        random_image(100, 120, seed=i).save(folder / f"p{i}.png")
    build_index(naflex_model, folder, "reused", index_dir, batch_size=1)
    os.remove(folder / "p2.png")  # the newest image's id is freed (SQLite's rowids) ...
    random_image(100, 120, seed=9).save(folder / "p3.png")  # ... and given to the next new image
    build_index(naflex_model, folder, "reused", index_dir, batch_size=1)
    with ImageIndex.open("reused", index_dir) as index:
        files = index._faiss_files()
        saved = sorted(vi.stored_ids(vi.read_index(files[max(files)])).tolist())
        assert saved == sorted(index.catalog.image_ids().tolist())  # (opening would repair it, rebuilding all)
    assert_consistent("reused", index_dir)


def test_a_photo_that_turns_unreadable_leaves_the_index(naflex_model, tmp_path):
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    folder.mkdir()
    for i in range(2):
        random_image(100, 120, seed=i).save(folder / f"p{i}.png")
    build_index(naflex_model, folder, "broken", index_dir)
    (folder / "p1.png").write_bytes(b"not an image at all")
    summary = build_index(naflex_model, folder, "broken", index_dir)
    info = assert_consistent("broken", index_dir)
    assert [Path(path).name for path, _ in summary.skipped] == ["p1.png"]
    assert (info.images, info.files, info.skipped) == (1, 1, 1)  # its old photo is not found under its name


def test_build_search_incremental_delete_dedupe(naflex_model, tmp_path):
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    paths = make_folder(folder)
    shutil.copy(paths[1], folder / "duplicate of 1.jpg")
    calls = []
    first = build_index(naflex_model, folder, "holiday", index_dir, batch_size=4,
                        progress=lambda d, t: calls.append((d, t)))
    assert (first.encoded, first.linked, first.images, first.files) == (12, 1, 12, 13)
    assert calls[-1] == (13, 13)
    assert_consistent("holiday", index_dir)

    again = build_index(naflex_model, folder, "holiday", index_dir)
    assert (again.encoded, again.unchanged, again.linked) == (0, 13, 0)

    paths[2].unlink()  # deleted
    random_image(90, 90, seed=999).save(paths[3])  # changed content, same path
    os.utime(paths[4], ns=(1, 1))  # touched only: hashed, linked, not encoded
    make_folder(folder, count=2, start=50)  # new
    third = build_index(naflex_model, folder, "holiday", index_dir, batch_size=4)
    assert (third.encoded, third.removed, third.linked) == (3, 1, 1)
    info = assert_consistent("holiday", index_dir)
    assert (info.images, info.files) == (13, 14)  # 12 - deleted - replaced + new content + 2 new

    (folder / "duplicate of 1.jpg").unlink()  # one of two paths gone: the content stays
    fourth = build_index(naflex_model, folder, "holiday", index_dir)
    assert (fourth.removed, fourth.images, fourth.files) == (1, 13, 13)
    assert list_indexes(index_dir) == ["holiday"]


def test_search_equals_brute_force(naflex_model, tmp_path):
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    make_folder(folder, count=15)
    build_index(naflex_model, folder, "exact", index_dir, batch_size=8)
    with ImageIndex.open("exact", index_dir) as index:
        ids = index.catalog.image_ids()
        vectors = index.catalog.embeddings_for(ids, index.dim)
        result = search(index, naflex_model, "a dog on the beach", k=5)
        query = embed_query(naflex_model, "a dog on the beach")
        assert not query.warnings
        # a sign stuck to its word is text as written ("t-shirt" must stay a word): said, with the way to write it
        attached = embed_query(naflex_model, "a city -night + t-shirt")
        assert [t.value for t in attached.terms] == ["a city -night", "t-shirt"]
        assert attached.warnings == ["“a city -night” was searched as written: a sign joins terms with a space on "
                                     "each side, e.g. `city - night`"]
        truth = vi.exact_top_k(query.vector[None], index.catalog.iter_embeddings(index.dim, chunk=4), 5)[0]
        assert [h.image_id for h in result.hits] == truth.tolist()
        scores = vectors @ query.vector
        np.testing.assert_allclose([h.score for h in result.hits], np.sort(scores)[::-1][:5], atol=1e-5)
        expected_p = 1 / (1 + np.exp(-(naflex_model.logit_scale * result.hits[0].score + naflex_model.logit_bias)))
        assert abs(result.hits[0].probability - expected_p) < 1e-5
        assert result.untrained
        # more asked for than the path filter leaves: FAISS's empty slots (id -1, score -FLT_MAX) never reach
        # the score, whose overflow warned in every such search of a server's log
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            few = search(index, naflex_model, "a dog on the beach", k=12, path_contains="sub dir")
        assert len(few.hits) == 5 and all(0 < h.probability < 1 and "sub dir" in h.path for h in few.hits)


def test_image_and_combined_queries_threshold_and_filter(naflex_model, tmp_path):
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    paths = make_folder(folder, count=9)
    build_index(naflex_model, folder, "mixed", index_dir)
    with ImageIndex.open("mixed", index_dir) as index:
        by_image = search(index, naflex_model, str(paths[4]), k=3)
        assert by_image.terms[0].kind == "image" and by_image.hits[0].path == str(paths[4])
        assert by_image.hits[0].score > 0.999
        combined = search(index, naflex_model, f"2:red car + {paths[4]} - night", k=9)
        assert [t.weight for t in combined.terms] == [2.0, 1.0, -1.0]
        assert [t.kind for t in combined.terms] == ["text", "image", "text"]
        cut = combined.hits[4].score
        assert all(h.score >= cut for h in search(index, naflex_model, f"2:red car + {paths[4]} - night", k=9,
                                                  min_score=cut).hits)
        filtered = search(index, naflex_model, "anything", k=9, path_contains="sub dir")
        assert filtered.hits and all("sub dir" in h.path for h in filtered.hits)
        assert len(filtered.hits) == 3 and not filtered.warnings
        # nothing found: said why, the filter or the threshold
        nowhere = search(index, naflex_model, "anything", k=9, path_contains="zzz")
        assert not nowhere.hits and nowhere.warnings == ["no stored file's path contains “zzz”"]
        too_high = search(index, naflex_model, "anything", k=9, min_score=0.99)
        assert not too_high.hits and too_high.warnings == ["no result scored at least the minimum cosine score, 0.99"]


def test_compare_queries_overlap_is_by_image_not_by_file_name(naflex_model, tmp_path):
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    make_folder(folder, count=6)
    for i, sub in enumerate(("one", "two")):  # two different images, both called same.jpg
        (folder / sub).mkdir()
        random_image(100, 100, seed=900 + i).save(folder / sub / "same.jpg")
    build_index(naflex_model, folder, "names", index_dir)
    with ImageIndex.open("names", index_dir) as index:
        same_name = compare_queries(index, naflex_model, [str(folder / "one" / "same.jpg"),
                                                          str(folder / "two" / "same.jpg")], k=1)
        assert [r.hits[0].path for r in same_name.results] == [str(folder / "one" / "same.jpg"),
                                                                str(folder / "two" / "same.jpg")]
        np.testing.assert_array_equal(same_name.overlap, np.eye(2))
        languages = compare_queries(index, naflex_model, ["a dog", "a dog", "ein Hund"], k=4)
        assert languages.overlap.shape == (3, 3) and languages.overlap[0, 1] == 1.0
        with pytest.raises(QueryError, match="at least two"):
            compare_queries(index, naflex_model, ["only one"])


def test_query_parsing_errors():
    with pytest.raises(QueryError, match="Empty query"):
        parse_query("  ")
    with pytest.raises(QueryError, match="positive"):
        parse_query("-1:cat")
    assert [(t.weight, t.value) for t in parse_query("0.5:sea + sky - clouds")] == [(0.5, "sea"), (1.0, "sky"), (-1.0, "clouds")]
    with pytest.raises(QueryError, match="only signs"):  # typed signs are not searched as text
        parse_query("2:red car + + - ::")
    with pytest.raises(QueryError, match="Two signs in a row, “\\+ -”, before “b”"):
        parse_query("a + - b")
    with pytest.raises(QueryError, match="“2:” gives a weight to nothing"):
        parse_query("cat + 2:")
    assert [(t.weight, t.value) for t in parse_query("- night + city")] == [(-1.0, "night"), (1.0, "city")]
    assert [t.value for t in parse_query("🐶")] == ["🐶"]  # not a sign: searched


def test_a_stopped_build_says_so_until_a_build_ends(naflex_model, tmp_path):
    from engine.index.search import similar_images
    from engine.index.listing import unfinished_indexes

    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    make_folder(folder, count=10)

    def stop_at(file_number):
        def progress(done, total):
            if done == file_number:
                raise KeyboardInterrupt

        return progress

    with pytest.raises(KeyboardInterrupt):  # stopped before a single file was stored: no empty index is left
        build_index(naflex_model, folder, "trip", index_dir, batch_size=4, progress=stop_at(1))
    assert list_indexes(index_dir) == []
    with pytest.raises(KeyboardInterrupt):
        build_index(naflex_model, folder, "trip", index_dir, batch_size=4, progress=stop_at(6))
    assert unfinished_indexes(index_dir) == {"trip"}
    with ImageIndex.open("trip", index_dir) as index:
        assert index.info().finished is False and 0 < index.info().files < 10
        warned = search(index, naflex_model, "a photo", k=3).warnings
        assert [w for w in warned if "last build has not finished" in w]
        assert similar_images(index, naflex_model, search(index, naflex_model, "x", k=1).hits[0].image_id).warnings
    build_index(naflex_model, folder, "trip", index_dir)  # goes on and ends
    assert unfinished_indexes(index_dir) == set()
    with ImageIndex.open("trip", index_dir) as index:
        assert index.info().finished and index.info().files == 10
        assert not search(index, naflex_model, "a photo", k=3).warnings
    with pytest.raises(KeyboardInterrupt):  # an existing index stopped at once is kept, as unfinished
        make_folder(folder, count=2, start=40)
        build_index(naflex_model, folder, "trip", index_dir, progress=stop_at(1))
    assert list_indexes(index_dir) == ["trip"] and unfinished_indexes(index_dir) == {"trip"}


def test_bad_files_skipped_with_reasons(naflex_model, tmp_path):
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    make_folder(folder, count=3)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.png").write_text("hello")
    good = (folder / "photo 1 é.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(good[: len(good) // 3])
    os.symlink(folder / "nowhere.jpg", folder / "link.jpg")
    (folder / "new\nline.png").write_bytes((folder / "photo 1 é.jpg").read_bytes())
    from PIL import Image

    Image.new("L", (20000, 10000)).save(folder / "bomb.png")
    summary = build_index(naflex_model, folder, "bad", index_dir)
    reasons = {os.path.basename(p): r for p, r in summary.skipped}
    assert "empty" in reasons["empty.jpg"] and "not an image" in reasons["text.png"]
    assert "truncated" in reasons["cut.jpg"] and "broken symbolic link" in reasons["link.jpg"]
    assert "decompression bomb" in reasons["bomb.png"]
    assert summary.images == 3 and summary.files == 4  # the newline-named copy is linked
    with ImageIndex.open("bad", index_dir) as index:
        assert len(index.catalog.skipped()) == 5
    assert "skipped" in describe_build(summary)


def test_names_cannot_escape(tmp_path):
    for name in ("../x", "/etc/passwd", "a/b", "..", ".hidden", ""):
        with pytest.raises(IndexStoreError, match="not allowed|leave"):
            index_path(name, tmp_path)
    with pytest.raises(IndexStoreError, match="No index named"):
        ImageIndex.open("missing", tmp_path)


def test_other_model_is_refused(naflex_model, fixed_model, naflex_dir, tmp_path):
    from engine import load_model
    from engine.model.testmodel import make_test_model

    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    make_folder(folder, count=3)
    build_index(naflex_model, folder, "mine", index_dir)
    other_weights = load_model(str(make_test_model(tmp_path / "other", arch="naflex", seed=77)))
    with ImageIndex.open("mine", index_dir) as index:
        for wrong in (fixed_model, other_weights):
            with pytest.raises(IndexStoreError, match="was built with"):
                search(index, wrong, "cat")
        search(index, load_model(str(naflex_dir)), "cat")  # same checkpoint loaded again is fine


def test_second_writer_gets_a_clear_message(naflex_model, tmp_path):
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    make_folder(folder, count=2)
    build_index(naflex_model, folder, "busy", index_dir)
    with ImageIndex.open("busy", index_dir, writable=True):
        with pytest.raises(IndexStoreError, match="another process"):
            build_index(naflex_model, folder, "busy", index_dir)
        with ImageIndex.open("busy", index_dir) as reader:  # readers are not blocked
            assert reader.info().images == 2
    remove_index("busy", index_dir)
    assert list_indexes(index_dir) == []


def test_index_choice_by_size():
    assert vi.plan_index(5_000, 768).factory == "Flat"
    assert vi.plan_index(100_000, 768).factory == "HNSW32"
    assert vi.plan_index(1_000_000, 768).factory == "IVF4096,SQ8"
    assert vi.plan_index(50_000_000, 768, memory_budget=64 * 2**30).factory == "IVF32768_HNSW32,SQ8"
    assert vi.plan_index(1_000_000, 768, memory_budget=2**28).factory.endswith(",PQ256x8") is False
    assert "PQ" in vi.plan_index(1_000_000, 768, memory_budget=2**28).factory
    assert vi.plan_index(10, 768, factory="IVF16,Flat").factory == "IVF16,Flat"


def test_an_index_type_faiss_cannot_build_is_refused_before_anything_is_written(naflex_model, tmp_path):
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    make_folder(folder, count=3)
    with pytest.raises(IndexStoreError, match="'Bogus42' is not one FAISS can build"):
        build_index(naflex_model, folder, "bad", index_dir, factory="Bogus42")
    assert not (index_dir / "bad").exists()
    build_index(naflex_model, folder, "good", index_dir)
    with pytest.raises(IndexStoreError, match="IVF1024,SQ8"):
        build_index(naflex_model, folder, "good", index_dir, factory="IVF,Nonsense")
    with pytest.raises(IndexStoreError, match="only an IVF index keeps its lists on disk"):
        build_index(naflex_model, folder, "good", index_dir, factory="HNSW32,ondisk")
    # FAISS reads it, but cannot train 1024 lists on 3 images: the index stays as it was, nothing recorded
    with pytest.raises(IndexStoreError, match="could not be built as IVF1024,Flat for 3 images.*stays Flat"):
        build_index(naflex_model, folder, "good", index_dir, factory="IVF1024,Flat")
    build_index(naflex_model, folder, "good", index_dir)  # a later build without a type still works
    assert assert_consistent("good", index_dir).index_type == "Flat"  # the refused types left no trace
    with ImageIndex.open("good", index_dir) as index:
        assert index.meta["factory_override"] is None


def test_naming_another_index_type_rebuilds_an_existing_index_in_it(naflex_model, tmp_path):
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    photos = make_folder(folder, count=12)
    build_index(naflex_model, folder, "switch", index_dir)
    query = encode_images(naflex_model, photos[3:4]).vectors
    with ImageIndex.open("switch", index_dir) as index:
        before = index.search_vectors(query, 5)[1]
    # Flat → HNSW16 → Flat, nothing new to encode: each named type is built (the second after a rebuild that
    # recorded the collection's size, so only the naming can trigger it)
    for factory in ("HNSW16", "Flat"):
        build_index(naflex_model, folder, "switch", index_dir, factory=factory)
        info = assert_consistent("switch", index_dir)
        assert info.index_type == factory and info.images == 12
        with ImageIndex.open("switch", index_dir) as index:
            assert index.meta["factory"] == factory and index.index.ntotal == 12
            assert ("HNSW" in type(faiss.downcast_index(index.index.index)).__name__) == (factory == "HNSW16")
            np.testing.assert_array_equal(index.search_vectors(query, 5)[1], before)


def test_ivf_add_after_training_and_rebuild_when_grown(naflex_model, tmp_path):
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    make_folder(folder, count=12)
    def centroids(index):
        ivf = faiss.extract_index_ivf(index.index)
        return ivf.quantizer.reconstruct_n(0, ivf.nlist)

    build_index(naflex_model, folder, "ivf", index_dir, factory="IVF4,Flat")
    with ImageIndex.open("ivf", index_dir) as index:
        assert index.meta["factory"] == "IVF4,Flat" and index.meta["trained_for"] == 12
        assert isinstance(faiss.extract_index_ivf(index.index), faiss.IndexIVF)
        first = centroids(index)
    make_folder(folder, count=8, start=100)  # grows by 8: added to the trained index, no retraining
    build_index(naflex_model, folder, "ivf", index_dir)
    info = assert_consistent("ivf", index_dir)
    with ImageIndex.open("ivf", index_dir) as index:
        assert index.meta["trained_for"] == 12 and info.images == 20
        np.testing.assert_array_equal(centroids(index), first)
    make_folder(folder, count=10, start=200)  # now 30 > 2 × 12: retrained on everything
    build_index(naflex_model, folder, "ivf", index_dir)
    with ImageIndex.open("ivf", index_dir) as index:
        assert index.meta["trained_for"] == 30
        assert index.meta["recall_estimate"] >= 0.95
        retrained = centroids(index)
        # new clusters, trained on all 30: every new centroid moved, and they fit the collection at least as well
        assert np.abs(retrained - first).max(axis=1).min() > 1e-3
        everything = index.catalog.embeddings_for(index.catalog.image_ids(), index.dim)
        fit = lambda c: float((everything @ c.T).max(axis=1).mean())  # noqa: E731 (mean best cosine)
        assert fit(retrained) >= fit(first) - 1e-6
    assert_consistent("ivf", index_dir)


def test_tuning_reaches_recall_target():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(50, 32)).astype(np.float32)
    data = centers[rng.integers(0, 50, 20_000)] + 0.3 * rng.normal(size=(20_000, 32)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    ids = np.arange(len(data), dtype=np.int64)
    index = vi.create_index(vi.IndexPlan("IVF64,Flat", len(data)), 32, data)
    index.add_with_ids(data, ids)
    queries = data[:100] + 0.05 * rng.normal(size=(100, 32)).astype(np.float32)
    truth = vi.exact_top_k(queries, [(ids[:7_000], data[:7_000]), (ids[7_000:], data[7_000:])], 10)
    assert (truth == vi.exact_top_k(queries, [(ids, data)], 10)).all()  # streaming = all at once
    params, recall = vi.tune(index, queries, truth, 0.95)
    assert recall >= 0.95 and params["nprobe"] < 64
    vi.set_search_params(index, params)
    assert vi.recall_at_k(index.search(queries, 10)[1], truth) == pytest.approx(recall)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,SQ8", "IVF16_HNSW32,SQ8", "IVF16,SQ4,Refine(SQ8)"])
def test_filtered_search_returns_only_allowed_ids(factory):
    rng = np.random.default_rng(1)
    data = rng.normal(size=(3000, 32)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    ids = np.arange(len(data), dtype=np.int64) * 3 + 7  # external ids unlike FAISS's internal ones
    index = vi.create_index(vi.IndexPlan(factory, len(data)), 32, data)
    index.add_with_ids(data, ids)
    queries = data[:50] + 0.05 * rng.normal(size=(50, 32)).astype(np.float32)
    params, _ = vi.tune(index, queries, vi.exact_top_k(queries, [(ids, data)], 5), 0.99)
    allowed = ids[::5]
    truth = vi.exact_top_k(queries, [(allowed, data[::5])], 5)
    selector = faiss.IDSelectorBatch(allowed)
    _, found = index.search(queries, 5, params=vi.search_parameters(index, params, selector))
    assert set(found.ravel().tolist()) <= set(allowed.tolist())
    assert vi.recall_at_k(found, truth) >= 0.9


def test_empty_or_missing_folder_is_a_clear_error(naflex_model, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(IndexStoreError, match="no image files found"):
        build_index(naflex_model, tmp_path / "empty", "nothing", tmp_path / "idx")
    with pytest.raises(IndexStoreError, match="not a folder"):
        build_index(naflex_model, tmp_path / "absent", "nothing", tmp_path / "idx")


@pytest.mark.parametrize("factory", ["HNSW32", "IVF4,SQ4,Refine(SQ8)"])
def test_deletions_in_indexes_that_cannot_remove(naflex_model, tmp_path, factory):
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    paths = make_folder(folder, count=10)
    build_index(naflex_model, folder, "norm", index_dir, factory=factory)
    with ImageIndex.open("norm", index_dir) as index:
        assert not vi.supports_removal(index.index)
    paths[0].unlink()
    paths[5].unlink()
    summary = build_index(naflex_model, folder, "norm", index_dir)
    assert summary.removed == 2 and summary.images == 8
    info = assert_consistent("norm", index_dir)
    with ImageIndex.open("norm", index_dir) as index:
        assert index.meta["factory"] == factory and info.images == 8
        hits = search(index, naflex_model, str(paths[3]), k=3).hits
        assert hits[0].path == str(paths[3])


def test_every_listed_format_is_indexed(naflex_model, tmp_path):
    folder = tmp_path / "formats"
    folder.mkdir()
    formats = ["jpg", "jpeg", "png", "webp", "bmp", "tiff", "heic", "avif"]
    for i, extension in enumerate(formats):
        random_image(80 + 4 * i, 96, seed=700 + i).save(folder / f"picture.{extension}")
    first, second = random_image(64, 64, seed=790), random_image(64, 64, seed=791)
    first.save(folder / "animated.gif", save_all=True, append_images=[second], duration=100)
    with Image.open(folder / "animated.gif") as gif:  # what the first frame decodes to (palette colours)
        gif.convert("RGB").save(tmp_path / "first frame.png")

    summary = build_index(naflex_model, folder, "formats", tmp_path / "indexes")
    assert summary.skipped == [] and summary.encoded == len(formats) + 1

    gif_vector, frame_vector = encode_images(naflex_model, [folder / "animated.gif", tmp_path / "first frame.png"]).vectors
    assert float(gif_vector @ frame_vector) > 0.9999


def test_lists_on_disk_when_even_pq_codes_outgrow_memory(naflex_model, tmp_path):
    plan = vi.plan_index(200_000_000, 768)  # 100M+ images: 16-byte codes alone pass the 1.2 GB budget
    assert plan.on_disk and plan.factory == "IVF65536_HNSW32,PQ32x8,ondisk"
    assert vi.plan_index(100_000_000, 768, memory_budget=64 * 2**30).factory == "IVF32768_HNSW32,PQ64x8"  # in RAM
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    paths = make_folder(folder, count=14)
    build_index(naflex_model, folder, "disk", index_dir, factory="IVF4,Flat,ondisk")
    make_folder(folder, count=6, start=50)  # added in place to the memory-mapped lists
    os.remove(paths[0])  # and one removed from them
    build_index(naflex_model, folder, "disk", index_dir)
    moved = tmp_path / "moved"
    shutil.move(index_dir, moved)  # the lists file is found beside the index wherever the folder goes
    info = assert_consistent("disk", moved)
    assert info.images == 19 and info.index_type == "IVF4,Flat,ondisk"
    (lists,) = (moved / "disk").glob("lists.*.ivfdata")  # the replaced ones were removed
    with ImageIndex.open("disk", moved) as index:
        assert vi.lists_file_of(index.index) == lists
        queries = encode_images(naflex_model, paths[1:4]).vectors
        _, found = index.search_vectors(queries, 5)
        truth = vi.exact_top_k(queries, index.catalog.iter_embeddings(index.dim), 5)
        assert vi.recall_at_k(found, truth) == 1.0  # every list probed after tuning on 4 lists


def test_pq_codes_are_reranked_with_the_stored_vectors(naflex_model, tmp_path):
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    paths = make_folder(folder, count=30)
    build_index(naflex_model, folder, "pq", index_dir, factory="IVF2,PQ4x4")
    with ImageIndex.open("pq", index_dir) as index:
        queries = encode_images(naflex_model, paths[:3]).vectors
        scores, found = index.search_vectors(queries, 2)  # 20 candidates of 30, re-scored exactly
        stored = index.catalog.embeddings_for(found.reshape(-1), index.dim).reshape(3, 2, -1)
        np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, stored), atol=1e-5)
        raw_scores, _ = index.index.search(queries, 2)
        assert np.abs(raw_scores - scores).max() > 1e-3  # the codes alone would have given other scores
        assert index.meta["recall_estimate"] >= 0.95


def test_read_only_opens_share_the_loaded_vectors_until_the_catalogue_changes(naflex_model, tmp_path):
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    make_folder(folder, count=6)
    build_index(naflex_model, folder, "shared", index_dir)
    with ImageIndex.open("shared", index_dir) as first, ImageIndex.open("shared", index_dir) as second:
        assert second.index is first.index  # a search server opening per request reads the file once
        before = first.index
    make_folder(folder, count=2, start=6)
    build_index(naflex_model, folder, "shared", index_dir)  # a new catalogue version
    with ImageIndex.open("shared", index_dir) as after:
        version = after.catalog.version
        assert after.index is not before and after.index.ntotal == 8
        shared = search(after, naflex_model, str(folder / "photo 7 é.jpg"), k=3).hits
    with ImageIndex.open("shared", index_dir, writable=True) as writer:
        assert writer.index is not after.index  # a writer never changes the vectors readers share
        assert_same_hits(shared, search(writer, naflex_model, str(folder / "photo 7 é.jpg"), k=3).hits)
    remove_index("shared", index_dir)  # the same name built again from other photos reaches the same version
    other = tmp_path / "other"
    for start in (20, 24):  # two builds, as before
        make_folder(other, count=4, start=start)
        build_index(naflex_model, other, "shared", index_dir)
    with ImageIndex.open("shared", index_dir) as rebuilt:
        assert rebuilt.catalog.version == version and rebuilt.index is not after.index
        shared = search(rebuilt, naflex_model, str(other / "photo 27 é.jpg"), k=3).hits
    with ImageIndex.open("shared", index_dir, writable=True) as writer:  # read from the files, not shared
        assert_same_hits(shared, search(writer, naflex_model, str(other / "photo 27 é.jpg"), k=3).hits)


def assert_same_hits(found, expected) -> None:
    """Same images in the same order with the same scores (random-model neighbours can be within 1e-5)."""
    assert [h.path for h in found] == [h.path for h in expected]
    np.testing.assert_allclose([h.score for h in found], [h.score for h in expected], atol=1e-6)


def test_a_reader_skips_an_image_removed_while_it_replays(naflex_model, tmp_path):
    """A build in another process can remove an image between the reader's look at the change log and its
    read of the new vectors: the reader adds the vectors still stored, not a missing one."""
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    paths = make_folder(folder, count=3)
    build_index(naflex_model, folder, "live", index_dir)
    with ImageIndex.open("live", index_dir) as reader:
        extra = make_folder(folder, count=1, start=3)[0]
        build_index(naflex_model, folder, "live", index_dir)
        added = reader.catalog.file_record(str(extra)).image_id
        seen = [(reader.catalog.version, added, "add")]  # what the change log said then (a build prunes it)
        extra.unlink()
        build_index(naflex_model, folder, "live", index_dir)  # and its "remove", after the reader looked
        reader.catalog.changes_since = lambda version: seen
        reader.sync()
        assert reader.index.ntotal == len(paths) and reader.faiss_version == reader.catalog.version


def test_a_folder_that_cannot_be_listed_keeps_its_files(naflex_model, tmp_path, monkeypatch):
    """A sub-folder unreadable for now (permissions, a mount gone) is not a folder emptied: its indexed
    files stay, and the build says so (as root, permissions cannot make a folder unlistable: os.walk's
    error is planted)."""
    from engine.model import images

    paths = make_folder(tmp_path / "photos")
    build_index(naflex_model, tmp_path / "photos", "trip", tmp_path / "indexes")
    walk = os.walk

    def walk_without_sub(top, onerror=None, **kwargs):
        for root, dirs, names in walk(top, onerror=onerror, **kwargs):
            if "sub dir" in dirs:
                dirs.remove("sub dir")
                onerror(PermissionError(13, "Permission denied", os.path.join(root, "sub dir")))
            yield root, dirs, names

    monkeypatch.setattr(images.os, "walk", walk_without_sub)
    summary = build_index(naflex_model, tmp_path / "photos", "trip", tmp_path / "indexes")
    in_sub = sum(path.parent.name == "sub dir" for path in paths)
    assert summary.removed == 0 and summary.images == len(paths)
    assert summary.skipped == [(str(tmp_path / "photos" / "sub dir"),
                                f"cannot be listed (Permission denied): its {in_sub} indexed file(s) kept as they were")]
    monkeypatch.setattr(images.os, "walk", walk)
    summary = build_index(naflex_model, tmp_path / "photos", "trip", tmp_path / "indexes")
    assert (summary.unchanged, summary.removed, summary.skipped) == (len(paths), 0, [])
    assert_consistent("trip", tmp_path / "indexes")


def test_shard_rows_of_one_path_keep_its_last_content(naflex_model, tmp_path):
    """Two rows for one file in a batch (read before and after an edit): the file holds the later content,
    and the earlier one, held by no file, is not left in the index."""
    from engine.index.shards import IngestSummary, ShardRows, ingest_rows

    vectors = np.eye(2, naflex_model.embed_dim, dtype=np.float32)
    rows = ShardRows(["a" * 64, "b" * 64], ["/photos/p.jpg"] * 2, [10, 11], [1, 2], [8, 8], [8, 8], vectors,
                     [None, None])
    with ImageIndex.create("shards", naflex_model, tmp_path) as index:
        ingest_rows(index, rows, IngestSummary())
        record = index.catalog.file_record("/photos/p.jpg")
        assert (record.size, index.catalog.count_images()) == (11, 1)
        assert index.catalog.images([record.image_id])[record.image_id].sha256 == "b" * 64
    assert_consistent("shards", tmp_path)


def test_the_folder_scan_reads_extensions_as_pathlib_does(tmp_path):
    from engine.model.images import scan_folder

    names = ["..jpg", "a.tar.jpg", "photo.JPG", ".jpg", "photo.", "notes.txt", "x.png"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    found = scan_folder(tmp_path).files
    assert sorted(os.path.basename(state.path) for state in found) == ["..jpg", "a.tar.jpg", "photo.JPG", "x.png"]
