"""Many users at once: concurrent single encodes share forward passes, and 32 gradio_client users get every
answer. Throughput and latency are printed at the end of the run (they are figures, not assertions)."""

from __future__ import annotations

import os
import statistics
import threading
import time

import numpy as np
import psutil
import pytest
from gradio_client import Client, handle_file

from apphost import AppProcess
from conftest import REPORT, random_image

pytestmark = pytest.mark.filterwarnings("ignore")


def test_concurrent_single_encodes_share_forward_passes(naflex_dir):
    from engine import load_model
    from engine.model.encode import encode_images, encode_texts, serve_concurrently, serving_stats, stop_serving

    model = load_model(str(naflex_dir))
    images = [random_image(80 + 9 * i, 120, seed=600 + i) for i in range(8)]
    texts = [f"a photo number {i}" for i in range(8)]
    alone_images = encode_images(model, images).vectors
    alone_texts = encode_texts(model, texts).vectors
    serve_concurrently(model)
    start, found = threading.Barrier(16), {}

    def one(kind: str, i: int) -> None:
        start.wait()
        found[kind, i] = (encode_images(model, [images[i]]) if kind == "image" else encode_texts(model, [texts[i]])).vectors[0]

    try:
        threads = [threading.Thread(target=one, args=(kind, i)) for kind in ("image", "text") for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        passes, items = serving_stats(model)
    finally:
        stop_serving(model)
    np.testing.assert_allclose(np.stack([found["image", i] for i in range(8)]), alone_images, atol=1e-5)
    np.testing.assert_allclose(np.stack([found["text", i] for i in range(8)]), alone_texts, atol=1e-5)
    assert items == 16 and passes < items  # requests that arrived together were run together
    REPORT["concurrent single encodes (8 images + 8 texts at once)"] = [f"{passes} forward passes for {items} items"]


def _cpu_seconds(after, before) -> float:
    return (after.user + after.system) - (before.user + before.system)


def _run(client: Client, kind: str, image, latencies: list, failures: list) -> None:
    start = time.monotonic()
    try:
        if kind == "classify":
            scores, notes = client.predict(image, "a cat, a dog, a car", "{}", api_name="/classify")
            ok = scores and len(scores["confidences"]) == 3
        else:
            gallery, notes = client.predict("load", "a dog on the beach", 5, -1, "", api_name="/search_text")
            ok = gallery and len(gallery) == 5
        if not ok:
            failures.append(f"{kind}: {notes[:120]}")
    except Exception as error:  # noqa: BLE001 - every failure is counted and shown
        failures.append(f"{kind}: {type(error).__name__}: {str(error)[:120]}")
    latencies.append(time.monotonic() - start)


def _client(url: str) -> Client:
    # Plain http on loopback, so nothing to verify: with verification on, gradio_client builds a
    # certificate-checking SSL context for every request (a new httpx client each time, about 35 ms of CPU),
    # which here would come out of the same 2 cores as the server's work.
    return Client(url, verbose=False, download_files=False, ssl_verify=False)


def test_32_users_at_once(tmp_path):
    root = tmp_path / "root"
    (root / "photos").mkdir(parents=True)
    for i in range(12):
        random_image(100, 140, seed=700 + i).save(root / "photos" / f"p{i}.jpg")
    app = AppProcess("--test-model", "--index-dir", str(tmp_path / "indexes"), "--allowed-root", str(root))
    try:
        setup = _client(app.url)
        setup.predict("load", None, str(root / "photos"), api_name="/build_index")
        app.wait_for_log("UMAP compiled")  # a steady state: the start-up's background compile is done
        image = handle_file(str(root / "photos" / "p0.jpg"))
        kinds = ["classify", "search"]

        single_latencies, failures = [], []
        single_requests = 24
        server = psutil.Process(app.process.pid)
        server_before, clients_before = server.cpu_times(), os.times()
        started = time.monotonic()
        for i in range(single_requests):
            _run(setup, kinds[i % 2], image, single_latencies, failures)
        single_rate = single_requests / (time.monotonic() - started)
        single_cpu_ms = (_cpu_seconds(server.cpu_times(), server_before)
                         + _cpu_seconds(os.times(), clients_before)) * 1000 / single_requests

        users, each = 32, 4
        # the users do not fetch the result thumbnails (a browser would, as separate static-file requests)
        clients = [_client(app.url) for _ in range(users)]
        latencies: list[float] = []
        gate = threading.Barrier(users)

        def user(client: Client, number: int) -> None:
            gate.wait()
            for i in range(each):
                _run(client, kinds[(number + i) % 2], image, latencies, failures)

        threads = [threading.Thread(target=user, args=(c, n)) for n, c in enumerate(clients)]
        server_before, clients_before = server.cpu_times(), os.times()
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        loaded_rate = users * each / (time.monotonic() - started)
        server_ms = _cpu_seconds(server.cpu_times(), server_before) * 1000 / (users * each)
        clients_ms = _cpu_seconds(os.times(), clients_before) * 1000 / (users * each)
        alive_latency: list[float] = []
        _run(setup, "search", image, alive_latency, failures)  # still answering afterwards
    finally:
        app.stop()
    assert not failures, failures[:5]
    assert len(latencies) == users * each and not any(t.is_alive() for t in threads)
    p50, p95 = statistics.median(latencies), float(np.percentile(latencies, 95))
    REPORT["load: 32 gradio_client users × 4 requests (/classify and /search_text, generated tiny model)"] = [
        f"requests {users * each}, failures {len(failures)}",
        f"one client in sequence: {single_rate:.1f} requests/s (p50 {statistics.median(single_latencies) * 1000:.0f} ms)",
        f"32 users at once: {loaded_rate:.1f} requests/s = {loaded_rate / single_rate:.1f}x, "
        f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms",
        f"after the load: answered in {alive_latency[0] * 1000:.0f} ms",
        f"CPU per request under load: server {server_ms:.0f} ms, the 32 gradio_client users (same "
        f"{os.cpu_count()} cores) {clients_ms:.0f} ms; one client in sequence: {single_cpu_ms:.0f} ms both together",
        f"ceiling on these {os.cpu_count()} cores at the loaded CPU cost: "
        f"{os.cpu_count() * 1000 / (server_ms + clients_ms):.0f} requests/s = "
        f"{os.cpu_count() * 1000 / (server_ms + clients_ms) / single_rate:.1f}x one client; the server alone would "
        f"saturate them at {os.cpu_count() * 1000 / server_ms:.0f} requests/s (projections, not measured)"]
