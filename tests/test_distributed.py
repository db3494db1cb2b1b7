"""The Ray build (local Ray, 2 CPUs) finds what the local build finds, with the same vectors and the same
search results; a killed Ray build resumes without encoding again; shards written by hand are ingested, and
shards of another model or dimension are refused before anything is stored."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.errors import IndexStoreError
from engine.index.build import build_index
from engine.index.search import search
from engine.index.listing import FINGERPRINT_TEXT
from engine.index.store import ImageIndex
from engine.model.encode import encode_images, encode_texts
from engine.model.images import read_file_bytes
from test_index import assert_consistent, make_folder

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore")


def _vectors_by_path(name, index_dir) -> dict[str, np.ndarray]:
    with ImageIndex.open(name, index_dir) as index:
        files = index.catalog.all_files()
        vectors = index.catalog.embeddings_for([f.image_id for f in files.values()], index.dim)
    return dict(zip(files, vectors))


def test_ray_build_equals_the_local_build(naflex_model, tmp_path):
    from engine.index.distributed import build_index_on_ray

    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    paths = make_folder(folder, count=20)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    local = build_index(naflex_model, folder, "local", index_dir)
    rayed = build_index_on_ray(naflex_model, folder, "rayed", index_dir, num_cpus=2, shard_size=6)
    assert (rayed.encoded, rayed.stored, rayed.images, rayed.files) == (20, 20, 20, 20)
    assert rayed.shards_written == 4 and rayed.shards_ingested == 4
    assert sorted(rayed.skipped) == sorted(local.skipped) and len(rayed.skipped) == 1
    assert_consistent("rayed", index_dir)
    local_vectors, ray_vectors = _vectors_by_path("local", index_dir), _vectors_by_path("rayed", index_dir)
    assert set(local_vectors) == set(ray_vectors) == {str(p) for p in paths}
    cosines = [float(local_vectors[p] @ ray_vectors[p]) for p in local_vectors]
    assert min(cosines) >= 0.9999
    for query in ("ein Hund am Strand", str(paths[4])):
        with ImageIndex.open("local", index_dir) as a, ImageIndex.open("rayed", index_dir) as b:
            hits_a, hits_b = search(a, naflex_model, query, k=8).hits, search(b, naflex_model, query, k=8).hits
        assert [h.path for h in hits_a] == [h.path for h in hits_b]
    (folder / "broken.jpg").unlink()
    again = build_index_on_ray(naflex_model, folder, "rayed", index_dir, num_cpus=2)
    assert (again.encoded, again.shards_written, again.unchanged) == (0, 0, 20)  # nothing to do: Ray not started


def test_killed_ray_build_resumes_without_encoding_again(naflex_model, naflex_dir, tmp_path):
    from engine.index.distributed import SHARDS, build_index_on_ray

    folder, index_dir = tmp_path / "photos", tmp_path / "indexes"
    make_folder(folder, count=24)
    command = [sys.executable, "-m", "engine", "index", "build", str(folder), "--name", "big", "--engine", "ray",
               "--num-cpus", "2", "--shard-size", "4", "--model", str(naflex_dir), "--index-dir", str(index_dir)]
    env = {**os.environ, "STUDIO_CRASH_AT": "ray-shard:3"}  # SIGKILL right after the third shard is written
    crashed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    for noise in ("\tINFO ", "DeprecationWarning", "Token authentication", "Progress bars disabled"):
        assert noise not in crashed.stderr, crashed.stderr[-2000:]  # Ray's own chatter stays in its log files
    shards = sorted((index_dir / "big" / SHARDS).glob("*.parquet"))
    assert len(shards) == 3
    with ImageIndex.open("big", index_dir) as index:
        assert index.info().images == 0  # killed before ingesting
    resumed = build_index_on_ray(naflex_model, folder, "big", index_dir, num_cpus=2, shard_size=4)
    assert resumed.encoded == 24 - 12  # the 12 images in the written shards are not encoded again
    assert (resumed.stored, resumed.images, resumed.shards_ingested) == (24, 24, 3 + 3)
    assert_consistent("big", index_dir)


def test_reading_is_a_step_apart_from_the_encoders(naflex_model, capsys):
    """Ray fuses a task step into the actor step after it: decoding would then run in the encoders' processes."""
    from engine.index.distributed import pipeline, share_cpus

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        rows = [{"path": f"{i}.jpg", "size": 1, "mtime_ns": 0} for i in range(40)]
        pipeline(naflex_model, rows, batch_size=8, encoders=1, share=share_cpus(2, False, 1)).explain()
    finally:
        ray.shutdown()
    physical = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    assert "ActorPoolMapOperator[MapBatches(Reader)]" in physical, physical
    assert "ActorPoolMapOperator[MapBatches(Encoder)]" in physical, physical


