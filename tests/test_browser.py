"""A real browser (Debian's chromium, headless, driven by Playwright) uses the app as a person would:
labels an example image, builds an index, runs a search, clicks a point on the map; screenshots go to test-artifacts/."""

from __future__ import annotations

from pathlib import Path

import pytest

from apphost import CHROMIUM, SHOTS, AppProcess
from conftest import random_image

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")]


def test_label_and_search_in_a_browser(browser, tmp_path):
    root = tmp_path / "allowed"
    (root / "photos").mkdir(parents=True)
    for i in range(6):
        random_image(120, 160, seed=500 + i).save(root / "photos" / f"holiday {i}.jpg")
    app = AppProcess("--test-model", "--cache-examples", "--index-dir", str(tmp_path / "indexes"),
                     "--allowed-root", str(root))
    SHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(app.url, wait_until="domcontentloaded", timeout=60_000)
        page.get_by_text("untrained test model", exact=False).first.wait_for(timeout=30_000)

        # Label: click an example (its result was cached at start-up), then label it with other labels
        assert "cached the results of" in app.output()
        page.locator("tbody tr").first.click()  # the first example row fills image, labels, template and runs
        page.locator("#label-image img").first.wait_for(timeout=30_000)
        scores = page.locator("#label-scores")
        scores.get_by_text("an astronaut").first.wait_for(timeout=60_000)
        page.locator("#label-notes").get_by_text("Untrained test model").wait_for(timeout=30_000)
        page.get_by_label("Labels (comma or newline separated, any language)").fill("ein Hund, un chat")
        page.get_by_role("button", name="Label", exact=True).click()
        scores.get_by_text("ein Hund").first.wait_for(timeout=60_000)
        page.screenshot(path=str(SHOTS / "label.png"), full_page=True)

        # Search: build an index from a server folder, then search it by text
        page.get_by_role("tab", name="Search").click()
        assert page.get_by_text("Dropdown", exact=True).count() == 0  # no stray, unlabelled component
        page.get_by_label("Index name").fill("holiday")
        page.get_by_label("…or a folder on the server (inside the allowed roots)").last.fill(str(root / "photos"))
        page.get_by_role("button", name="Build / update index").click()
        page.locator("#build-notes").get_by_text("6 encoded", exact=False).wait_for(timeout=120_000)
        page.locator("#search-index input").fill("holiday")
        page.locator("#search-query textarea, #search-query input").first.fill("ein Hund am Strand")
        page.get_by_role("button", name="Search by text").click()
        page.locator("#search-gallery img").first.wait_for(timeout=60_000)
        assert page.locator("#search-gallery img").count() >= 1
        page.locator("#search-notes").get_by_text("result(s)", exact=False).wait_for(timeout=30_000)
        page.screenshot(path=str(SHOTS / "search.png"), full_page=True)

        # Explore: draw the map, place a query, click a point and see its image
        page.get_by_role("tab", name="Explore").click()
        page.get_by_label("Index", exact=True).fill("holiday")
        page.get_by_label("Text query to place on the map").fill("a red car")
        page.get_by_role("button", name="Draw map").click()
        plot = page.locator("#explore-map .js-plotly-plot")
        plot.wait_for(timeout=180_000)
        page.locator("#explore-notes").get_by_text("map of all 6 images", exact=False).wait_for(timeout=60_000)
        page.wait_for_function("() => document.querySelector('#explore-map .js-plotly-plot').dataset.bridged",
                               timeout=30_000)
        x, y = page.evaluate("""() => { const gd = document.querySelector('#explore-map .js-plotly-plot');
            const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, t = gd._fullData[0];
            return [xa.l2p(t.x[0]) + xa._offset, ya.l2p(t.y[0]) + ya._offset]; }""")
        corner = plot.bounding_box()
        page.mouse.click(corner["x"] + x, corner["y"] + y)
        page.locator("#explore-picked img").first.wait_for(timeout=30_000)
        page.screenshot(path=str(SHOTS / "explore.png"), full_page=True)
    finally:
        page.close()
        app.stop()
    for name in ("label", "search", "explore"):
        assert (SHOTS / f"{name}.png").stat().st_size > 10_000
