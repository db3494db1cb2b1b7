"""Faults: a full disk while an index is saved, the app killed in the middle of a build or of a fine-tune, a
sequence length changed since an index was built. Nothing stored is lost, duplicated or encoded twice."""

from __future__ import annotations

import os

import pytest
from gradio_client import Client

from apphost import AppProcess
from conftest import REPORT
from engine.errors import IndexStoreError
from engine.index import vectors
from engine.index.build import build_index
from engine.index.search import search
from engine.index.store import ImageIndex
from engine.train.checkpoints import STATE_FILE, resumable_runs
from test_index import assert_consistent, make_folder
from test_train_data import make_shapes


def test_full_disk_during_save_keeps_the_previous_index(naflex_model, tmp_path, monkeypatch):
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    make_folder(folder, count=6)
    build_index(naflex_model, folder, "photos", index_dir)
    before = sorted(p.name for p in (index_dir / "photos").glob("vectors.v*.faiss"))
    make_folder(folder, count=3, start=20)
    real_write = vectors.faiss.write_index

    def full_disk(index, path):  # half a file reaches the disk, then the device is full
        real_write(index, path)
        with open(path, "r+b") as handle:
            handle.truncate(os.path.getsize(path) // 2)
        raise RuntimeError("Error: 'ret == (1)' failed: write error in vectors.faiss.tmp: 28 (No space left on device)")

    monkeypatch.setattr(vectors.faiss, "write_index", full_disk)
    with pytest.raises(IndexStoreError, match="no space left on device.*previous index file is intact"):
        build_index(naflex_model, folder, "photos", index_dir)
    monkeypatch.setattr(vectors.faiss, "write_index", real_write)
    assert sorted(p.name for p in (index_dir / "photos").glob("vectors.v*.faiss")) == before
    assert not list((index_dir / "photos").glob("*.tmp"))
    assert assert_consistent("photos", index_dir).images == 9  # the catalogue kept the committed batch
    with ImageIndex.open("photos", index_dir) as index:
        assert len(search(index, naflex_model, "a photo", k=20).hits) == 9
    again = build_index(naflex_model, folder, "photos", index_dir)
    assert again.encoded == 0 and again.unchanged == 9
    REPORT["full disk during an index save"] = ["IndexStoreError raised, previous FAISS file kept, 9/9 images "
                                                "searchable, 0 encoded again"]


def test_a_changed_sequence_length_is_refused_for_images(naflex_model, tmp_path):
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    paths = make_folder(folder, count=4)
    build_index(naflex_model, folder, "photos", index_dir)
    make_folder(folder, count=2, start=30)
    naflex_model.set_max_patches(128)
    try:
        with pytest.raises(IndexStoreError, match="built at a NaFlex sequence length of 256 patches"):
            build_index(naflex_model, folder, "photos", index_dir)
        with ImageIndex.open("photos", index_dir) as index:
            assert search(index, naflex_model, "a dog", k=3).hits  # text queries do not depend on it
            with pytest.raises(IndexStoreError, match="Set the sequence length back to 256"):
                search(index, naflex_model, str(paths[0]), k=3)
    finally:
        naflex_model.set_max_patches(256)
    assert assert_consistent("photos", index_dir).images == 4  # nothing was mixed in
    assert build_index(naflex_model, folder, "photos", index_dir).encoded == 2


def test_app_killed_during_a_build_loses_nothing(tmp_path):
    root = tmp_path / "root"
    folder, index_dir = root / "photos", tmp_path / "indexes"
    make_folder(folder, count=80)
    # the app SIGKILLs itself right after encoding its second batch of 32, before storing it
    crashed = AppProcess("--test-model", "--index-dir", str(index_dir), "--allowed-root", str(root),
                         env={"STUDIO_CRASH_AT": "encode:2"})
    try:
        job = Client(crashed.url, verbose=False).submit("photos", None, str(folder), api_name="/build_index")
        crashed.process.wait(timeout=300)
        assert crashed.process.returncode == -9
        del job
    finally:
        crashed.stop()
    stored = assert_consistent("photos", index_dir).images
    assert stored == 32  # the first batch was committed, the second was lost before its commit
    restarted = AppProcess("--test-model", "--index-dir", str(index_dir), "--allowed-root", str(root))
    try:
        summary, _ = Client(restarted.url, verbose=False).predict("photos", None, str(folder),
                                                                 api_name="/build_index")
    finally:
        restarted.stop()
    assert f"{80 - stored} encoded" in summary
    final = assert_consistent("photos", index_dir)
    assert (final.images, final.files) == (80, 80)
    REPORT["app killed during an index build"] = [f"{stored} of 80 stored at the kill; the restarted build "
                                                  f"encoded {80 - stored}; 80 images, 80 files, no orphans"]


def test_app_killed_during_a_fine_tune_resumes_from_its_last_checkpoint(tmp_path):
    import torch

    root = tmp_path / "root"
    data = make_shapes(root / "shapes", per_class=3, seed=9)  # 36 images: 4-5 batches of 8 per epoch
    args = ("--test-model", "--enable-training", "--index-dir", str(tmp_path / "indexes"), "--allowed-root", str(root))
    # the app SIGKILLs itself after the 7th optimizer step; its last checkpoint is the first epoch's
    crashed = AppProcess(*args, env={"STUDIO_CRASH_AT": "train.after_step:7"})
    try:
        job = Client(crashed.url, verbose=False).submit(str(data["classes"]), None, "full", 3, 8, 1e-3, "cpu",
                                                        api_name="/fine_tune")
        crashed.process.wait(timeout=300)
        assert crashed.process.returncode == -9
        del job
    finally:
        crashed.stop()
    [run] = resumable_runs(tmp_path / "finetuned")
    at_kill = torch.load(run.out / STATE_FILE, weights_only=True)
    per_epoch = run.total_steps // 3
    assert run.total_steps == 3 * per_epoch and 7 > per_epoch > 1
    assert run.step == at_kill["step"] == per_epoch  # the steps after the checkpoint are lost, nothing before them

    restarted = AppProcess(*args)
    try:
        _, status, report, out = Client(restarted.url, verbose=False).predict(str(run.out),
                                                                              api_name="/resume_fine_tune")
    finally:
        restarted.stop()
    assert status.startswith(f"Done: {run.total_steps}/{run.total_steps} steps") and out == str(run.out)
    assert "top1" in report
    final = torch.load(run.out / STATE_FILE, weights_only=True)
    steps = [h["step"] for h in final["history"]]
    assert steps == list(range(1, run.total_steps + 1))  # each step once: none lost or repeated
    assert final["history"][:per_epoch] == at_kill["history"]  # the same curve, continued
    assert not resumable_runs(tmp_path / "finetuned")
    REPORT["app killed during a fine-tune"] = [
        f"killed after step 7 of {run.total_steps}, last checkpoint at step {run.step}; resumed in the restarted "
        f"app to {run.total_steps}/{run.total_steps}, each step once"]
