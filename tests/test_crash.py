"""Killing a build (SIGKILL) at any point leaves a consistent index that a rerun completes without
re-encoding what was stored."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from engine.index.build import build_index
from test_index import assert_consistent, make_folder


def run_build(folder, index_dir, model_dir, crash_at=None, wait=True, extra=()):
    env = dict(os.environ)
    env.pop("STUDIO_CRASH_AT", None)
    if crash_at:
        env["STUDIO_CRASH_AT"] = crash_at
    command = [sys.executable, "-m", "engine", "index", "build", str(folder), "--name", "photos",
               "--model", str(model_dir), "--index-dir", str(index_dir), "--batch-size", "4", *extra]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        process.wait(timeout=300)
    return process


def stored_images(index_dir):
    with sqlite3.connect(f"file:{index_dir / 'photos' / 'catalog.sqlite'}?mode=ro", uri=True) as db:
        return db.execute("SELECT COUNT(*) FROM images").fetchone()[0]


# A second build adds 14 images to 10 stored, 4 per batch: where it dies decides exactly what is stored.
STORED_AFTER_CRASH = {
    "encode:3": 18,  # two batches committed, the third encoded but not stored
    "catalog-images:2": 14,  # inside the second batch's transaction: its image rows rolled back
    "catalog-files:1": 10,  # images and files written, not committed: no orphan rows survive
    "sqlite-commit:2": 14,  # every statement done, COMMIT not reached
    "faiss-write:1": 24,  # every batch committed; the FAISS file catches up on open
    "faiss-before-rename:1": 24,  # the new FAISS file written under its temporary name only
    "faiss-after-rename:1": 24,  # renamed, the old file and the change log not yet cleaned up
}


@pytest.mark.parametrize("crash_at", sorted(STORED_AFTER_CRASH))
def test_kill_at_a_point_then_resume(crash_at, naflex_model, naflex_dir, tmp_path):
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    make_folder(folder, count=10)
    assert run_build(folder, index_dir, naflex_dir).returncode == 0  # an earlier complete build
    before = {p.name: p.read_bytes() for p in (index_dir / "photos").glob("vectors.v*.faiss")}
    make_folder(folder, count=14, start=40)
    crashed = run_build(folder, index_dir, naflex_dir, crash_at=crash_at)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    if crash_at.startswith("faiss-before-rename"):
        # only the temporary file is new: a reader never meets a half-written file under the real name
        after = {p.name: p.read_bytes() for p in (index_dir / "photos").glob("vectors.v*.faiss")}
        assert after == before
    info = assert_consistent("photos", index_dir)  # opens, FAISS ids == catalogue rows, no orphans
    assert (info.images, info.files) == (STORED_AFTER_CRASH[crash_at],) * 2
    resumed = build_index(naflex_model, folder, "photos", index_dir)
    assert resumed.encoded == 24 - info.images  # nothing stored is encoded again
    final = assert_consistent("photos", index_dir)
    assert (final.images, final.files) == (24, 24)
    assert len(list((index_dir / "photos").glob("vectors.v*.faiss*"))) == 1  # no stale or temporary file left


@pytest.mark.parametrize("damage", ["empty", "truncated", "other vectors"])
def test_damaged_faiss_file_is_rebuilt_from_the_catalogue(damage, naflex_model, tmp_path):
    import faiss
    import numpy as np

    from engine.index.search import search
    from engine.index.store import ImageIndex, forget_loaded_indexes

    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    make_folder(folder, count=12)
    build_index(naflex_model, folder, "photos", index_dir)
    with ImageIndex.open("photos", index_dir) as index:
        expected = search(index, naflex_model, "a photo", k=5)
    (file,) = (index_dir / "photos").glob("vectors.v*.faiss")
    if damage == "empty":
        file.write_bytes(b"")
    elif damage == "truncated":
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    else:  # a valid FAISS file that holds 3 unrelated vectors
        wrong = faiss.IndexIDMap2(faiss.IndexFlatIP(naflex_model.embed_dim))
        wrong.add_with_ids(np.eye(3, naflex_model.embed_dim, dtype=np.float32), np.arange(3))
        faiss.write_index(wrong, str(file))
    forget_loaded_indexes()  # as a process started after the damage: the file is read, not the vectors shared
    info = assert_consistent("photos", index_dir)
    assert (info.images, info.files) == (12, 12)
    for writable in (False, True):
        forget_loaded_indexes()
        with ImageIndex.open("photos", index_dir, writable=writable) as index:
            assert index.index.ntotal == 12
            again = search(index, naflex_model, "a photo", k=5)
        assert [h.path for h in again.hits] == [h.path for h in expected.hits]
        np.testing.assert_allclose([h.score for h in again.hits], [h.score for h in expected.hits], atol=1e-6)
    assert build_index(naflex_model, folder, "photos", index_dir).encoded == 0


@pytest.mark.parametrize("crash_at", ["sqlite-commit:2", "faiss-write:1"])
def test_kill_with_lists_on_disk(crash_at, naflex_model, naflex_dir, tmp_path):
    """Lists on disk change in place between saves: after a kill they are rebuilt, never trusted half-done."""
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    make_folder(folder, count=10)
    on_disk = ("--index-type", "IVF4,Flat,ondisk")
    assert run_build(folder, index_dir, naflex_dir, extra=on_disk).returncode == 0
    make_folder(folder, count=14, start=40)
    crashed = run_build(folder, index_dir, naflex_dir, crash_at=crash_at, extra=on_disk)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    info = assert_consistent("photos", index_dir)
    assert info.images == STORED_AFTER_CRASH[crash_at]
    assert build_index(naflex_model, folder, "photos", index_dir).encoded == 24 - info.images
    assert assert_consistent("photos", index_dir).images == 24
    assert len(list((index_dir / "photos").glob("lists.*.ivfdata"))) == 1


def test_kill_from_outside_during_build(naflex_model, naflex_dir, tmp_path):
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    make_folder(folder, count=60)
    process = run_build(folder, index_dir, naflex_dir, wait=False)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if stored_images(index_dir) >= 8:  # some batches are committed: kill mid-build
                break
        except sqlite3.Error:
            pass
        time.sleep(0.02)
    assert process.poll() is None, "the build finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    info = assert_consistent("photos", index_dir)
    resumed = build_index(naflex_model, folder, "photos", index_dir)
    assert resumed.encoded == 60 - info.images
    assert assert_consistent("photos", index_dir).images == 60
