"""A real browser (Debian's chromium, headless, driven by Playwright) uses the app as a person would:
labels an example image, builds an index, runs a search, clicks a point on the map; screenshots go to test-artifacts/."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest

from playwright.sync_api import expect

from apphost import CHROMIUM, SHOTS, AppProcess, open_app_page

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")]


@contextlib.contextmanager
def narrow(page, width: int = 800):
    """The page in a narrow window for a while (a laptop's half screen)."""
    size = page.viewport_size
    page.set_viewport_size({"width": width, "height": size["height"]})
    page.wait_for_timeout(300)  # the layout settles
    try:
        yield
    finally:
        page.set_viewport_size(size)


def fits_its_box(page, selector: str) -> bool:
    """Nothing in `selector` reaches out of its box sideways: neither it nor any box in it that scrolls or
    clips sideways is wider inside than out (cut off, or only seen by scrolling)."""
    return page.locator(selector).first.evaluate("""e => [e, ...e.querySelectorAll('*')]
        .filter(x => x === e || ['auto', 'scroll', 'hidden', 'clip'].includes(getComputedStyle(x).overflowX))
        .filter(x => x.checkVisibility({visibilityProperty: true}))  // not the table's hidden measuring row
        .every(x => x.scrollWidth <= x.clientWidth + 1 || x.clientWidth <= 1)  // 1 px: a hint kept unseen""")


def lines_of(page, selector: str, text: str) -> int:
    """How many lines the first visible text `text` in `selector` takes (a narrow column wraps it)."""
    return page.locator(selector).first.evaluate("""(e, text) => {
        const walker = document.createTreeWalker(e, NodeFilter.SHOW_TEXT);
        for (let node; (node = walker.nextNode());) {
            if (node.textContent.trim() === text && node.parentElement.checkVisibility()) {
                const range = document.createRange();
                range.selectNodeContents(node);
                return new Set([...range.getClientRects()].map(r => Math.round(r.top))).size;
            }
        }
        return 0; }""", text)


def test_label_and_search_in_a_browser(browser, tmp_path):
    root = tmp_path / "allowed"
    (root / "photos").mkdir(parents=True)
    for photo in sorted((Path(__file__).parents[1] / "assets" / "examples").glob("*.jpg")):
        shutil.copy(photo, root / "photos" / photo.name)  # the real example photos, as a person would index
    app = AppProcess("--test-model", "--cache-examples", "--index-dir", str(tmp_path / "indexes"),
                     "--allowed-root", str(root))
    page = open_app_page(browser, app)
    try:
        page.get_by_text("untrained test model", exact=False).first.wait_for(timeout=30_000)

        # Label: click an example (its result was cached at start-up), then label it with other labels
        assert "cached the results of" in app.output()
        page.locator("tbody tr").first.click()  # the first example row fills image, labels, template and runs
        page.locator("#label-image img").first.wait_for(timeout=30_000)
        scores = page.locator("#label-scores")
        scores.get_by_text("an astronaut").first.wait_for(timeout=60_000)
        page.locator("#label-notes").get_by_text("Untrained test model").wait_for(timeout=30_000)
        page.get_by_label("Labels (comma-separated, or one per line; any language)").fill("ein Hund, un chat")
        page.get_by_role("button", name="Label", exact=True).click()
        scores.get_by_text("ein Hund").first.wait_for(timeout=60_000)
        page.screenshot(path=str(SHOTS / "label.png"), full_page=True)
        page.locator("#label-image input[type=file]").set_input_files(  # another photo: the old scores go
            str(Path(__file__).parents[1] / "assets" / "examples" / "rocket.jpg"))
        page.wait_for_function("() => !document.querySelector('#label-scores').innerText.includes('ein Hund')",
                               timeout=30_000)
        page.get_by_role("button", name="Label", exact=True).click()
        scores.get_by_text("ein Hund").first.wait_for(timeout=60_000)

        # Label many: upload two photos, label them, switch to single-label (re-applied, no encoding), exports
        examples = Path(__file__).parents[1] / "assets" / "examples"
        page.get_by_role("tab", name="Many images").click()
        page.locator("#batch-files").wait_for(state="visible", timeout=30_000)
        page.locator("#batch-files input[type=file]").set_input_files([str(examples / "cat.jpg"),
                                                                      str(examples / "rocket.jpg")])
        # (a file list shows a name's stem and extension apart)
        page.wait_for_function("() => document.querySelector('#batch-files').innerText.includes('rocket')",
                               timeout=60_000)
        page.get_by_role("button", name="Label all").click()
        page.locator("#batch-notes").get_by_text("Labelled 2 image(s)", exact=False).wait_for(timeout=120_000)
        page.get_by_role("cell", name="cat.jpg", exact=True).first.wait_for(timeout=10_000)  # its own name
        threshold = page.locator("#batch-threshold input[type=number]")  # typed, then Enter: applied at once
        threshold.fill("0.0001")
        threshold.press("Enter")
        page.locator("#batch-notes").get_by_text("Threshold 0.0001", exact=False).wait_for(timeout=30_000)
        with narrow(page):  # the table under the form at the page's width (beside it, 340 px broke names)
            page.screenshot(path=str(SHOTS / "label-many-800px.png"), full_page=True)
            assert page.locator("#batch-table").bounding_box()["width"] > 600
            assert fits_its_box(page, "#batch-table") and lines_of(page, "#batch-table", "rocket.jpg") == 1
        page.get_by_label("single").check()
        page.locator("#batch-notes").get_by_text("single-label", exact=False).wait_for(timeout=30_000)
        page.wait_for_function("() => document.querySelector('#batch-exports').innerText.includes('imagefolder')",
                               timeout=30_000)
        page.get_by_role("button", name="Export the edited labels").click()  # its note beside it
        page.locator("#export-notes").get_by_text("Exported 2 image(s)", exact=False).wait_for(timeout=30_000)
        page.screenshot(path=str(SHOTS / "label-many.png"), full_page=True)

        # Search: build an index from a server folder, then search it by text
        page.get_by_role("tab", name="Search").click()
        assert page.get_by_text("Dropdown", exact=True).count() == 0  # no stray, unlabelled component
        page.get_by_label("Index name").fill("holiday")
        page.get_by_label("…or a folder on the server (inside the allowed roots)").last.fill(str(root / "photos"))
        assert page.locator("#cancel-build").is_disabled()  # nothing to cancel yet
        page.get_by_role("button", name="Build / update index").click()
        page.locator("#build-notes").get_by_text("6 encoded", exact=False).wait_for(timeout=120_000)
        page.wait_for_function("() => document.querySelector('#cancel-build').disabled", timeout=30_000)  # ended
        page.locator("#search-index input").fill("holiday")
        page.locator("#search-query textarea, #search-query input").first.fill("ein Hund am Strand")
        page.get_by_role("button", name="Search by text").click()
        page.locator("#search-gallery img").first.wait_for(timeout=60_000)
        assert page.locator("#search-gallery img").count() >= 1
        page.locator("#search-notes").get_by_text("result(s)", exact=False).wait_for(timeout=30_000)
        page.screenshot(path=str(SHOTS / "search.png"), full_page=True)
        with narrow(page):  # results as many to a row as fit (four were cut off at the right)
            assert fits_its_box(page, "#search-gallery .grid-container")
            page.screenshot(path=str(SHOTS / "search-800px.png"), full_page=True)

        # Search by an example image (an upload)
        page.locator("#search-example input[type=file]").set_input_files(str(examples / "cat.jpg"))
        page.get_by_role("button", name="Search by image (+ text)").click()
        page.locator("#search-notes").get_by_text("image cat.jpg", exact=False).wait_for(timeout=60_000)

        # Find similar: select a result, ask for images like it
        first_caption = page.locator("#search-gallery .caption-label, #search-gallery figcaption").first.inner_text()
        page.locator("#search-gallery img").first.click()
        first_name = first_caption.split("\n")[0].strip()
        page.locator("#search-selection").get_by_text(f"Selected: {first_name}").wait_for(timeout=30_000)
        assert page.locator("#search-gallery .preview").count() == 1  # the click opened the result's preview
        page.get_by_role("button", name="Find similar to the selected result").click()
        page.locator("#search-notes").get_by_text(f"image {first_name}", exact=False).wait_for(timeout=60_000)
        page.wait_for_timeout(500)  # new results close it (it showed whichever result took the photo's place)
        assert page.locator("#search-gallery .preview").count() == 0
        page.screenshot(path=str(SHOTS / "similar.png"), full_page=True)

        # Compare languages: thumbnails, one row per language
        page.get_by_text("Compare languages").click()  # the index just built, chosen for searching, and comparing
        page.wait_for_function("() => document.querySelector('#compare-index input')?.value === 'holiday'",
                               timeout=30_000)
        page.get_by_role("button", name="Compare", exact=True).click()
        page.locator("#compare-gallery img").first.wait_for(timeout=60_000)
        page.locator("#compare-gallery").scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / "compare.png"), full_page=True)
        with narrow(page):  # the results under the form, at their full width
            page.screenshot(path=str(SHOTS / "compare-800px.png"), full_page=True)
            assert fits_its_box(page, "#compare-gallery .grid-container")
            assert fits_its_box(page, "#compare-table")  # its file names wrap, no sideways scrolling
            assert lines_of(page, "#compare-table", "rank") == 1

        # Explore: draw the map, place a query, hover and click a point, find similar, lasso all points
        page.get_by_role("tab", name="Explore").click()
        assert not page.get_by_label("Labels (zero-shot colouring)").is_visible()  # cluster colouring: no labels
        page.get_by_label("zero-shot label").check()
        page.get_by_label("Labels (zero-shot colouring)").wait_for(state="visible", timeout=10_000)
        assert not page.get_by_label("Clusters (k-means)").first.is_visible()
        page.get_by_label("cluster", exact=True).check()
        # the page opened before any index existed: the Explore box took the index built in the Search tab
        expect(page.locator("#explore-index input")).to_have_value("holiday")
        page.get_by_label("Text query to place on the map").fill("a rocket launch")
        page.get_by_role("button", name="Draw map").click()
        plot = page.locator("#explore-map .js-plotly-plot")
        plot.wait_for(timeout=180_000)
        page.locator("#explore-notes").get_by_text("map of all 6 images", exact=False).wait_for(timeout=60_000)
        page.get_by_label("zero-shot label").check()  # a map drawn: its colouring is said to stay until redrawn
        page.locator("#explore-notes").get_by_text("keeps its colouring", exact=False).wait_for(timeout=10_000)
        page.get_by_label("cluster", exact=True).check()  # back to the map's own: nothing to say
        expect(page.locator("#explore-notes")).not_to_contain_text("keeps its colouring")
        page.wait_for_function("() => document.querySelector('#explore-map .js-plotly-plot').dataset.bridged",
                               timeout=30_000)
        def map_geometry():
            """Screen positions of the image points and of the plotting area, read from plotly itself."""
            return page.evaluate("""() => { const gd = document.querySelector('#explore-map .js-plotly-plot');
                const box = gd.querySelector('.main-svg').getBoundingClientRect();
                const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
                const points = gd._fullData.filter(t => t.name !== 'query').flatMap(t => Array.from(t.x, (x, i) =>
                    [box.left + xa._offset + xa.l2p(x), box.top + ya._offset + ya.l2p(t.y[i])]));
                return [points, [box.left + xa._offset + 1, box.left + xa._offset + xa._length - 1,
                                 box.top + ya._offset + 1, box.top + ya._offset + ya._length - 1]]; }""")

        points, _ = map_geometry()
        page.mouse.move(*points[0])
        page.locator("#explore-hover img").first.wait_for(timeout=30_000)
        page.mouse.click(*points[0])
        page.locator("#explore-picked img").first.wait_for(timeout=30_000)
        page.locator("#explore-card").get_by_text("cosine to the query", exact=False).wait_for(timeout=30_000)
        page.wait_for_timeout(1000)  # a click is not an empty lasso: the query's nearest images stay
        expect(page.locator("#explore-notes")).not_to_contain_text("No points inside")
        expect(page.locator("#explore-gallery")).to_contain_text("Nearest to the query")
        page.get_by_role("button", name="Find similar", exact=True).click()
        page.locator("#explore-gallery").get_by_text("Most similar to", exact=False).wait_for(timeout=60_000)
        page.screenshot(path=str(SHOTS / "explore.png"), full_page=True)
        page.evaluate("window.scrollTo(0, 0)")  # the whole map on screen, as a person would have it to draw
        points, area = map_geometry()  # a lasso around every point, inside the plotting area
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        left, right = max(area[0], min(xs) - 12), min(area[1], max(xs) + 12)
        top, bottom = max(area[2], min(ys) - 12), min(area[3], max(ys) + 12)
        page.mouse.move(left, top)
        page.mouse.down()
        for px, py in ((right, top), (right, bottom), (left, bottom), (left, top)):
            page.mouse.move(px, py, steps=8)
        page.mouse.up()
        page.locator("#explore-gallery").get_by_text("Selected: 6 image(s)", exact=False).wait_for(timeout=30_000)
        assert page.locator("#explore-gallery img").count() == 6
        page.screenshot(path=str(SHOTS / "explore-lasso.png"), full_page=True)
        with narrow(page):  # six in a row were cut off at the right: the selected photos seen were fewer
            assert fits_its_box(page, "#explore-gallery .grid-container")
            page.screenshot(path=str(SHOTS / "explore-lasso-800px.png"), full_page=True)
        # a box around no point says so, rather than emptying the gallery silently
        points, area = map_geometry()
        spots = [(x, y) for x in range(int(area[0]) + 10, int(area[1]) - 10, 8)
                 for y in range(int(area[2]) + 10, int(area[3]) - 10, 8)]
        x, y = max(spots, key=lambda s: min((s[0] - p[0]) ** 2 + (s[1] - p[1]) ** 2 for p in points))
        page.mouse.move(x - 6, y - 6)
        page.mouse.down()
        for px, py in ((x + 6, y - 6), (x + 6, y + 6), (x - 6, y + 6), (x - 6, y - 6)):
            page.mouse.move(px, py, steps=4)
        page.mouse.up()
        page.locator("#explore-notes").get_by_text("No points inside the selection", exact=False).wait_for(
            timeout=30_000)
        # the map drawn again: no selection of the previous one left on it
        page.get_by_role("button", name="Draw map").click()
        page.locator("#explore-notes").get_by_text("map of all 6 images", exact=False).wait_for(timeout=60_000)
        page.wait_for_function("() => !document.querySelector('#explore-map .js-plotly-plot')._fullLayout"
                               ".selections?.length", timeout=30_000)
        page.screenshot(path=str(SHOTS / "explore-redrawn.png"), full_page=True)
        # another index chosen but not drawn yet: the map's points are still its own index's images
        page.locator("#explore-index input").fill("nowhere")
        page.locator("#explore-index input").press("Enter")  # (the typed name becomes the box's value)
        page.wait_for_timeout(500)
        points, _ = map_geometry()
        page.mouse.click(*points[0])
        page.locator("#explore-card").get_by_text("cosine to the query", exact=False).wait_for(timeout=30_000)

        # a map of an index that does not exist: the message replaces the map, nothing of the clicked point stays
        page.get_by_role("button", name="Draw map").click()
        page.locator("#explore-notes").get_by_text("No index named 'nowhere'", exact=False).wait_for(timeout=30_000)
        page.wait_for_function("() => !document.querySelector('#explore-map .js-plotly-plot')", timeout=30_000)
        page.locator("#explore-gallery").get_by_text("Nearest to the query").wait_for(timeout=30_000)
        page.wait_for_function("() => !document.querySelector('#explore-picked img') && "
                               "!document.querySelector('#explore-hover img') && "
                               "document.querySelector('#explore-card').innerText.trim() === ''", timeout=30_000)
        page.screenshot(path=str(SHOTS / "explore-error.png"), full_page=True)

        # a page opened afresh has the index built since the app started listed and chosen, in every tab
        page.reload()
        page.get_by_text("untrained test model", exact=False).first.wait_for(timeout=30_000)
        page.get_by_role("tab", name="Search").click()
        page.get_by_text("Compare languages").click()
        for dropdown in ("search-index", "compare-index", "explore-index"):
            if dropdown == "explore-index":
                page.get_by_role("tab", name="Explore").click()
            page.wait_for_function(f"() => document.querySelector('#{dropdown} input')?.value === 'holiday'",
                                   timeout=30_000)

        page.get_by_role("tab", name="Models").click()
        page.locator("#model-summary").get_by_text("Untrained test model", exact=False).first.wait_for(timeout=30_000)
        expect(page.locator("#model-summary")).not_to_contain_text("(Models tab)")  # it is this tab
        page.screenshot(path=str(SHOTS / "models.png"), full_page=True)
        with narrow(page):  # all five columns of the paper's table, none cut off
            assert fits_its_box(page, "#paper-table")
        # Load loads what the form shows: a checkpoint chosen empties the folder box (the test model's folder)
        folder_box = page.get_by_label("…or a local checkpoint folder (Hugging Face layout)")
        expect(folder_box).not_to_have_value("")
        released = page.get_by_role("combobox", name="Released checkpoint")
        released.click()
        page.get_by_role("option", name="google/siglip2-base-patch16-224", exact=True).click()
        expect(folder_box).to_have_value("")
        folder_box.press_sequentially("/models/siglip2")  # (typed: fill sends no input event Gradio hears)
        expect(released).to_have_value("")
        # the banner's "load a real checkpoint (Models tab)" is hidden on the Models tab, back on the others
        expect(page.locator("#banner")).to_be_hidden()
        page.get_by_role("tab", name="Label").click()
        expect(page.locator("#banner")).to_contain_text("Untrained test model")
    finally:
        page.close()
        app.stop()
    for name in ("label", "label-many", "search", "similar", "compare", "explore", "explore-lasso", "models"):
        assert (SHOTS / f"{name}.png").stat().st_size > 10_000
