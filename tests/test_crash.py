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


def run_build(folder, index_dir, model_dir, crash_at=None, wait=True):
    env = dict(os.environ)
    env.pop("STUDIO_CRASH_AT", None)
    if crash_at:
        env["STUDIO_CRASH_AT"] = crash_at
    command = [sys.executable, "-m", "engine", "index", "build", str(folder), "--name", "photos",
               "--model", str(model_dir), "--index-dir", str(index_dir), "--batch-size", "4"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if wait:
        process.wait(timeout=300)
    return process


def stored_images(index_dir):
    with sqlite3.connect(f"file:{index_dir / 'photos' / 'catalog.sqlite'}?mode=ro", uri=True) as db:
        return db.execute("SELECT COUNT(*) FROM images").fetchone()[0]


@pytest.mark.parametrize("crash_at", ["encode:3", "sqlite-commit:2", "faiss-write:1"])
def test_kill_at_a_point_then_resume(crash_at, naflex_model, naflex_dir, tmp_path):
    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    make_folder(folder, count=10)
    assert run_build(folder, index_dir, naflex_dir).returncode == 0  # an earlier complete build
    make_folder(folder, count=14, start=40)
    crashed = run_build(folder, index_dir, naflex_dir, crash_at=crash_at)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    info = assert_consistent("photos", index_dir)  # opens, FAISS ids == catalogue rows
    stored = info.images
    assert 10 <= stored < 24 or crash_at.startswith("faiss")
    resumed = build_index(naflex_model, folder, "photos", index_dir)
    assert resumed.encoded == 24 - stored  # nothing stored is encoded again
    final = assert_consistent("photos", index_dir)
    assert (final.images, final.files) == (24, 24)


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