def test_cpus_are_shared_so_that_reading_always_has_one():
    from engine.index.distributed import CpuShare, share_cpus

    assert share_cpus(2, on_gpu=False, encoders=1) == CpuShare(per_encoder=1, readers=1)
    assert share_cpus(16, on_gpu=False, encoders=3) == CpuShare(per_encoder=5, readers=1)
    assert share_cpus(8, on_gpu=False, encoders=1, per_encoder=2) == CpuShare(per_encoder=2, readers=6)
    assert share_cpus(16, on_gpu=True, encoders=2) == CpuShare(per_encoder=7, readers=14)  # one CPU feeds each GPU
    for encoders, per_encoder in ((2, None), (1, 2)):  # the encoders would hold every CPU: refused, not a hang
        with pytest.raises(IndexStoreError, match="none of Ray's 2 CPUs to read"):
            share_cpus(2, on_gpu=False, encoders=encoders, per_encoder=per_encoder)


def _hand_written_shard(path, model, files, fingerprint_text=FINGERPRINT_TEXT, vectors=None):
    """A shard written with plain pyarrow, as another tool would: variable-length list vectors."""
    embedded = encode_images(model, files).vectors if vectors is None else vectors
    fingerprint = encode_texts(model, [fingerprint_text]).vectors[0].tolist()
    table = pa.table({
        "sha256": [read_file_bytes(f)[1] for f in files], "path": [str(f) for f in files],
        "size": [f.stat().st_size for f in files], "mtime_ns": [f.stat().st_mtime_ns for f in files],
        "width": [160] * len(files), "height": [120] * len(files), "vector": [v.tolist() for v in embedded]})
    table = table.replace_schema_metadata({"studio.model": "elsewhere", "studio.fingerprint": json.dumps(fingerprint)})
    pq.write_table(table, path)
    return embedded


def test_shards_written_by_hand_are_ingested(naflex_model, naflex_dir, fixed_model, tmp_path):
    from engine.index.shards import ingest_shards, shard_files

    folder, index_dir, shards = tmp_path / "photos", tmp_path / "indexes", tmp_path / "shards"
    files = make_folder(folder, count=9)
    shards.mkdir()
    expected = _hand_written_shard(shards / "part-0.parquet", naflex_model, files[:5])
    expected = np.concatenate([expected, _hand_written_shard(shards / "part-1.parquet", naflex_model, files[5:])])
    done = subprocess.run([sys.executable, "-m", "engine", "index", "ingest", "made", str(shards), "--model",
                           str(naflex_dir), "--index-dir", str(index_dir)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "9 new images" in done.stdout
    stored = _vectors_by_path("made", index_dir)
    for path, vector in zip(files, expected):
        np.testing.assert_allclose(stored[str(path)], vector, atol=1e-6)
    assert_consistent("made", index_dir)

    wrong = tmp_path / "wrong"
    wrong.mkdir()
    _hand_written_shard(wrong / "good.parquet", naflex_model, files[:2])
    _hand_written_shard(wrong / "other-model.parquet", fixed_model, files[2:4])
    with ImageIndex.create("strict", naflex_model, index_dir) as index:
        with pytest.raises(IndexStoreError, match="not with"):
            ingest_shards(index, shard_files(wrong))
        (wrong / "other-model.parquet").unlink()
        short = np.ones((2, 7), np.float32)
        _hand_written_shard(wrong / "short.parquet", naflex_model, files[4:6], vectors=short)
        with pytest.raises(IndexStoreError, match="7-d vectors"):
            ingest_shards(index, shard_files(wrong))
        assert index.info().images == 0  # every shard is checked before any is stored
