"""Numbers, not structure: EXIF orientations by their pixels, a combined query's vector written out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import random_image
from engine.index.search import QueryTerm, embed_query
from engine.model.encode import encode_images, encode_texts
from engine.model.images import open_image

# EXIF orientation → how the stored pixels become the displayed ones (the EXIF 2.3 definitions)
DISPLAYED = {
    2: lambda a: a[:, ::-1],  # mirrored left-right
    3: lambda a: a[::-1, ::-1],  # rotated 180°
    4: lambda a: a[::-1, :],  # mirrored top-bottom
    5: lambda a: np.transpose(a, (1, 0, 2)),  # transposed
    6: lambda a: np.rot90(a, k=-1),  # rotated 90° clockwise
    7: lambda a: np.transpose(a[::-1, ::-1], (1, 0, 2)),  # transversed (along the other diagonal)
    8: lambda a: np.rot90(a, k=1),  # rotated 90° counter-clockwise
}


@pytest.mark.parametrize("orientation", sorted(DISPLAYED))
def test_exif_orientation_by_pixels(orientation, tmp_path):
    stored = np.zeros((3, 5, 3), dtype=np.uint8)
    stored[0, 0] = (255, 0, 0)  # one red corner pixel and a green one beside it: every flip and turn differs
    stored[0, 1] = (0, 255, 0)
    stored[2, 4] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"
    Image.fromarray(stored).save(path, exif=exif)
    np.testing.assert_array_equal(np.asarray(open_image(path)), DISPLAYED[orientation](stored))


def test_combined_query_is_the_weighted_sum_written_out(naflex_model, tmp_path):
    path = tmp_path / "example.png"
    random_image(100, 150, seed=3).save(path)
    texts = encode_texts(naflex_model, ["red car", "night"]).vectors
    image = encode_images(naflex_model, [str(path)]).vectors[0]
    terms = [QueryTerm(2.0, "text", "red car"), QueryTerm(0.5, "image", str(path)), QueryTerm(-1.0, "text", "night")]
    by_hand = 2.0 * texts[0] + 0.5 * image - 1.0 * texts[1]
    np.testing.assert_allclose(embed_query(naflex_model, terms).vector, by_hand / np.linalg.norm(by_hand), atol=1e-5)
    parsed = embed_query(naflex_model, f"2:red car + 0.5:{path} - night")
    assert [(t.weight, t.kind) for t in parsed.terms] == [(2.0, "text"), (0.5, "image"), (-1.0, "text")]
    np.testing.assert_allclose(parsed.vector, by_hand / np.linalg.norm(by_hand), atol=1e-5)
