"""The Fine-tune tab: only with enable_training; its handler streams the chart, refuses a model switch
while it runs, honours cancel, reports before/after and loads the checkpoint it wrote."""

from __future__ import annotations

import shutil
import threading
import zipfile
from pathlib import Path

import pytest

from engine import StudioError
from test_train_data import make_shapes


@pytest.fixture()
def studio(tmp_path):
    from app.studio import Studio
    from engine.model.testmodel import make_test_model

    model = make_test_model(tmp_path / "model", arch="fixed", seed=6, image_size=32, patch_size=16)
    data = make_shapes(tmp_path / "data", per_class=3, seed=8)
    studio = Studio(index_dir=tmp_path / "index", allowed_roots=[tmp_path], enable_training=True)
    studio.load(str(model), device="cpu", dtype="fp32")
    return studio, data


def test_tab_only_when_enabled(studio):
    from app.ui import build_app

    studio, _ = studio
    with_tab = build_app(studio)
    assert "Fine-tune" in {getattr(b, "label", None) for b in with_tab.blocks.values()}
    studio.enable_training = False
    without = build_app(studio)
    assert "Fine-tune" not in {getattr(b, "label", None) for b in without.blocks.values()}


def test_fine_tune_streams_reports_and_loads(studio):
    from app.tab_train import fine_tune

    studio, data = studio
    cancel = threading.Event()
    updates = []
    for update in fine_tune(studio, str(data["classes"]), None, "lora", 2, 8, 1e-3, "cpu", cancel):
        updates.append(update)
        if len(updates) == 1:  # a model switch is refused while the run holds the model
            with pytest.raises(StudioError, match="fine-tuning"):
                studio.load(str(studio.model.directory))
    figure, status, report, out = updates[-1]
    assert len(updates) >= 3 and "Done" in status and "top1" in report
    assert len(figure.data) == 2  # loss and validation curves
    loaded = studio.load(out)
    assert loaded.untrained and str(loaded.directory) == out


def test_cancel_stops_early_resumes_and_bad_folder_is_refused(studio, tmp_path):
    from app.tab_train import fine_tune, resume_fine_tune, run_choices

    studio, data = studio
    cancel = threading.Event()
    cancel.set()
    *_, last = fine_tune(studio, str(data["classes"]), None, "full", 5, 8, 1e-3, "cpu", cancel)
    assert "Cancelled" in last[1] and "--resume" in last[1]
    [(label, folder)] = run_choices(studio)  # offered for resuming, with how far it got
    assert folder == last[3] and "step 1/" in label and "full" in label
    *_, resumed = resume_fine_tune(studio, folder, threading.Event())
    assert resumed[1].startswith("Done") and not run_choices(studio)
    with pytest.raises(StudioError, match="Choose an interrupted run"):
        list(resume_fine_tune(studio, "/etc", threading.Event()))
    with pytest.raises(StudioError, match="outside the folders"):
        list(fine_tune(studio, "/etc", None, "full", 1, 8, 0, "cpu", threading.Event()))


def test_an_uploaded_zip_is_kept_beside_the_runs(studio, tmp_path):
    """An uploaded zip is unpacked beside the runs (the system's temporary folder may be emptied before a
    resume), once per content; an interrupted run names the zip, and says so when its data is gone."""
    from app.tab_train import fine_tune, resolve_data, run_choices, training_data_dir

    studio, data = studio
    upload = tmp_path / "upload" / "my shapes.zip"
    upload.parent.mkdir()
    with zipfile.ZipFile(upload, "w") as archive:
        for file in data["classes"].rglob("*"):
            archive.write(file, Path("shapes") / file.relative_to(data["classes"]))
    cancel = threading.Event()
    cancel.set()
    *_, last = fine_tune(studio, "", str(upload), "full", 5, 8, 1e-3, "cpu", cancel)
    assert "Cancelled" in last[1]
    [unpacked] = training_data_dir(studio).iterdir()
    assert unpacked.name.startswith("my shapes-") and training_data_dir(studio).parent == studio.index_dir.parent
    [(label, _)] = run_choices(studio)
    assert label.endswith("· data my shapes.zip")
    assert resolve_data(studio, "", str(upload)) == unpacked / "shapes"  # the same zip again: the same folder
    assert list(training_data_dir(studio).iterdir()) == [unpacked]
    shutil.rmtree(unpacked)
    [(label, _)] = run_choices(studio)
    assert label.endswith("(missing: cannot resume)")
    with pytest.raises(StudioError, match="not a readable zip"):
        broken = upload.with_name("broken.zip")
        broken.write_bytes(b"PK, but not a zip")
        resolve_data(studio, "", str(broken))
