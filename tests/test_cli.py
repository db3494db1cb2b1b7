"""`python -m engine` from outside: make-test-model, embed, classify."""

import json
import subprocess
import sys

import numpy as np

from engine.label.zeroshot import classify


def run_cli(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True,
                            timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_make_test_model_and_embed(tmp_path, image_files):
    model_dir = tmp_path / "m"
    assert "untrained" in run_cli("make-test-model", model_dir, "--arch", "fixed").stdout
    out = tmp_path / "out.npy"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    result = run_cli("embed", "--model", model_dir, "--images", image_files[0], broken, image_files[1],
                     "--texts", "a cat", "Ein Hund", "--out", out)
    vectors = np.load(out)
    assert vectors.shape == (4, 64)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    listing = json.loads(out.with_suffix(".json").read_text())
    assert [r["input"] for r in listing["rows"]] == [str(image_files[0]), str(image_files[1]), "a cat", "Ein Hund"]
    assert listing["failed"][0]["input"] == str(broken) and listing["untrained"] is True
    assert "broken.png" in result.stderr


def test_classify_json_matches_python(naflex_dir, naflex_model, image_files):
    result = run_cli("classify", "--model", naflex_dir, image_files[0], image_files[2], "--labels", "cat,dog,car",
                     "--json")
    payload = json.loads(result.stdout)
    python = classify(naflex_model, [image_files[0], image_files[2]], "cat,dog,car")
    assert [r["image"] for r in payload["results"]] == [str(image_files[0]), str(image_files[2])]
    for row, record in enumerate(payload["results"]):
        assert [s["label"] for s in record["scores"]] == ["cat", "dog", "car"]
        np.testing.assert_allclose([s["logit"] for s in record["scores"]], python.logits[row], atol=1e-4)
        np.testing.assert_allclose([s["probability"] for s in record["scores"]], python.probabilities[row], rtol=1e-4)


def test_cli_errors_are_one_line(tmp_path, naflex_dir, image_files):
    result = run_cli("classify", "--model", naflex_dir, image_files[0], "--labels", " , ", check=False)
    assert result.returncode == 2 and "No labels" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("classify", "--model", tmp_path / "none", image_files[0], "--labels", "a", check=False)
    assert result.returncode == 2 and "no such model folder" in result.stderr


def test_index_commands(tmp_path, naflex_dir, image_files):
    import csv
    import shutil

    import pyarrow.parquet as pq

    folder = tmp_path / "my photos"
    folder.mkdir()
    for path in image_files:
        shutil.copy(path, folder / path.name)
    (folder / "bad.jpg").write_bytes(b"nope")
    index_dir = tmp_path / "idx"
    built = run_cli("index", "build", folder, "--name", "mine", "--model", naflex_dir, "--index-dir", index_dir)
    assert "6 encoded" in built.stdout and "bad.jpg" in built.stdout
    hits = json.loads(run_cli("search", "mine", "a photo of a cat", "-k", "3", "--json", "--index-dir",
                              index_dir).stdout)["hits"]
    assert len(hits) == 3 and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert set(hits[0]) >= {"path", "score", "probability"}
    listed = run_cli("index", "list", "--index-dir", index_dir).stdout.splitlines()
    assert len(listed) == 1 and listed[0].startswith("mine\t6 images\t6 files\t") and "unfinished" not in listed[0]
    info = json.loads(run_cli("index", "info", "mine", "--json", "--index-dir", index_dir).stdout)
    assert info["finished"] is True
    assert info["images"] == 6 and info["index_type"] == "Flat" and info["skipped_files"][0][0].endswith("bad.jpg")
    run_cli("index", "export", "mine", "--out", tmp_path / "out", "--index-dir", index_dir)
    vectors = np.load(tmp_path / "out" / "embeddings.npy")
    rows = list(csv.DictReader(open(tmp_path / "out" / "metadata.csv", encoding="utf-8")))
    assert vectors.shape == (6, 64) and len(rows) == 6 and {r["path"] for r in rows} == {
        str(folder / p.name) for p in image_files}
    run_cli("index", "export", "mine", "--format", "parquet", "--out", tmp_path / "pq", "--index-dir", index_dir)
    assert pq.read_table(tmp_path / "pq" / "embeddings.parquet").num_rows == 6
    escape = run_cli("index", "info", "../x", "--index-dir", index_dir, check=False)
    assert escape.returncode == 2 and "not allowed" in escape.stderr
    run_cli("index", "remove", "mine", "--index-dir", index_dir)
    gone = run_cli("search", "mine", "cat", "--index-dir", index_dir, "--model", naflex_dir, check=False)
    assert gone.returncode == 2 and "No index named" in gone.stderr


def test_cli_says_what_is_wrong_before_loading_a_model(tmp_path, capsys, naflex_dir, image_files):
    from engine.cli import main

    def error_of(*args) -> str:
        assert main([str(a) for a in args]) == 2
        return capsys.readouterr().err

    missing_model = ("--model", tmp_path / "no model")
    assert "nope: not a folder" in error_of("index", "build", tmp_path / "nope", "--name", "x", *missing_model)
    assert "Index name '../x' is not allowed" in error_of("index", "build", tmp_path, "--name", "../x", *missing_model)
    for patches in (7, 0):
        assert "between 16 and 4096" in error_of("classify", image_files[0], "--labels", "a,b", "--max-patches",
                                                 patches, *missing_model)
    folder, index_dir = image_files[0].parent, tmp_path / "idx"
    refused = error_of("index", "build", folder, "--name", "t", "--model", naflex_dir, "--index-type", "Bogus42",
                       "--index-dir", index_dir)
    assert "'Bogus42' is not one FAISS can build" in refused and "Traceback" not in refused
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "part-0.parquet").write_bytes(b"")
    assert "pass --model M" in error_of("index", "ingest", "nosuch", tmp_path / "shards", "--index-dir", index_dir)


def test_cli_index_build_without_model_reuses_the_indexs_own(tmp_path, naflex_dir, image_files):
    folder, index_dir = image_files[0].parent, tmp_path / "idx"
    run_cli("index", "build", folder, "--name", "again", "--model", naflex_dir, "--index-dir", index_dir)
    rebuilt = run_cli("index", "build", folder, "--name", "again", "--index-dir", index_dir)  # no --model
    assert "0 encoded" in rebuilt.stdout and f"{len(image_files)} unchanged" in rebuilt.stdout
