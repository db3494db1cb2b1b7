"""An index past one machine's RAM: IVF-PQ with its inverted lists on disk (what the planner picks when even
16-byte PQ codes outgrow the memory budget), built chunk by chunk from N synthetic clustered vectors, and the
per-vector costs projected to 100M and 1B images.

Prints build time (training and adding), peak memory growth, disk (header + lists), recall@10 against exact
search, single-query p50 latency at the tuned nprobe, and the projection.

    python bench/large_index.py [--count 2000000] [--memory-budget-gb 0.05]
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402

from bench.common import machine  # noqa: E402
from bench.index import CHUNK, DIM, ClusteredVectors, latency, rss  # noqa: E402
from engine.index import vectors as vi  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=2_000_000)
    parser.add_argument("--memory-budget-gb", type=float, default=None,
                        help="the planner's budget (default: just under what 16-byte codes of --count vectors need, "
                             "so that it picks lists on disk as it would for 100M+ with the default budget)")
    args = parser.parse_args()
    print(f"machine: {machine()}, faiss {faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM")
    count = args.count
    budget = args.memory_budget_gb * 2**30 if args.memory_budget_gb else 0.9 * count * (16 + 8)
    plan = vi.plan_index(count, DIM, memory_budget=budget)
    print(f"{count:,} × {DIM} clustered unit vectors; planner (budget {budget / 2**20:,.0f} MiB): {plan.factory}")
    data = ClusteredVectors(count)
    queries, tune_queries = data.queries(200, 1), data.queries(200, 2)
    start = time.perf_counter()
    truth, tune_truth = (vi.exact_top_k(q, data.chunks(), 10) for q in (queries, tune_queries))
    print(f"exact top-10 for 400 queries: {time.perf_counter() - start:.0f} s", flush=True)

    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent / "out") as folder:
        lists_file = Path(folder) / "lists.ivfdata"
        base = rss()
        peak = base
        start = time.perf_counter()
        wanted = min(count, vi.training_size(plan, DIM))
        training = np.concatenate([v for _, v in itertools.islice(data.chunks(), -(-wanted // CHUNK))])[:wanted]
        index = vi.create_index(plan, DIM, training, lists_file)
        del training
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        # the full vectors stay on disk for exact re-ranking, read row by row as the catalogue serves them
        full_path = Path(folder) / "full.f32"
        with open(full_path, "wb") as full:
            for ids, vectors in data.chunks():
                index.add_with_ids(vectors, ids)
                full.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
                peak = max(peak, rss())
        add_s = time.perf_counter() - start
        full_fd = os.open(full_path, os.O_RDONLY)
        row_bytes = DIM * 4
        lookup = lambda ids: np.frombuffer(b"".join(os.pread(full_fd, row_bytes, int(i) * row_bytes)  # noqa: E731
                                                    for i in ids), dtype=np.float32).reshape(len(ids), DIM)
        header = Path(folder) / "vectors.faiss"
        vi.write_index_atomic(index, header)
        params, _ = vi.tune(index, tune_queries, tune_truth, 0.95, lookup)
        raw_recall = vi.recall_at_k(index.search(queries, 10)[1], truth)
        del index
        reopened = vi.read_index(header)  # the lists are memory-mapped, not loaded
        vi.set_search_params(reopened, params)
        recall = vi.recall_at_k(vi.search_reranked(reopened, queries, 10, lookup)[1], truth)
        p50, p99, qps = latency(Reranked(reopened, lookup), queries)
        open_memory = rss() - base
        disk = header.stat().st_size + lists_file.stat().st_size
        lists_bytes = lists_file.stat().st_size
        os.close(full_fd)

    print(f"build: train {train_s:.0f} s on {wanted:,} vectors, add {add_s:.0f} s ({count / add_s:,.0f} vectors/s); "
          f"peak memory growth {(peak - base) / 2**30:.2f} GiB (the training sample, the quantizer, one chunk)")
    print(f"disk: {disk / 2**30:.2f} GiB (lists {lists_bytes / count:.1f} B/vector: the codes and ids are "
          f"{plan_code(plan) + 8} B, the rest is the free capacity of lists grown in place; header "
          f"{(disk - lists_bytes) / 2**20:.0f} MiB); opened and searched: {open_memory / 2**30:.2f} GiB resident "
          "(memory-mapped lists included)")
    print(f"search ({params}, {vi.RERANK_FACTOR}×k candidates re-ranked with the full vectors): recall@10 "
          f"{recall:.3f} (PQ codes alone: {raw_recall:.3f}), p50 {p50:.2f} ms, p99 {p99:.2f} ms, batch {qps:,.0f} QPS")
    per_vector_disk, per_vector_add = lists_bytes / count, add_s / count
    for target in (100_000_000, 1_000_000_000):
        target_plan = vi.plan_index(target, DIM)
        lists = faiss.extract_index_ivf(faiss.index_factory(DIM, target_plan.faiss_factory)).nlist
        # lists grow by (code + 8-byte id) per vector, as measured here; RAM holds the coarse quantizer
        disk_target = target * per_vector_disk * (plan_code(target_plan) + 8) / (plan_code(plan) + 8)
        print(f"projection to {target:,}: planner {target_plan.factory}; lists on disk ≈ {disk_target / 2**30:,.0f} "
              f"GiB; coarse quantizer in RAM ≈ {lists * DIM * 4 * 1.2 / 2**30:.2f} GiB; adding ≈ "
              f"{target * per_vector_add / 3600:,.1f} h at the rate measured here (one process); the catalogue's "
              f"float32 vectors ≈ {target * DIM * 4 / 2**40:.1f} TiB")


class Reranked:
    """An index searched as the engine searches a PQ index: candidates from the codes, exact re-ranking."""

    def __init__(self, index, lookup):
        self.index, self.lookup = index, lookup

    def search(self, queries, k):
        return vi.search_reranked(self.index, queries, k, self.lookup)


def plan_code(plan: vi.IndexPlan) -> int:
    return int(plan.faiss_factory.split("PQ")[1].split("x")[0]) if "PQ" in plan.factory else DIM * 4


if __name__ == "__main__":
    main()
