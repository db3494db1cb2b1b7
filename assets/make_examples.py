"""Copies the example photos into assets/examples/ from the scikit-image wheel (run once; the JPEGs are
committed). Each photo's licence, as scikit-image's own data docs state it, is in assets/LICENSE.md.

    python assets/make_examples.py        # downloads scikit-image==0.26.0's wheel with pip (no install)
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from io import BytesIO
from pathlib import Path

from PIL import Image

OUT = Path(__file__).resolve().parent / "examples"
WHEEL = "scikit-image==0.26.0"
# file in skimage/data → name here (all public domain or CC0, see LICENSE.md)
PHOTOS = {
    "chelsea.png": "cat.jpg",
    "coffee.png": "coffee.jpg",
    "astronaut.png": "astronaut.jpg",
    "rocket.jpg": "rocket.jpg",
    "hubble_deep_field.jpg": "hubble_deep_field.jpg",
    "retina.jpg": "retina.jpg",
}
LONG_SIDE = 800  # enough for NaFlex at 1024 patches; keeps the repository small


def main() -> None:
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", WHEEL, "-d", folder],
                       check=True)
        wheel = next(Path(folder).glob("scikit_image-*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            for source, target in PHOTOS.items():
                image = Image.open(BytesIO(archive.read(f"skimage/data/{source}"))).convert("RGB")
                image.thumbnail((LONG_SIDE, LONG_SIDE))
                image.save(OUT / target, "JPEG", quality=88)
                print(f"{target}: {image.width}×{image.height}")


if __name__ == "__main__":
    main()
