"""The Fine-tune tab in a real browser: a run started from a server folder, cancelled, listed under
Interrupted runs, resumed to the end, and its checkpoint loaded; screenshots go to
test-artifacts/screenshots/train-*.png."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from apphost import CHROMIUM, SHOTS, AppProcess, open_app_page
from test_train_data import make_shapes

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")]


def test_fine_tune_cancel_resume_and_load_in_a_browser(browser, tmp_path):
    root = tmp_path / "root"
    data = make_shapes(root / "shapes", per_class=3, seed=14)
    app = AppProcess("--test-model", "--enable-training", "--index-dir", str(tmp_path / "indexes"),
                     "--allowed-root", str(root))
    page = open_app_page(browser, app)
    try:
        page.get_by_role("tab", name="Fine-tune").click()
        page.get_by_label("Dataset on the server").fill(str(data["classes"]))
        page.get_by_label("full", exact=True).check()
        page.get_by_label("Epochs").fill("30")
        page.get_by_label("Batch size").fill("8")
        page.get_by_role("button", name="Fine-tune", exact=True).click()
        page.get_by_text(re.compile(r"^step \d+/\d+ · loss")).first.wait_for(timeout=60_000)  # the live status
        page.get_by_role("button", name="Cancel").click()
        page.get_by_text("Cancelled:", exact=False).wait_for(timeout=120_000)
        page.screenshot(path=str(SHOTS / "train-cancelled.png"), full_page=True)

        runs = page.get_by_label("Interrupted runs (continue from the last checkpoint)")
        expect(runs).to_have_value(re.compile(r"step \d+/\d+ · full"))  # the run just cancelled is chosen

        page.reload()  # coming back later: choosing the run shows its own settings, which a resume goes on with
        page.get_by_role("tab", name="Fine-tune").click()
        expect(page.get_by_label("Epochs")).to_have_value("3")
        runs.click()
        option = page.get_by_role("option").filter(has_text="· full").first
        option.wait_for(timeout=30_000)
        assert "step " in option.inner_text() and option.inner_text().endswith("· data classes")
        page.screenshot(path=str(SHOTS / "train-interrupted-runs.png"), full_page=True)
        option.click()
        expect(runs).to_have_value(re.compile(r"step \d+/\d+"))  # chosen before Resume reads it (flaked under load)
        expect(page.get_by_label("Epochs")).to_have_value("30")
        expect(page.get_by_label("full", exact=True)).to_be_checked()
        page.get_by_role("button", name="Resume").click()
        page.get_by_text("Done:", exact=False).wait_for(timeout=300_000)
        status = page.get_by_text("Done:", exact=False).inner_text()
        total = status.split("Done: ")[1].split(" steps")[0]
        assert total.split("/")[0] == total.split("/")[1]  # resumed to the last step
        page.get_by_text("Held-out set", exact=False).wait_for(timeout=30_000)  # the before/after report
        page.screenshot(path=str(SHOTS / "train-resumed.png"), full_page=True)

        page.get_by_role("button", name="Load this checkpoint").click()
        page.get_by_text(re.compile(r"^Loaded ")).wait_for(timeout=120_000)
        page.get_by_role("tab", name="Models").click()  # the Models tab shows the checkpoint loaded here
        expect(page.locator("#model-summary")).to_contain_text("-full-", timeout=30_000)
        assert "Traceback" not in app.output()
    except Exception:
        page.screenshot(path=str(SHOTS / "train-failure.png"), full_page=True)
        raise
    finally:
        page.close()
        app.stop()
