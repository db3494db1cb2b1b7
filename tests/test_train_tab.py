"""The Fine-tune tab: only with enable_training; its handler streams the chart, refuses a model switch
while it runs, honours cancel, reports before/after and loads the checkpoint it wrote."""

from __future__ import annotations

import re
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
    from app.tab_train import fine_tune, load_checkpoint
    from engine.index.build import build_index

    studio, data = studio
    build_index(studio.model, data["classes"], "shapes", studio.index_dir)  # searchable by this model only
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
    note = load_checkpoint(studio, out)
    assert studio.model.untrained and str(studio.model.directory) == out
    assert note.endswith(f"1 index here needs another model to be searched: shapes (built with "
                         f"{studio.index_dir.parent / 'model'}). Load that model to search them, or build them again "
                         "with this one.")


def test_live_chart_is_sent_at_most_once_per_interval(studio, monkeypatch):
    """Every update re-sends the whole chart: a long run updating it at every step froze the page. Between
    the first step and the end, only validations (new points) are shown when the interval has not passed."""
    import app.tab_train as tab

    studio, data = studio
    monkeypatch.setattr(tab, "CHART_INTERVAL_S", 1e9)
    updates = list(tab.fine_tune(studio, str(data["classes"]), None, "probe", 4, 2, 1e-3, "cpu", threading.Event()))
    final_figure, status, _, _ = updates[-1]
    steps = int(status.split("Done: ")[1].split("/")[0])
    validations = len(final_figure.data[1].x) - 1  # less the score before training
    assert steps >= 8 and 1 < len(updates) - 1 <= 1 + validations < steps


def test_a_tiny_held_out_set_is_flagged():
    from app.tab_train import _report
    from engine.train.evaluate import EvalReport
    from engine.train.trainer import TrainResult

    def result(count):
        return TrainResult(Path("out"), 1, 1, [], [], EvalReport({"top1": 0.0}, count),
                           EvalReport({"top1": 1.0}, count))

    assert "too few to judge by: one image more or less right moves the score by 100 points" in _report(result(1))
    assert "too few" not in _report(result(50)) and "+100.0" in _report(result(50))


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
    # (the step count depends on the held-out split, which hashes the data's paths: a temporary folder's)
    done = re.match(r"Done: (\d+)/(\d+) steps \((\d+) after resuming at step 1\) in", resumed[1])
    assert done and done[1] == done[2] and int(done[3]) == int(done[1]) - 1 and not run_choices(studio)
    with pytest.raises(StudioError, match="Choose an interrupted run"):
        list(resume_fine_tune(studio, "/etc", threading.Event()))
    with pytest.raises(StudioError, match="outside the folders"):
        list(fine_tune(studio, "/etc", None, "full", 1, 8, 0, "cpu", threading.Event()))
    with pytest.raises(StudioError, match="or upload a .zip of class folders"):
        list(fine_tune(studio, " ", None, "full", 1, 8, 0, "cpu", threading.Event()))


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


def test_an_upload_too_large_to_unpack_is_refused_before_writing(studio, tmp_path, monkeypatch):
    """A zip bomb (or a dataset past the limit or the free disk) is refused from the sizes in its directory,
    before anything is unpacked; a zip that lies about its sizes fails its CRC rather than writing more."""
    import app.tab_train as tab
    from app.tab_train import _check_members, resolve_data, training_data_dir

    studio, _ = studio
    bomb = tmp_path / "zeros.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a/zeros.bin", bytes(4 * 2**20))  # 4 MiB of zeros: ~4 KiB compressed
    assert bomb.stat().st_size < 2**15
    monkeypatch.setattr(tab, "MAX_UNPACKED_BYTES", 2**20)
    with pytest.raises(StudioError, match=r"zeros.zip: unpacks to 4.0 MiB, more than the 1.0 MiB"):
        resolve_data(studio, "", str(bomb))
    assert not any(training_data_dir(studio).iterdir())  # nothing left behind, not even a partial folder
    monkeypatch.setattr(tab, "MAX_ZIP_MEMBERS", 0)
    monkeypatch.setattr(tab, "MAX_UNPACKED_BYTES", 2**30)
    with pytest.raises(StudioError, match="1 files is more than 0"):
        resolve_data(studio, "", str(bomb))
    monkeypatch.setattr(tab, "MAX_ZIP_MEMBERS", 10)
    with zipfile.ZipFile(bomb) as archive:
        with pytest.raises(StudioError, match="4.0 MiB, but only 1.0 MiB is free"):
            _check_members("zeros.zip", archive.infolist(), free_bytes=2**20)
        _check_members("zeros.zip", archive.infolist(), free_bytes=2**23)
    liar = tmp_path / "liar.zip"
    data = bytearray(bomb.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 24:central + 28] = (1000).to_bytes(4, "little")  # says 1,000 bytes unpacked
    liar.write_bytes(bytes(data))
    with pytest.raises(StudioError, match="not a readable zip"):
        resolve_data(studio, "", str(liar))
    assert not any(training_data_dir(studio).iterdir())


def test_a_finished_runs_upload_is_removed_and_an_interrupted_ones_kept(studio, tmp_path):
    """Unpacked uploads do not pile up: once no interrupted run needs one (and after a crash mid-unpacking),
    it is removed at the end of the next run; the zip uploaded again is unpacked again."""
    from app.tab_train import fine_tune, resume_fine_tune, run_choices, training_data_dir

    studio, data = studio
    upload = tmp_path / "shapes.zip"
    with zipfile.ZipFile(upload, "w") as archive:  # class folders inside a top folder: the run's data lies below
        for file in data["classes"].rglob("*"):    # the unpacked folder, not at it
            archive.write(file, Path("shapes") / file.relative_to(data["classes"]))
    (training_data_dir(studio) / ".unpacking-crashed").mkdir(parents=True)
    cancel = threading.Event()
    cancel.set()
    *_, last = fine_tune(studio, "", str(upload), "probe", 5, 8, 1e-3, "cpu", cancel)
    assert "Cancelled" in last[1]
    [kept] = training_data_dir(studio).iterdir()  # the interrupted run's data stays; the crash's leftover went
    assert kept.name.startswith("shapes-")
    [(_, folder)] = run_choices(studio)
    *_, resumed = resume_fine_tune(studio, folder, threading.Event())
    assert resumed[1].startswith("Done")
    assert not any(training_data_dir(studio).iterdir())
    *_, again = fine_tune(studio, "", str(upload), "probe", 1, 8, 1e-3, "cpu", threading.Event())
    assert again[1].startswith("Done") and not any(training_data_dir(studio).iterdir())


def test_a_run_whose_page_goes_away_stops_at_a_checkpoint(studio, tmp_path):
    """Gradio closes the handler's generator when the job is cancelled or the page leaves: the training thread
    stops at a checkpoint (resumable, its uploaded data kept) before the model queue takes the next job."""
    from app.tab_train import fine_tune, run_choices, training_data_dir

    studio, data = studio
    upload = tmp_path / "shapes.zip"
    with zipfile.ZipFile(upload, "w") as archive:
        for file in data["classes"].rglob("*"):
            archive.write(file, Path("shapes") / file.relative_to(data["classes"]))
    running = fine_tune(studio, "", str(upload), "probe", 20, 8, 1e-3, "cpu", threading.Event())
    next(running)  # the first step is done
    running.close()
    assert not [t for t in threading.enumerate() if t.name == "fine-tune"]
    [(label, _)] = run_choices(studio)
    assert "probe" in label and "data shapes.zip" in label
    assert len(list(training_data_dir(studio).iterdir())) == 1
