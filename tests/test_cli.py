"""`python -m engine` from outside: make-test-model, embed, classify."""

import json
import subprocess
import sys

import numpy as np

from engine.zeroshot import classify


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
    assert listing["failed"][0]["input"] == str(broken) and listing["untrained_model"] is True
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
