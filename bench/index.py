"""Vector index at scale, and end-to-end build throughput.

Part 1: N synthetic clustered unit vectors (default 1,000,000 × 768, the B/16 dimension); the index the
engine chooses for that size against exact search: build time, resident memory, recall@10, single-query
p50/p99 latency, batch QPS.
Part 2: indexing JPEG files on disk (read, hash, decode, preprocess, encode, store) against encoding the
same images already decoded and preprocessed (model only).

    python bench/index.py [--count 1000000] [--skip-build-throughput] [--files 64 --size base]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from bench.common import checkpoint, machine, photos  # noqa: E402
from engine.index import vectors as vi  # noqa: E402

DIM = 768
CHUNK = 100_000


class ClusteredVectors:
    """Deterministic clustered unit vectors, generated chunk by chunk (never all in memory).

    10,000 random cluster centres; within a cluster, variation of norm ~0.5 in a shared 64-d subspace
    plus isotropic noise of norm ~0.1, then L2-normalised: embeddings of real photo collections have a
    low intrinsic dimension, unlike isotropic 768-d noise (the worst case for any ANN index).
    """

    def __init__(self, count: int, clusters: int = 10_000, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.count, self.seed = count, seed
        self.centers = rng.normal(size=(clusters, DIM)).astype(np.float32)
        self.centers /= np.linalg.norm(self.centers, axis=1, keepdims=True)
        self.basis = np.linalg.qr(rng.normal(size=(DIM, 64)))[0].T.astype(np.float32)  # (64, DIM)

    def _make(self, rng, n):
        structured = rng.normal(size=(n, 64)).astype(np.float32) @ self.basis * (0.5 / 8)
        noise = rng.normal(size=(n, DIM)).astype(np.float32) * (0.1 / np.sqrt(DIM))
        points = self.centers[rng.integers(0, len(self.centers), n)] + structured + noise
        return points / np.linalg.norm(points, axis=1, keepdims=True)

    def chunks(self):
        for start in range(0, self.count, CHUNK):
            rng = np.random.default_rng((self.seed, start))
            n = min(CHUNK, self.count - start)
            yield np.arange(start, start + n, dtype=np.int64), self._make(rng, n)

    def queries(self, n, seed):
        return self._make(np.random.default_rng((self.seed, 10**9 + seed)), n)  # apart from every chunk's seed


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def latency(index, queries, k=10):
    times = []
    for query in queries:
        start = time.perf_counter()
        index.search(query[None, :], k)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    index.search(queries, k)
    qps = len(queries) / (time.perf_counter() - start)
    return np.percentile(times, 50) * 1e3, np.percentile(times, 99) * 1e3, qps


def bench_vectors(count: int, factory: str | None = None) -> None:
    data = ClusteredVectors(count)
    eval_queries, tune_queries = data.queries(1000, 1), data.queries(300, 2)
    print(f"vectors: {count:,} × {DIM}, clustered; computing exact top-10 for 1,300 queries ...", flush=True)
    truth, tune_truth = (vi.exact_top_k(q, data.chunks(), 10) for q in (eval_queries, tune_queries))

    plan = vi.plan_index(count, DIM, factory=factory)
    start = time.perf_counter()
    training = None
    if plan.needs_training:
        wanted = min(count, vi.training_size(plan, DIM))
        chunks = itertools.islice(data.chunks(), -(-wanted // CHUNK))
        training = np.concatenate([v for _, v in chunks])[:wanted]
    base = rss()  # after the training sample exists: the growth below is the index and FAISS's buffers
    index = vi.create_index(plan, DIM, training)
    del training
    for ids, vectors in data.chunks():
        index.add_with_ids(vectors, ids)
    params, tune_recall = vi.tune(index, tune_queries, tune_truth, 0.95)
    build_s = time.perf_counter() - start
    memory = rss() - base
    vi.set_search_params(index, params)
    recall = vi.recall_at_k(index.search(eval_queries, 10)[1], truth)
    p50, p99, qps = latency(index, eval_queries[:500])
    print(f"auto ({plan.factory}, {params}): build {build_s:.0f} s, memory {memory / 2**30:.2f} GiB "
          f"(serialized {vi.memory_bytes(index) / 2**30:.2f} GiB), recall@10 {recall:.3f}, "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, batch {qps:,.0f} QPS")
    del index
    base = rss()
    start = time.perf_counter()
    exact = faiss.IndexFlatIP(DIM)
    for _, vectors in data.chunks():
        exact.add(vectors)
    exact_build = time.perf_counter() - start
    exact_memory = rss() - base
    exact_recall = vi.recall_at_k(exact.search(eval_queries, 10)[1], truth)
    e50, e99, eqps = latency(exact, eval_queries[:100])
    print(f"exact (Flat): build {exact_build:.0f} s, memory {exact_memory / 2**30:.2f} GiB, recall@10 "
          f"{exact_recall:.3f}, p50 {e50:.2f} ms, p99 {e99:.2f} ms, batch {eqps:,.0f} QPS")
    print(f"auto vs exact: p50 {e50 / p50:.1f}x faster, memory {exact_memory / max(memory, 1):.1f}x smaller")


def bench_build_throughput(files: int, size: str) -> None:
    from engine import load_model
    from engine.model.encode import embed_pixel_batch
    from engine.model.images import open_image
    from engine.index.build import build_index

    model = load_model(str(checkpoint("naflex", size)))
    paths = photos(files)
    prepared = [model.image_preprocessor(open_image(p)) for p in paths]
    embed_pixel_batch(model, prepared[:4])
    start = time.perf_counter()
    for i in range(0, len(prepared), 32):
        embed_pixel_batch(model, prepared[i : i + 32])
    model_rate = len(prepared) / (time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as index_dir:
        summary = build_index(model, paths[0].parent, "bench", index_dir, batch_size=32)
    end_to_end = summary.rate
    print(f"build throughput ({size} naflex, {files} JPEGs): files→stored {end_to_end:.2f} img/s, model only "
          f"{model_rate:.2f} img/s, ratio {end_to_end / model_rate:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--size", default="base")
    parser.add_argument("--skip-vectors", action="store_true")
    parser.add_argument("--index-type", default=None, help="a FAISS factory string instead of the automatic choice")
    parser.add_argument("--skip-build-throughput", action="store_true")
    args = parser.parse_args()
    print(f"machine: {machine()}, faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads")
    if not args.skip_vectors:
        bench_vectors(args.count, args.index_type)
    if not args.skip_build_throughput:
        bench_build_throughput(args.files, args.size)


if __name__ == "__main__":
    main()
