"""Shared fixtures: small generated checkpoints (random weights) of both architectures, and images."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the Hub unless a test says so
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("STUDIO_CACHE", tempfile.mkdtemp(prefix="studio-cache-"))  # never the user's ~/.cache


@pytest.fixture(scope="session")
def naflex_dir(tmp_path_factory):
    from engine.model.testmodel import make_test_model

    return make_test_model(tmp_path_factory.mktemp("naflex"), arch="naflex", seed=1)


@pytest.fixture(scope="session")
def fixed_dir(tmp_path_factory):
    from engine.model.testmodel import make_test_model

    return make_test_model(tmp_path_factory.mktemp("fixed"), arch="fixed", seed=2)


@pytest.fixture(scope="session")
def naflex_model(naflex_dir):
    from engine import load_model

    return load_model(str(naflex_dir))


@pytest.fixture(scope="session")
def fixed_model(fixed_dir):
    from engine import load_model

    return load_model(str(fixed_dir))


@pytest.fixture(params=["naflex", "fixed"])
def any_model(request, naflex_model, fixed_model):
    return naflex_model if request.param == "naflex" else fixed_model


@pytest.fixture(scope="session")
def odd_models(tmp_path_factory):
    """Both architectures with values unlike the reference wherever the engine reads one: patch 14, size 210,
    196 patches, bicubic, CLIP's mean and std, random learned t and b."""
    from engine import load_model
    from engine.model.testmodel import make_test_model

    return {arch: load_model(str(make_test_model(tmp_path_factory.mktemp(f"odd-{arch}"), arch=arch, seed=7,
                                                 recipe="odd")))
            for arch in ("naflex", "fixed")}


@pytest.fixture(params=["naflex", "fixed", "naflex-odd", "fixed-odd"])
def recipe_model(request, naflex_model, fixed_model, odd_models):
    """Each architecture with the reference recipe and with the odd one: equality tests run on all four."""
    arch, _, odd = request.param.partition("-")
    return odd_models[arch] if odd else (naflex_model if arch == "naflex" else fixed_model)


def random_image(height: int, width: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    # smooth-ish content so resizing filters matter
    base = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return Image.fromarray(base).resize((width, height), Image.Resampling.BILINEAR).convert(mode)


def warnings_of_a_users_script(naflex_dir, dtypes: tuple[str, ...], env: dict[str, str]) -> str:
    """The standard error of a user's script, run with every warning shown, that loads the test model in
    each of `dtypes` and then warns once itself."""
    import subprocess
    import sys
    from pathlib import Path

    script = (f"from engine import load_model\n"
              f"for dtype in {dtypes!r}: load_model({str(naflex_dir)!r}, dtype=dtype)\n"
              f"import warnings; warnings.warn('a warning of the user\\'s own')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parents[1],
                          env={**os.environ, "PYTHONWARNINGS": "default", **env})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "a warning of the user's own" in done.stderr  # warnings in general are still shown
    return done.stderr


def photo_folder(tmp_path, count: int):
    """(folder, index folder): `count` small random JPEGs in tmp_path/photos, indexes to go in tmp_path/indexes."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(count):
        random_image(90 + 10 * i, 120, seed=i).save(folder / f"p{i}.jpg")
    return folder, tmp_path / "indexes"


@pytest.fixture(scope="session")
def image_files(tmp_path_factory):
    """Six JPEG/PNG files of different sizes and aspect ratios."""
    folder = tmp_path_factory.mktemp("images")
    sizes = [(224, 224), (480, 640), (640, 360), (100, 900), (37, 53), (1024, 224)]
    paths = []
    for seed, (height, width) in enumerate(sizes):
        path = folder / (f"img_{seed}.jpg" if seed % 2 == 0 else f"img_{seed}.png")
        random_image(height, width, seed).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium, headless, driven by Playwright (its own browser download is impossible here)."""
    from playwright.sync_api import sync_playwright

    from apphost import CHROMIUM

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"])
        yield launched
        launched.close()


# Figures the robustness tests measure (files tried per category, path escapes, load), printed at the end of
# the run so they can be read from the CI log.
REPORT: dict[str, list[str]] = {}


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.section("SigLIP 2 Studio: robustness figures")
        for title, lines in REPORT.items():
            terminalreporter.write_line(title)
            for line in lines:
                terminalreporter.write_line(f"  {line}")
