"""The Inside tab in a real browser: each view drawn for an uploaded image, patches chosen by clicking the
picture; screenshots go to test-artifacts/screenshots/inside-*.png."""

from __future__ import annotations

from pathlib import Path

import pytest

from apphost import CHROMIUM, ROOT, SHOTS, AppProcess, open_app_page
from engine.inspect.render import panel_size, patch_at
from engine.model.preprocess import PatchGrid, naflex_size

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")]
IMAGE = ROOT / "assets" / "examples" / "rocket.jpg"


def expected_grid() -> PatchGrid:
    from PIL import Image

    width, height = Image.open(IMAGE).size
    rows_px, cols_px = naflex_size(height, width, 16, 256)
    return PatchGrid(height, width, rows_px, cols_px, 16, rows_px // 16, cols_px // 16, 256)


def test_inside_views_in_a_browser(browser, tmp_path):
    app = AppProcess("--test-model", "--index-dir", str(tmp_path / "indexes"))
    page = open_app_page(browser, app)
    try:
        page.get_by_role("tab", name="Inside").click()
        page.locator("#inside-image input[type=file]").set_input_files(str(IMAGE))
        page.locator("#inside-image img").first.wait_for(timeout=30_000)

        page.get_by_role("button", name="Show the patch grid").click()
        page.locator("#grid-picture img").first.wait_for(timeout=60_000)
        grid = expected_grid()
        page.get_by_text(f'"rows": {grid.rows}', exact=False).first.wait_for(timeout=30_000)
        page.screenshot(path=str(SHOTS / "inside-grid.png"), full_page=True)

        page.get_by_role("tab", name="Similarity map").click()
        page.get_by_role("button", name="Show where each query is").click()
        page.locator("#similarity-picture img").first.wait_for(timeout=60_000)
        page.locator("#similarity-notes").get_by_text("Untrained test model").wait_for(timeout=30_000)
        page.screenshot(path=str(SHOTS / "inside-similarity.png"), full_page=True)

        page.get_by_role("tab", name="Attention").click()
        page.get_by_role("button", name="Show the pooling head's attention").click()
        page.locator("#attention-picture img").first.wait_for(timeout=60_000)
        page.get_by_role("button", name="Show this layer's attention").click()
        picture = page.locator("#layer-picture img").first
        picture.wait_for(timeout=60_000)
        page.locator("#layer-notes").get_by_text("Layer 0", exact=False).wait_for(timeout=30_000)
        # nothing drawn over the picture (a label badge hid the default patch's green box, top left)
        assert page.locator("#layer-picture").evaluate("""block => { const r = block.querySelector('img')
            .getBoundingClientRect(); return [...block.querySelectorAll('[data-testid="block-label"]')]
            .filter(x => x.checkVisibility()).map(x => x.getBoundingClientRect())
            .every(b => b.right <= r.left || b.left >= r.right || b.bottom <= r.top || b.top >= r.bottom); }""")
        # a click near the lower right of the panel chooses the patch there
        width, height = panel_size(grid)
        x, y = width - 5, height - 5
        row, _ = patch_at(grid, x, y)
        box = picture.bounding_box()
        natural = picture.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        scale = box["width"] / natural[0]
        before = picture.get_attribute("src")
        page.mouse.click(box["x"] + x * scale, box["y"] + y * scale)
        page.wait_for_function("() => [...document.querySelectorAll('input[aria-label=\"Patch row\"]')]"
                               f".some(i => i.value === '{row}')", timeout=60_000)
        page.wait_for_function("before => { const img = document.querySelector('#layer-picture img');"
                               " return img && img.src !== before; }", arg=before, timeout=60_000)
        page.wait_for_timeout(500)
        page.screenshot(path=str(SHOTS / "inside-attention.png"), full_page=True)

        page.get_by_role("tab", name="Dense features").click()
        page.get_by_role("button", name="PCA of the patch features").click()
        page.locator("#pca-picture img").first.wait_for(timeout=60_000)
        page.get_by_role("button", name="Show similarity to this patch").click()
        page.locator("#patch-picture img").first.wait_for(timeout=60_000)
        page.screenshot(path=str(SHOTS / "inside-dense.png"), full_page=True)
        assert "Traceback" not in app.output()
    finally:
        page.close()
        app.stop()
    for name in ("grid", "similarity", "attention", "dense"):
        assert (SHOTS / f"inside-{name}.png").stat().st_size > 10_000
